"""Causal self-attention: multi-head (MHA), grouped-query (GQA) and multi-query (MQA), optionally windowed.

Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + mask) V   (Vaswani et al., 2017)

Each of `n_heads` query heads attends with its own keys and values in MHA. GQA (Ainslie et al., 2023)
shares one key/value head among n_heads / n_kv_heads query heads, shrinking the KV cache by that factor;
MQA (Shazeer, 2019) is the extreme of a single KV head. The computation itself goes through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels, flash attention where available),
with `enable_gqa=True` so the shared K/V heads are never copied n_heads / n_kv_heads times.

A sliding window (Longformer, Mistral) lets each token see only the last `sliding_window` tokens.

Shapes: B batch, T new tokens, L keys (T plus what the cache holds), H query heads, Hkv KV heads, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gator import runtime
from gator.config import ModelConfig
from gator.model.cache import KVCache
from gator.model.layers import apply_rope


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_dim, self.kv_dim = config.q_dim, config.kv_dim
        self.window = config.sliding_window
        self.dropout = config.dropout
        # Q, K and V come from one fused matmul: rows [0, q_dim) are Q, then K, then V.
        self.qkv = nn.Linear(config.d_model, self.q_dim + 2 * self.kv_dim, bias=config.bias)
        self.proj = nn.Linear(self.q_dim, config.d_model, bias=config.bias)
        self.proj.is_residual_projection = True

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, L, D)
        y = attend(q, k, v, mask, causal=cache is None and mask is None,
                   dropout=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.q_dim)  # (B, T, H*D)
        return self.proj(y)


    def attention_probs(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention probabilities (B, H, T, T), computed explicitly (for visualisation, not speed)."""
        B, T, _ = x.shape
        q, k, _ = self.qkv(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, T, D)
        scores = (q @ k.transpose(-1, -2)) / self.head_dim ** 0.5  # (B, H, T, T)
        allowed = mask if mask is not None else causal_mask(T, None, x.device)
        return scores.float().masked_fill(~allowed, float("-inf")).softmax(dim=-1)

def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
           dropout: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with K/V heads shared among groups of query heads.

    On CPU, low-precision attention runs in fp32 and is cast back where `gator.runtime.cpu_attention_in_fp32`
    says fp32 is the faster kernel (short keys; any length where bf16 is not native).
    """
    gqa = q.shape[1] != k.shape[1]
    dtype = q.dtype
    low = dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    if q.device.type == "cpu" and low and runtime.cpu_attention_in_fp32(q.shape[2], k.shape[2]):
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs straight back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout,
                                               is_causal=causal, scale=scale, enable_gqa=gqa)
        return y.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                          scale=scale, enable_gqa=gqa)


def causal_mask(T: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(1, 1, T, T) boolean mask: query i sees keys j <= i (and j > i - window with a window)."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    return allowed[None, None]
