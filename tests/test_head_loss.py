"""The chunked LM head + cross-entropy (gator.model.head_loss) against torch: F.linear followed by
F.cross_entropy(ignore_index=-100) and autograd give the reference loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from gator.config import ModelConfig
from gator.model import Transformer, head_loss
from gator.model.head_loss import linear_cross_entropy
from gator.model.lora import LoRAConfig, apply_lora

V, D = 53, 16


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows for a 53-word vocabulary: many chunks and a short last one."""
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 3 * V)


def reference(h, weight, targets, dtype=None):
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = F.linear(h, weight)
    return F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-100)


def both(h0, w0, targets, grads=(True, True), dtype=None):
    """(loss, grad of h, grad of weight) from the reference and from linear_cross_entropy."""
    out = []
    for fn in (reference, linear_cross_entropy):
        h, w = h0.clone().requires_grad_(grads[0]), w0.clone().requires_grad_(grads[1])
        if fn is reference:
            loss = fn(h, w, targets, dtype)
        else:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = fn(h, w, targets)
        loss.backward()
        out.append((loss, h.grad, w.grad))
    return out


@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True)])
def test_loss_and_gradients_equal_torch(small_chunks, grads):
    torch.manual_seed(0)
    h, w = torch.randn(4, 5, D), torch.randn(V, D)
    targets = torch.randint(0, V, (4, 5))
    targets[0, :3] = -100
    targets[2, 4] = -100
    (ref, ref_h, ref_w), (got, got_h, got_w) = both(h, w, targets, grads)
    assert abs(ref.item() - got.item()) < 1e-5
    for r, g, wanted in ((ref_h, got_h, grads[0]), (ref_w, got_w, grads[1])):
        if wanted:
            assert (r - g).abs().max() < 1e-6
        else:
            assert r is None and g is None


def test_under_bf16_autocast_it_equals_torch_under_autocast(small_chunks):
    torch.manual_seed(0)
    h, w = torch.randn(6, 7, D), torch.randn(V, D) * 0.5
    targets = torch.randint(0, V, (6, 7))
    targets[:, 0] = -100
    (ref, ref_h, ref_w), (got, got_h, got_w) = both(h, w, targets, dtype=torch.bfloat16)
    assert got.dtype == torch.float32 and abs(ref.item() - got.item()) < 1e-5  # the same bf16 logits, fp32 softmax
    assert (ref_h - got_h).abs().max() <= 1e-2 * ref_h.abs().max()  # bf16 products, rounded once each way
    assert (ref_w - got_w).abs().max() <= 1e-2 * ref_w.abs().max()


def test_large_logits_do_not_overflow():
    h, w = torch.full((2, D), 30.0), torch.randn(V, D)
    targets = torch.tensor([1, 2])
    (ref, ref_h, _), (got, got_h, _) = both(h, w, targets)
    assert torch.isfinite(got) and abs(ref.item() - got.item()) < 1e-3 * ref.item()
    assert (ref_h - got_h).abs().max() < 1e-5


def test_nothing_scored_is_nan_like_torch():
    h, w = torch.randn(3, D), torch.randn(V, D)
    targets = torch.full((3,), -100)
    assert torch.isnan(reference(h, w, targets)) and torch.isnan(linear_cross_entropy(h, w, targets))


def test_without_grad_mode_only_the_loss_is_computed():
    torch.manual_seed(0)
    h, w = torch.randn(5, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    targets = torch.randint(0, V, (5,))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, targets)
    assert not loss.requires_grad and abs(loss.item() - reference(h, w, targets).item()) < 1e-5


LLAMA = dict(vocab_size=V, context_length=32, d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=24,
             norm="rmsnorm", mlp="swiglu", positions="rope", bias=False)


@pytest.mark.parametrize("shape", [dict(LLAMA, tie_embeddings=False), dict(LLAMA, tie_embeddings=True),
                                   dict(vocab_size=V, context_length=32, d_model=D, n_layers=2, n_heads=4,
                                        bias=True, tie_embeddings=True)],
                         ids=["llama", "llama-tied", "gpt2"])
def test_a_model_without_logits_has_the_loss_and_gradients_of_torch_cross_entropy(small_chunks, shape):
    """return_logits=False (what the training objectives use) against the model's own logits put through
    F.cross_entropy, for every parameter's gradient, plain and with LoRA adapters."""
    torch.manual_seed(0)
    ids = torch.randint(0, V, (3, 9))
    targets = torch.randint(0, V, (3, 9))
    targets[1, :4] = -100
    for lora in (False, True):
        model = Transformer(ModelConfig(**shape)).train()
        if lora:
            apply_lora(model, LoRAConfig(r=2, targets=("o", "up", "down")))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if ".lora_B." in name:
                        p.normal_(0, 0.1)
        grads = []
        for return_logits in (True, False):
            model.zero_grad(set_to_none=True)
            logits, loss = model(ids, targets, return_logits=return_logits)
            if return_logits:
                loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
            else:
                assert logits is None
            loss.backward()
            grads.append((loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        (ref_loss, ref), (got_loss, got) = grads
        assert abs(ref_loss - got_loss) < 1e-5 and set(ref) == set(got) and len(ref) > 0
        for name in ref:
            assert (ref[name] - got[name]).abs().max() < 1e-5, name
