"""Mixture-of-Depths (MoD): a block that processes only some tokens (Raposo et al., 2024).

Not every token needs every layer. In a MoD block a linear router scores each token, r_i = w . x_i, and
in training only the top `mod_capacity` fraction of each sequence (e.g. 12.5%) goes through the block;
the others ride the residual stream unchanged:

    x_i <- x_i + sigmoid(r_i) * f(x_i)   if token i is among the top-k of its sequence
    x_i <- x_i                           otherwise

f is the block's update (attention over the *selected* tokens only, then the MLP). Multiplying by the
router weight puts the router on the gradient path, so it learns which tokens deserve the compute; the
block's attention and MLP run on k = ceil(capacity * T) tokens instead of T, which is the saving.

Top-k over a sequence is not causal: whether token i is selected depends on later tokens. So inference
uses a causal rule that decides from token i alone, and training teaches that rule the top-k choice
with a binary cross-entropy loss (weight `mod_aux_loss`), one of the two methods of the paper:
- "threshold": process token i iff r_i > 0; the BCE trains the router's own logits toward the top-k labels.
- "predictor": a small MLP on a stop-gradient copy of x_i predicts top-k membership; process iff its
  logit > 0. The router is then trained by the LM loss alone.

In eval mode (full forward or KV-cached decoding alike) the block applies the causal rule, so a cached
decode equals a full recompute exactly. A skipped token never enters the layer's attention: its KV-cache
slot is marked absent (`KVCache.key_mask`) and no later token attends to it. `agreement` (logged in
training) is the fraction of tokens on which the causal rule agrees with the top-k choice.

Shapes: B batch, T tokens, k selected tokens per sequence, d model width, L keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.cache import KVCache


class MixtureOfDepths(nn.Module):
    def __init__(self, config: ModelConfig, block: nn.Module):
        super().__init__()
        self.block = block
        self.capacity, self.window = config.mod_capacity, config.sliding_window
        self.aux_weight = config.mod_aux_loss
        self.router = nn.Linear(config.d_model, 1)  # its bias lets the threshold rule pick the quantile
        self.predictor = None
        if config.mod_decode == "predictor":
            hidden = max(8, config.d_model // 8)
            self.predictor = nn.Sequential(nn.Linear(config.d_model, hidden, bias=False), nn.SiLU(),
                                           nn.Linear(hidden, 1))
        self.aux_loss: torch.Tensor | None = None
        self.agreement: torch.Tensor | None = None  # last training forward: causal rule == top-k, fraction

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, mask: torch.Tensor | None) -> torch.Tensor:
        if self.training and cache is None:
            return self._top_k(x, rope)
        return self._causal(x, rope, cache, mask)

    def _update(self, x: torch.Tensor, rope, cache: KVCache | None, mask: torch.Tensor | None) -> torch.Tensor:
        """f(x): the block's attention + MLP update without the residual (B, T, d)."""
        b = self.block
        h = b.dropout(b.attn(b.attn_norm(x), rope, cache, mask))
        return h + b.dropout(b.mlp(b.mlp_norm(x + h)))

    def _decision_logits(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(B, T) logits of the causal rule: > 0 means "process". The predictor reads a stop-gradient
        copy of x (its loss leaves the model alone); the threshold rule is the router itself."""
        return r if self.predictor is None else self.predictor(x.detach()).squeeze(-1)

    def _top_k(self, x: torch.Tensor, rope) -> torch.Tensor:
        B, T, d = x.shape
        k = max(1, math.ceil(self.capacity * T))
        r = self.router(x).squeeze(-1)  # (B, T) router logits
        top = r.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k) selected, in sequence order
        gather = top[..., None].expand(B, k, d)
        xs = x.gather(1, gather)  # (B, k, d)
        rope_s = None
        if rope is not None:
            cos, sin = rope  # (T, D) in training
            rope_s = (cos[top][:, None], sin[top][:, None])  # (B, 1, k, D): each token keeps its position
        mask = None  # selected tokens are in order, so plain causal attention among them is right...
        if self.window is not None:  # ...but a window counts original positions
            qpos, kpos = top[:, :, None], top[:, None, :]
            mask = ((kpos <= qpos) & (kpos > qpos - self.window))[:, None]  # (B, 1, k, k)
        selected = torch.zeros_like(r).scatter_(1, top, 1.0)  # (B, T) top-k labels
        decide = self._decision_logits(x, r)  # (B, T) the causal rule, taught the top-k labels
        with torch.no_grad():
            self.agreement = ((decide > 0) == selected.bool()).float().mean()
        if self.aux_weight > 0:
            self.aux_loss = self.aux_weight * F.binary_cross_entropy_with_logits(decide.float(), selected)
        w = torch.sigmoid(r.gather(1, top))[..., None].to(x.dtype)  # (B, k, 1) router weights
        return x.scatter(1, gather, xs + w * self._update(xs, rope_s, None, mask))

    def _causal(self, x: torch.Tensor, rope, cache: KVCache | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        r = self.router(x).squeeze(-1)  # (B, T)
        go = self._decision_logits(x, r) > 0  # (B, T): the tokens this block processes
        start = cache.length if cache is not None else 0
        L = start + T
        if cache is not None:
            keys = cache.key_mask(self.block.attn.layer_idx)  # (B, max_len)
            keys[:, start:L] = go
            present = keys[:, :L]  # (B, L)
        else:
            present = go
        if not bool(go.any()):
            return x
        kpos = torch.arange(L, device=x.device)
        qpos = torch.arange(start, L, device=x.device)
        allowed = present[:, None, None, :]  # (B, 1, 1, L): skipped tokens are no keys
        if mask is not None:
            allowed = allowed & mask
        elif cache is None:
            allowed = allowed & (kpos[None, :] <= qpos[:, None])  # causal
        allowed = allowed | (kpos[None, :] == qpos[:, None])  # a skipped query sees itself (output unused)
        w = torch.sigmoid(r)[..., None].to(x.dtype)  # (B, T, 1)
        return torch.where(go[..., None], x + w * self._update(x, rope, cache, allowed), x)
