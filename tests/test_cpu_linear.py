"""gator.generate.cpu_linear: every small-batch formulation equals F.linear, the search only runs where it
should (CPU inference with few rows, inside a `fast_cpu_linears` block), nothing outlives the block, and
a change to the weights between two blocks is always seen (also through `.data`, as EMA updates do)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gator.config import get_preset
from gator.generate import cpu_linear as M
from gator.generate import fast_cpu_linears, generate
from gator.model import Transformer


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(M, "_choice", {})  # this test's own timing memo


@pytest.fixture
def force_onednn(monkeypatch):
    """Make every searched shape use the packed oneDNN product (the path whose copy could go stale)."""
    if not M.can_pack(torch.zeros(1)):
        pytest.skip("oneDNN weight packing is not available in this PyTorch build")
    monkeypatch.setattr(M, "_pick", lambda x, w, b, packed: "onednn" if packed is not None else "linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_every_candidate_equals_f_linear(dtype, rows, bias):
    torch.manual_seed(0)
    layer = nn.Linear(48, 200, bias=bias).to(dtype)
    x = torch.randn(rows, 48).to(dtype)
    with torch.no_grad():
        ref = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
        packed = M.pack(layer.weight, rows) if M.can_pack(layer.weight) else None
        tol = 1e-4 if dtype == torch.float32 else 0.1
        for name, fn in M.CANDIDATES.items():
            if (name == "w_xx" and rows != 1) or (name == "onednn" and packed is None):
                continue
            y = fn(x, layer.weight, layer.bias, packed)
            assert y.shape == (rows, 200), name
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol, msg=name)
        with fast_cpu_linears(layer):
            y = layer(x.reshape(rows, 1, 48))  # through the module: the search runs, shape kept
        assert y.shape == (rows, 1, 200)
        torch.testing.assert_close(y.double().reshape(rows, 200), ref, rtol=tol, atol=tol)
    assert (rows, 48, 200, dtype) in M._choice


def test_search_is_skipped_for_training_many_rows_and_outside_the_block():
    layer = nn.Linear(16, 32)
    x = torch.randn(4, 16)
    with fast_cpu_linears(layer):
        layer(x).sum().backward()  # autograd: plain F.linear, nothing recorded
        assert layer.weight.grad is not None and not M._choice
        with torch.no_grad():
            layer(torch.randn(M.MAX_ROWS + 1, 16))
            assert not M._choice
            with torch.autocast("cpu", dtype=torch.bfloat16):
                layer(x)
            assert not M._choice
    with torch.no_grad():
        layer(x)  # outside the block: the plain nn.Linear
        assert not M._choice
        with fast_cpu_linears(layer):
            layer(x)
        assert (4, 16, 32, torch.float32) in M._choice


def test_nothing_outlives_the_block(force_onednn):
    model = Transformer(get_preset("tiny-gatorgpt"))
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    attributes = [dict(m.__dict__) for m in linears]
    with torch.no_grad(), fast_cpu_linears(model):
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
        seen = [m.forward for m in linears]
        assert all(isinstance(f, M.FastForward) for f in seen) and any(f.packed for f in seen)
    assert all("forward" not in m.__dict__ for m in linears)  # nn.Linear.forward again
    assert all(set(m.__dict__) == set(a) for m, a in zip(linears, attributes))  # no packed copy left behind


def test_packed_weight_follows_changes_to_the_weight(force_onednn):
    torch.manual_seed(0)
    layer = nn.Linear(32, 64, bias=False)
    x = torch.randn(1, 32)

    def fast(x):
        with torch.no_grad(), fast_cpu_linears(layer):
            return layer(x)

    torch.testing.assert_close(fast(x), F.linear(x, layer.weight))
    assert M._choice[(1, 32, 64, torch.float32)] == "onednn"
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: same storage, new version
    torch.testing.assert_close(fast(x), F.linear(x, layer.weight))
    layer.load_state_dict({"weight": torch.randn(64, 32)})
    torch.testing.assert_close(fast(x), F.linear(x, layer.weight))
    layer.weight = torch.nn.Parameter(torch.randn(64, 32))  # a new tensor altogether
    torch.testing.assert_close(fast(x), F.linear(x, layer.weight))


def test_a_change_through_data_is_seen(force_onednn):
    """The review's repro: weight.data.mul_(2) does not bump the version counter; a 4-row product after it
    must still equal F.linear (it differed by ~2.3 with a packed copy kept across calls)."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 96)
    x = torch.randn(4, 64)
    with torch.no_grad():
        with fast_cpu_linears(layer):
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.weight.data.mul_(2)
        with fast_cpu_linears(layer):
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        with fast_cpu_linears(layer):  # a nested block starts from the weights as they are now
            layer(x)
            layer.weight.data.mul_(-1)
            with fast_cpu_linears(layer):
                torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def greedy_plain(model, prompt, n):
    """Greedy decoding without cache and without the fast products: the independent reference."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    return ids[len(prompt):]


def test_generate_sees_an_ema_update_made_through_data(force_onednn):
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt", init_std=0.3)).eval()
    other = Transformer(get_preset("tiny-gatorgpt", init_std=0.3)).eval()
    prompts = [[3, 14, 15, 92, 65], [7, 7, 9], [1, 2, 3, 4], [5, 9, 2]]  # 4 rows: the packed 4-row product
    before = [c.tokens for c in generate(model, prompts, max_new_tokens=12, temperature=0)]
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            p.data.mul_(0.5).add_(q.data, alpha=0.5)  # an EMA step, behind autograd's back
    after = [c.tokens for c in generate(model, prompts, max_new_tokens=12, temperature=0)]
    fresh = Transformer(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    assert after == [c.tokens for c in generate(fresh, prompts, max_new_tokens=12, temperature=0)]
    assert after == [greedy_plain(fresh, pr, 12) for pr in prompts]
    assert after != before  # the update changed the output, so the comparison means something
