"""Multi-head latent attention: the absorbed decode path against the explicit one, a naive MLA written
from the DeepSeek-V2 equations, the latent-only cache and its size, and `gator info`'s KV-cache numbers
against real cache tensors for MHA, GQA and MLA."""

import math

import pytest
import torch

from gator.config import get_preset
from gator.generate import generate
from gator.model import KVCache, Transformer
from gator.model.layers import apply_rope, make_rope
from gator.model.mla import MultiHeadLatentAttention

pytestmark = pytest.mark.usefixtures("one_thread")


def mla_config(**kw):
    base = dict(d_model=48, n_heads=3, q_lora_rank=24, kv_lora_rank=20, qk_nope_head_dim=10, qk_rope_head_dim=6,
                v_head_dim=14, init_std=0.2)
    base.update(kw)
    return get_preset("deepseek-tiny", **base)


def naive_mla(attn: MultiHeadLatentAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Per head, from the equations: k_i = [W_uk,i c ; RoPE(k_r)], v_i = W_uv,i c, causal softmax."""
    B, T, _ = x.shape
    H, dn, dr, dv, C = attn.n_heads, attn.dn, attn.dr, attn.dv, attn.kv_lora_rank
    cq = attn.q_norm(attn.wq_a(x)) if attn.q_lora_rank else x
    q = (attn.wq_b(cq) if attn.q_lora_rank else attn.wq(cq)).view(B, T, H, dn + dr)
    kv = attn.wkv_a(x)
    c, k_rope = attn.kv_norm(kv[..., :C]), kv[..., C:]  # (B, T, C), (B, T, dr)
    k_rope = apply_rope(k_rope[:, None], cos, sin)[:, 0]
    w = attn.wkv_b.weight.view(H, dn + dv, C)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(H):
        qh = torch.cat([q[:, :, h, :dn], apply_rope(q[:, None, :, h, dn:], cos, sin)[:, 0]], -1)  # (B, T, dn+dr)
        kh = torch.cat([c @ w[h, :dn].T, k_rope], -1)  # (B, T, dn+dr)
        vh = c @ w[h, dn:].T  # (B, T, dv)
        scores = (qh @ kh.transpose(1, 2)) * attn.scale
        heads.append(scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vh)
    return attn.wo(torch.cat(heads, -1))


@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_mla_matches_naive_equations(q_lora_rank):
    torch.manual_seed(0)
    cfg = mla_config(q_lora_rank=q_lora_rank)
    attn = MultiHeadLatentAttention(cfg, 0).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(2, 9, 48)
    cos, sin = make_rope(cfg)(torch.arange(9))
    ref = naive_mla(attn, x, cos, sin)
    for absorb in (False, True):
        attn.absorb = absorb
        torch.testing.assert_close(attn(x, (cos, sin)), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_absorbed_decoding_equals_explicit_path(q_lora_rank):
    """Prefill 6 tokens, then decode 5 one at a time from the latent cache, both ways: fp32 < 1e-5."""
    torch.manual_seed(1)
    model = Transformer(mla_config(q_lora_rank=q_lora_rank)).eval()
    ids = torch.randint(0, 512, (2, 11))
    outs = {}
    for absorb in (False, True):
        for block in model.blocks:
            block.attn.absorb = absorb
        cache = KVCache.for_model(model, 2, max_len=11)
        with torch.no_grad():
            steps = [model(ids[:, :6], cache=cache)[0]]
            steps += [model(ids[:, t:t + 1], cache=cache)[0] for t in range(6, 11)]
        outs[absorb] = torch.cat(steps, 1)
    assert (outs[True] - outs[False]).abs().max() < 1e-5
    for block in model.blocks:
        block.attn.absorb = None  # the default: explicit without a cache
    with torch.no_grad():
        full, _ = model(ids)
    assert (outs[True] - full).abs().max() < 1e-5


def test_padded_batch_decodes_like_each_prompt_alone():
    torch.manual_seed(2)
    model = Transformer(get_preset("deepseek-tiny", init_std=0.1)).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42, 3]]
    together = generate(model, prompts, max_new_tokens=6, temperature=0)
    for prompt, result in zip(prompts, together):
        assert generate(model, prompt, max_new_tokens=6, temperature=0).tokens == result.tokens


def test_cache_stores_only_the_latent_and_the_rope_key():
    torch.manual_seed(3)
    model = Transformer(get_preset("deepseek-tiny")).eval()
    c = model.config
    cache = KVCache.for_model(model, batch_size=3, max_len=40)
    assert len(cache.k) == c.n_layers
    for k, v in zip(cache.k, cache.v):  # one row [c_kv ; k_rope] per token, nothing per head
        assert tuple(k.shape) == (3, 1, 40, c.kv_lora_rank + c.qk_rope_head_dim) and v.numel() == 0
    # kv_lora_rank + qk_rope_head_dim numbers per token per layer, whatever the number of heads
    assert cache.nbytes() == 3 * 40 * c.n_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    ids = torch.randint(0, 512, (3, 10))
    with torch.no_grad():
        model(ids, cache=cache)
        attn = model.blocks[0].attn
        kv = attn.wkv_a(model.blocks[0].attn_norm(model.tok_emb(ids)))  # layer 0's input
        cos, sin = model.rope_at(torch.arange(10))
        latent = attn.kv_norm(kv[..., :c.kv_lora_rank])
        k_rope = apply_rope(kv[:, None, :, c.kv_lora_rank:], cos, sin)[:, 0]
    torch.testing.assert_close(cache.k[0][:, 0, :10], torch.cat([latent, k_rope], -1))


@pytest.mark.parametrize("name,kind", [("tiny-gpt2", "MHA"), ("tiny-gatorgpt", "GQA"), ("deepseek-tiny", "MLA"),
                                       ("deepseek-v2-lite-mini", "MLA")])
def test_info_kv_bytes_match_real_cache_tensors(name, kind):
    cfg = get_preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    info = model.info()
    assert info["attention"].startswith(kind)
    for dtype, key in ((torch.float32, "kv_cache_bytes_per_token_fp32"),
                       (torch.bfloat16, "kv_cache_bytes_per_token_bf16")):
        cache = KVCache.for_model(model, batch_size=1, max_len=16, dtype=dtype)
        real = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
        assert info[key] * 16 == real
    # what MHA with the same heads would store: K and V of every head
    if kind == "MLA":
        per_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim
    else:
        per_head = 2 * cfg.head_dim
    assert info["kv_cache_bytes_per_token_bf16_if_mha"] == 2 * cfg.n_layers * cfg.n_heads * per_head


def test_published_kv_cache_sizes():
    """DeepSeek-V2-Lite: 27 layers x (512 + 64) numbers per token; its MHA equivalent 16 heads x (192 + 128)."""
    c = get_preset("deepseek-v2-lite")
    assert c.kv_cache_bytes_per_token(2) == 27 * 576 * 2
    assert c.kv_cache_bytes_per_token_mha(2) == 27 * 16 * 320 * 2


def test_gator_info_prints_attention_and_kv_cache(capsys):
    from gator.cli import main

    assert main(["info", "deepseek-tiny"]) == 0
    out = capsys.readouterr().out
    assert "MLA" in out and "160 bytes" in out and "640 bytes" in out  # 2 layers x (32 + 8) x 2 bytes; MHA 4x


def test_softmax_scale_with_yarn():
    """DeepSeek-V3: 1/sqrt(qk_head_dim) x mscale^2, mscale = 0.1 * mscale_all_dim * ln(factor) + 1."""
    yarn = dict(type="yarn", factor=40, original_context_length=4096, mscale=0.707, mscale_all_dim=0.707)
    attn = MultiHeadLatentAttention(get_preset("deepseek-tiny", rope_scaling=yarn), 0)
    m = 0.1 * 0.707 * math.log(40) + 1
    assert attn.scale == pytest.approx(24 ** -0.5 * m * m)
    assert MultiHeadLatentAttention(get_preset("deepseek-tiny"), 0).scale == pytest.approx(24 ** -0.5)


def test_attention_maps_match_what_mla_computes():
    """gator.viz's maps for MLA: probabilities that, applied to the values, give the layer's output."""
    from gator.viz import attention_maps

    torch.manual_seed(5)
    model = Transformer(mla_config()).eval()
    ids = torch.randint(0, 512, (1, 9))
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 3, 9, 9) and torch.all(maps.triu(1) == 0)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = model.blocks[0].attn_norm(model.tok_emb(ids))
        c_kv = attn.kv_norm(attn.wkv_a(x)[..., :attn.kv_lora_rank])
        v = attn.wkv_b(c_kv).view(1, 9, 3, attn.dn + attn.dv)[..., attn.dn:].transpose(1, 2)  # (1, H, T, dv)
        y = attn.wo((maps[0][None] @ v).transpose(1, 2).reshape(1, 9, -1))
        torch.testing.assert_close(y, attn(x, model.rope_at(torch.arange(9))), atol=1e-5, rtol=1e-5)
