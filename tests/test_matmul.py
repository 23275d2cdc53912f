"""gator.model.matmul: every small-batch formulation equals F.linear, the search only runs where it
should (CPU inference with few rows), and a packed weight never outlives a change to the weight."""

import pytest
import torch
import torch.nn.functional as F

from gator.model import matmul as M


@pytest.fixture(autouse=True)
def fresh_choices():
    M.set_matmul_autotune(True)
    yield
    M.set_matmul_autotune(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_every_candidate_equals_f_linear(dtype, rows, bias):
    torch.manual_seed(0)
    layer = M.Linear(48, 200, bias=bias).to(dtype)
    x = torch.randn(rows, 48).to(dtype)
    with torch.no_grad():
        ref = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
        packed = M._pack(layer.weight, rows) if M._can_pack(layer.weight) else None
        tol = 1e-4 if dtype == torch.float32 else 0.1
        for name, fn in M.CANDIDATES.items():
            if (name == "w_xx" and rows != 1) or (name == "onednn" and packed is None):
                continue
            y = fn(x, layer.weight, layer.bias, packed)
            assert y.shape == (rows, 200), name
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol, msg=name)
        y = layer(x.reshape(rows, 1, 48))  # through the module: the search runs, shape kept
        assert y.shape == (rows, 1, 200)
        torch.testing.assert_close(y.double().reshape(rows, 200), ref, rtol=tol, atol=tol)
    assert (rows, 48, 200, dtype) in M._choice


def test_search_is_skipped_for_training_many_rows_and_when_off():
    layer = M.Linear(16, 32)
    x = torch.randn(4, 16)
    layer(x).sum().backward()  # autograd: plain F.linear, nothing recorded
    assert layer.weight.grad is not None and not M._choice
    with torch.no_grad():
        layer(torch.randn(M.MAX_ROWS + 1, 16))
        assert not M._choice
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        assert not M._choice
        M.set_matmul_autotune(False)
        layer(x)
        assert not M._choice
        M.set_matmul_autotune(True)
        layer(x)
        assert (4, 16, 32, torch.float32) in M._choice


def test_packed_weight_follows_changes_to_the_weight():
    if not M._can_pack(torch.zeros(1)):
        pytest.skip("oneDNN weight packing is not available in this PyTorch build")
    torch.manual_seed(0)
    layer = M.Linear(32, 64, bias=False)
    x = torch.randn(1, 32)
    M._choice[(1, 32, 64, torch.float32)] = "onednn"  # force the packed path
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
        layer.weight.mul_(-2.0)  # in place: same storage, new version
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
        layer.load_state_dict({"weight": torch.randn(64, 32)})
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
    layer.weight = torch.nn.Parameter(torch.randn(64, 32))  # a new tensor altogether
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))
