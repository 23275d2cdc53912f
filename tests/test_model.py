"""The transformer against independent references: a naive attention written out here, torch's
cross-entropy, and the causal/GQA/window semantics; plus checkpoint save/load and its errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.model import Transformer
from gator.model.layers import apply_rope


def naive_attention(x, attn, cos=None, sin=None, window=None):
    """Written from the definition: repeat K/V heads explicitly, masked softmax, weighted sum."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q, k, v = attn.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2)
    v = v.view(B, T, Hkv, D).transpose(1, 2)
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("preset,overrides", [
    ("tiny-gatorgpt", {}),  # GQA 4:2
    ("tiny-gatorgpt", dict(n_kv_heads=1)),  # MQA
    ("tiny-gatorgpt", dict(n_kv_heads=4)),  # MHA
    ("tiny-gatorgpt", dict(sliding_window=5)),
    ("tiny-gpt2", {}),
])
def test_attention_matches_naive(preset, overrides):
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, **overrides)).eval()
    x = torch.randn(2, 17, model.config.d_model)
    attn = model.blocks[0].attn
    cos = sin = None
    rope = None
    if model.rope is not None:
        cos, sin = model.rope(torch.arange(17))
        rope = (cos, sin)
    mask = None
    if model.config.sliding_window:
        from gator.model.attention import causal_mask
        mask = causal_mask(17, model.config.sliding_window, x.device)
    ours = attn(x, rope, None, mask)
    ref = naive_attention(x, attn, cos, sin, model.config.sliding_window)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-gatorgpt"])
def test_loss_is_mean_cross_entropy_with_ignore_index(preset):
    torch.manual_seed(0)
    model = Transformer(get_preset(preset)).eval()
    ids = torch.randint(0, 512, (3, 20))
    targets = torch.randint(0, 512, (3, 20))
    targets[0, :5] = -100
    logits, loss = model(ids, targets)
    assert logits.shape == (3, 20, 512)
    keep = targets != -100
    ref = -torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(loss, ref)
    assert model(ids)[1] is None


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-gatorgpt"])
def test_causal_future_tokens_do_not_change_past_logits(preset):
    torch.manual_seed(0)
    model = Transformer(get_preset(preset)).eval()
    ids = torch.randint(0, 512, (1, 30))
    other = ids.clone()
    other[0, 20:] = torch.randint(0, 512, (10,))
    a, b = model(ids)[0], model(other)[0]
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_sliding_window_limits_what_a_token_sees():
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt", sliding_window=4, n_layers=1)).eval()
    ids = torch.randint(0, 512, (1, 12))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % 512  # with one layer and window 4, token 0 is invisible from position 4 on
    a, b = model(ids)[0], model(other)[0]
    torch.testing.assert_close(a[:, 4:], b[:, 4:])
    assert not torch.allclose(a[:, :4], b[:, :4])


def test_gpt2_style_init():
    torch.manual_seed(0)
    c = get_preset("gatorgpt", n_layers=8, vocab_size=4096)
    model = Transformer(c)
    assert model.lm_head.weight is model.tok_emb.weight  # tied
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 1e-3
    resid = torch.cat([model.blocks[i].mlp.down.weight.flatten() for i in range(8)])
    assert abs(resid.std().item() - 0.02 / math.sqrt(2 * 8)) < 5e-4
    assert torch.all(model.blocks[0].attn_norm.weight == 1)


def test_trains_on_a_tiny_pattern():
    """A few AdamW steps memorise a repeating sequence: the model learns, gradients flow everywhere."""
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt"))
    ids = torch.arange(33).remainder(7)[None].repeat(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 < first
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_context_length_is_enforced():
    model = Transformer(get_preset("tiny-gatorgpt"))
    with pytest.raises(ValueError, match="context_length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,tie", [("tiny-gpt2", True), ("tiny-gatorgpt", True), ("tiny-gatorgpt", False)])
def test_save_load_round_trip(tmp_path, preset, tie):
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, tie_embeddings=tie)).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Transformer.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 512, (2, 10))
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=0, atol=0)
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tie


def test_load_errors_name_the_problem(tmp_path):
    from safetensors.torch import load_file, save_file

    model = Transformer(get_preset("tiny-gatorgpt"))
    d = tmp_path / "m"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Transformer.from_pretrained(d)
    model.save_pretrained(d)
    weights = d / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(ValueError, match="model.safetensors.*corrupt"):
        Transformer.from_pretrained(d)

    weights.write_bytes(good)
    state = load_file(str(weights))
    state["blocks.1.mlp.down.weight"] = torch.zeros(64, 100)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.down\.weight.*\(64, 100\).*\(64, 128\)"):
        Transformer.from_pretrained(d)

    del state["blocks.1.mlp.down.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing tensors \['blocks\.1\.mlp\.down\.weight'\]"):
        Transformer.from_pretrained(d)

    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config"):
        Transformer.from_pretrained(d)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    import safetensors.torch

    model = Transformer(get_preset("tiny-gatorgpt"))
    d = tmp_path / "m"
    model.save_pretrained(d)
    before = (d / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with torch.no_grad():
        model.tok_emb.weight.add_(1)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(d)
    assert (d / "model.safetensors").read_bytes() == before
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


def test_bf16_forward_close_to_fp32():
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt")).eval()
    ids = torch.randint(0, 512, (2, 16))
    ref = model(ids)[0]
    out = model.to(torch.bfloat16)(ids)[0].float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
