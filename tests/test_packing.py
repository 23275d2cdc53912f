"""Packing: several samples in one row, each attending only to itself with positions restarting at 0.

The reference is the model run on each sample alone (the ordinary causal forward): a packed row must give
every sample the same logits and the same loss, for learned positions (GPT-2), RoPE with GQA (Llama-style),
MLA with MoE (DeepSeek-style), a sliding window, and padding at the end of the row.
"""

import pytest
import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.model import Transformer


def pack(samples: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, positions, segment ids of one row holding `samples` back to back, padded to `length`."""
    ids, pos, seg = [], [], []
    for s, sample in enumerate(samples):
        ids.append(sample)
        pos.append(torch.arange(len(sample)))
        seg.append(torch.full((len(sample),), s))
    pad = length - sum(len(s) for s in samples)
    ids.append(torch.zeros(pad, dtype=torch.long))
    pos.append(torch.arange(pad))
    seg.append(torch.full((pad,), -1))
    return torch.cat(ids)[None], torch.cat(pos)[None], torch.cat(seg)[None]


CASES = {
    "gpt2": dict(preset="tiny-gpt2"),
    "llama": dict(preset="tiny-gatorgpt"),
    "llama-window": dict(preset="tiny-gatorgpt", sliding_window=4),
    "mla-moe": dict(preset="deepseek-tiny", mtp_depth=0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_row_equals_samples_run_alone(case):
    torch.manual_seed(0)
    overrides = dict(CASES[case])
    model = Transformer(get_preset(overrides.pop("preset"), **overrides)).eval()
    lengths = [7, 12, 3, 9]
    samples = [torch.randint(0, 512, (n,)) for n in lengths]
    ids, pos, seg = pack(samples, 36)
    with torch.no_grad():
        packed, _ = model(ids, positions=pos, segment_ids=seg)
        start = 0
        for sample in samples:
            alone, _ = model(sample[None])
            got = packed[0, start:start + len(sample)]
            torch.testing.assert_close(got, alone[0], atol=2e-5, rtol=1e-4)
            # per-sample loss, next-token targets inside the sample
            ref = F.cross_entropy(alone[0, :-1], sample[1:])
            mine = F.cross_entropy(got[:-1], sample[1:])
            assert abs(ref.item() - mine.item()) < 1e-5
            start += len(sample)


def test_packed_loss_with_targets_matches_token_weighted_mean():
    """The packed forward's own loss (targets -100 between samples) is the token-weighted mean of the
    samples' losses computed one by one."""
    torch.manual_seed(1)
    model = Transformer(get_preset("tiny-gatorgpt")).eval()
    samples = [torch.randint(0, 512, (n,)) for n in (5, 11, 8)]
    ids, pos, seg = pack(samples, 30)
    targets = torch.full_like(ids, -100)
    start = 0
    for s in samples:
        targets[0, start:start + len(s) - 1] = s[1:]
        start += len(s)
    with torch.no_grad():
        _, loss = model(ids, targets, positions=pos, segment_ids=seg)
        sums = [F.cross_entropy(model(s[None])[0][0, :-1], s[1:], reduction="sum") for s in samples]
    expected = sum(sums) / sum(len(s) - 1 for s in samples)
    assert abs(loss.item() - expected.item()) < 1e-5


def test_packing_gradients_match_samples_alone():
    """Training on a packed row gives the gradient of the summed per-sample losses."""
    torch.manual_seed(2)
    model = Transformer(get_preset("tiny-gpt2"))
    samples = [torch.randint(0, 512, (n,)) for n in (6, 9)]
    ids, pos, seg = pack(samples, 16)
    targets = torch.full_like(ids, -100)
    targets[0, :5], targets[0, 6:14] = samples[0][1:], samples[1][1:]
    model.zero_grad()
    model(ids, targets, positions=pos, segment_ids=seg)[1].backward()
    packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = sum(F.cross_entropy(model(s[None])[0][0, :-1], s[1:], reduction="sum") for s in samples) / 13
    total.backward()
    for a, p in zip(packed, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


def test_packing_refuses_what_it_cannot_keep_apart():
    ids = torch.zeros(1, 8, dtype=torch.long)
    seg = torch.zeros(1, 8, dtype=torch.long)
    mod = Transformer(get_preset("tiny-gatorgpt", mod_layers=[1]))
    with pytest.raises(ValueError, match="Mixture-of-Depths"):
        mod(ids, segment_ids=seg)
    mtp = Transformer(get_preset("deepseek-tiny"))
    with pytest.raises(ValueError, match="multi-token prediction"):
        mtp(ids, segment_ids=seg)
    plain = Transformer(get_preset("tiny-gatorgpt"))
    with pytest.raises(ValueError, match="shape of ids"):
        plain(ids, segment_ids=seg[:, :4])
    with pytest.raises(ValueError, match="context_length"):
        plain(ids, positions=torch.full((1, 8), 500))
