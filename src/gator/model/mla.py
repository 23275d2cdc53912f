"""Multi-head latent attention (MLA), from DeepSeek-V2 (DeepSeek-AI, 2024) as DeepSeek-V3 uses it.

Attention's memory cost at inference is the KV cache: MHA stores a key and a value per head per token.
MLA stores one small latent per token instead, and rebuilds every head's key and value from it:

    c_kv  = RMSNorm(W_dkv x)                  (kv_lora_rank numbers: the cache)
    k_i   = [W_uk,i c_kv ; k_rope]            per head: a "nope" part from the latent + one shared RoPE key
    v_i   =  W_uv,i c_kv
    q_i   = [W_uq,i c_q ; RoPE(W_qr,i c_q)]   with c_q = RMSNorm(W_dq x) when q_lora_rank is set

RoPE cannot pass through the latent (a rotation between W_uk and the query would depend on the position),
so position lives in a separate "decoupled" key of qk_rope_head_dim numbers shared by all heads. The cache
holds kv_lora_rank + qk_rope_head_dim numbers per token per layer, e.g. 576 for DeepSeek-V3 against
2 * 128 * 128 = 32768 for MHA with its 128 heads.

Two equal ways to compute it:
- explicit (training, prefill): up-project the latent to per-head keys and values, then ordinary attention.
- absorbed (decoding): q_i . W_uk,i c = (W_uk,i^T q_i) . c, so fold W_uk into the query and attend over
  the latent directly; likewise fold W_uv into the output. Attention then sees one shared key/value
  "head" of width kv_lora_rank (+ the RoPE key): multi-query attention over the cache, no up-projection
  of the cached tokens at all.

Names follow DeepSeek-V3's inference/model.py (wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo).
Shapes: B batch, T new tokens, L keys (cache + new), H heads, C kv_lora_rank, dn/dr/dv nope/rope/value dims.
"""

from __future__ import annotations

import torch
from torch import nn

from gator.config import ModelConfig
from gator.model.attention import attend
from gator.model.cache import KVCache
from gator.model.layers import RMSNorm, apply_rope, yarn_mscale


def mla_softmax_scale(config: ModelConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek-V3's definition)."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    rs = config.rope_scaling
    if rs is not None and rs.get("mscale_all_dim"):
        m = yarn_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale = scale * m * m
    return scale


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.q_lora_rank, self.kv_lora_rank = config.q_lora_rank, config.kv_lora_rank
        self.dn, self.dr, self.dv = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.scale = mla_softmax_scale(config)
        self.dropout = config.dropout
        self.absorb: bool | None = None  # None: absorbed when decoding from a cache, explicit otherwise
        H, d, qk = config.n_heads, config.d_model, self.dn + self.dr
        if self.q_lora_rank is None:
            self.wq = nn.Linear(d, H * qk, bias=False)
        else:
            self.wq_a = nn.Linear(d, self.q_lora_rank, bias=False)  # down-projection of the query
            self.q_norm = RMSNorm(self.q_lora_rank, config.mla_norm_eps)  # DeepSeek: 1e-6, not norm_eps
            self.wq_b = nn.Linear(self.q_lora_rank, H * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.kv_lora_rank + self.dr, bias=False)  # -> [latent ; shared RoPE key]
        self.kv_norm = RMSNorm(self.kv_lora_rank, config.mla_norm_eps)
        self.wkv_b = nn.Linear(self.kv_lora_rank, H * (self.dn + self.dv), bias=False)  # latent -> [k_nope ; v]
        self.wo = nn.Linear(H * self.dv, d, bias=False)
        self.wo.is_residual_projection = True

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> q_nope (B, H, T, dn), rotated q_pe (B, H, T, dr), latent [c_kv ; k_pe] (B, 1, T, C+dr)."""
        B, T, _ = x.shape
        H, dn, dr, C = self.n_heads, self.dn, self.dr, self.kv_lora_rank
        q = self.wq(x) if self.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(x)))  # (B, T, H*(dn+dr))
        q = q.view(B, T, H, dn + dr).transpose(1, 2)  # (B, H, T, dn+dr)
        q_nope, q_pe = q.split([dn, dr], dim=-1)  # (B, H, T, dn), (B, H, T, dr)
        c_kv, k_pe = self.wkv_a(x).split([C, dr], dim=-1)  # (B, T, C), (B, T, dr)
        cos, sin = rope
        q_pe = apply_rope(q_pe, cos, sin)
        k_pe = apply_rope(k_pe[:, None], cos, sin)  # (B, 1, T, dr): one RoPE key shared by every head
        latent = torch.cat([self.kv_norm(c_kv)[:, None], k_pe], dim=-1)  # (B, 1, T, C+dr): one "head"
        return q_nope, q_pe, latent

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_nope, q_pe, latent = self.project(x, rope)
        absorb = self.absorb
        if absorb is None:
            absorb = cache is not None and cache.length > 0
        if cache is not None:  # the cache stores [c_kv ; k_pe] and nothing else
            latent, _ = cache.update(self.layer_idx, latent, latent[..., :0])  # (B, 1, L, C+dr)
        causal = cache is None and mask is None
        if absorb:
            y = self._absorbed(q_nope, q_pe, latent, mask, causal)
        else:
            y = self._explicit(q_nope, q_pe, latent, mask, causal)
        return self.wo(y.reshape(B, T, self.n_heads * self.dv))

    def attention_probs(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention probabilities (B, H, T, T), computed explicitly (for gator.viz, not speed)."""
        q_nope, q_pe, latent = self.project(x, rope)
        B, H, T, _ = q_nope.shape
        c_kv, k_pe = latent[:, 0].split([self.kv_lora_rank, self.dr], dim=-1)  # (B, T, C), (B, T, dr)
        k_nope = self.wkv_b(c_kv).view(B, T, H, self.dn + self.dv)[..., :self.dn].transpose(1, 2)  # (B, H, T, dn)
        scores = (q_nope @ k_nope.transpose(-1, -2) + q_pe @ k_pe[:, None].transpose(-1, -2)) * self.scale
        allowed = mask if mask is not None else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.float().masked_fill(~allowed, float("-inf")).softmax(dim=-1)

    def _explicit(self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor,
                  mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Up-project the latent to per-head keys/values, then standard attention -> (B, T, H, dv)."""
        B, H, T, _ = q_nope.shape
        L = latent.shape[2]
        c_kv, k_pe = latent[:, 0].split([self.kv_lora_rank, self.dr], dim=-1)  # (B, L, C), (B, L, dr)
        kv = self.wkv_b(c_kv).view(B, L, H, self.dn + self.dv).transpose(1, 2)  # (B, H, L, dn+dv)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)  # (B, H, L, dn), (B, H, L, dv)
        k = torch.cat([k_nope, k_pe[:, None].expand(B, H, L, self.dr)], dim=-1)  # (B, H, L, dn+dr)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, H, T, dn+dr)
        y = attend(q, k, v, mask, causal, dropout=self.dropout if self.training else 0.0, scale=self.scale)
        return y.transpose(1, 2)  # (B, T, H, dv)

    def _absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor,
                  mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Attend over the latent itself: W_uk folded into the query, W_uv into the output -> (B, T, H, dv)."""
        w = self.wkv_b.weight.view(self.n_heads, self.dn + self.dv, self.kv_lora_rank)  # (H, dn+dv, C)
        w_uk, w_uv = w[:, :self.dn], w[:, self.dn:]  # (H, dn, C), (H, dv, C)
        B, H, T, _ = q_nope.shape
        q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (B, H, T, C): the query in latent space
        # Every head attends to the same keys [c_kv ; k_pe], so fold the heads into the query axis:
        # one attention of H*T queries over the cache as it is stored, no per-head copy of it.
        q = torch.cat([q_lat, q_pe], dim=-1).reshape(B, H * T, -1)  # (B, H*T, C+dr)
        scores = torch.matmul(q, latent[:, 0].transpose(1, 2)).float() * self.scale  # (B, H*T, L)
        if causal:  # query t of every head sees keys 0..t
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[None, None]
        if mask is not None:
            scores = scores.view(B, H, T, -1).masked_fill(~mask[:, 0, None], float("-inf")).view(B, H * T, -1)
        probs = torch.nn.functional.dropout(scores.softmax(dim=-1), self.dropout if self.training else 0.0)
        o_lat = torch.matmul(probs.to(q.dtype), latent[:, 0, :, :self.kv_lora_rank])  # (B, H*T, C): the values are c_kv
        return torch.einsum("bhtc,hvc->bthv", o_lat.view(B, H, T, -1), w_uv)  # (B, T, H, dv)
