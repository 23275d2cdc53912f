"""Muon: the orthogonalization against an SVD, the AdamW half against torch.optim.AdamW, the grouping,
and the settings it refuses (exact resume with Muon is in test_train.py)."""

import pytest
import torch

from gator.config import get_preset
from gator.model import Transformer
from gator.train import make_config
from gator.train.optim import Muon, muon_param_groups, orthogonalize


@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (3, 32, 64)])
def test_orthogonalize_approximates_the_polar_factor(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    o = orthogonalize(g, dtype=torch.float32)
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    polar = U @ Vh  # the exact nearest semi-orthogonal matrix
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.25  # Newton-Schulz's band around 1, not 1 exactly
    cos = torch.nn.functional.cosine_similarity(o.flatten(-2), polar.flatten(-2), dim=-1)
    assert (cos > 0.97).all()
    # bf16 (the default where it is native, see gator.runtime.fast_dtype) stays close to the fp32 iteration
    o16 = orthogonalize(g, dtype=torch.bfloat16)
    assert torch.nn.functional.cosine_similarity(o16.flatten(), o.flatten(), dim=0) > 0.99


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Muon([{"params": a[:1], "weight_decay": 0.1}, {"params": a[1:], "weight_decay": 0.0}],
                lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW([{"params": b[:1], "weight_decay": 0.1}, {"params": b[1:], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(6):
        g = [torch.randn_like(p) for p in a]
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_muon_step_follows_the_orthogonalized_momentum():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 32))
    w0 = w.detach().clone()
    opt = Muon([{"params": [w], "use_muon": True, "weight_decay": 0.0}], lr=0.01, momentum=0.9)
    g = torch.randn(16, 32)
    w.grad = g.clone()
    opt.step()
    # first step: buffer = 0.1 g, Nesterov update = 0.1 g + 0.9 * 0.1 g ∝ g, so the step is ∝ polar(g)
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    step = (w0 - w.detach()) / 0.01
    assert torch.nn.functional.cosine_similarity(step.flatten(), (U @ Vh).flatten(), dim=0) > 0.97
    # U V^T of a 16 x 32 matrix has RMS 1/sqrt(32); x 0.2 sqrt(32) gives AdamW's typical update RMS, 0.2
    assert step.pow(2).mean().sqrt() == pytest.approx(0.2, rel=0.2)


def test_groups_put_block_matrices_on_muon_and_the_rest_on_adamw():
    model = Transformer(get_preset("deepseek-tiny"))
    groups = muon_param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups[0]["params"]}
    adam = {names[id(p)] for g in groups[1:] for p in g["params"]}
    assert muon and all(n.startswith("blocks.") and "router" not in n for n in muon)
    assert any("experts" in n or "gate_up" in n for n in muon)
    assert {"tok_emb.weight"} <= adam and not any(n.startswith("blocks.") and n.endswith("weight") and
                                                  "norm" not in n and "router" not in n for n in adam)
    assert sum(len(g["params"]) for g in groups) == len({id(p) for p in model.parameters()})


def test_muon_settings_are_checked():
    with pytest.raises(ValueError, match="optimizer"):
        make_config(None, {"optimizer": "sgd"})
    with pytest.raises(ValueError, match="FSDP"):
        make_config(None, {"optimizer": "muon", "parallel": "fsdp"})
