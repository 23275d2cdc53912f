"""Multi-token prediction (MTP), as DeepSeek-V3 trains it (DeepSeek-AI, 2024, section 2.2).

Besides the next token, the model learns to predict tokens further ahead with D small sequential
modules. Module k (1..D) keeps the causal chain: at position i it combines the representation of depth
k-1 with the embedding of token i+k and predicts token i+k+1:

    h'_i^k = W_k [RMSNorm(h_i^{k-1}) ; RMSNorm(Emb(t_{i+k}))]      (W_k: 2d -> d, "eh_proj")
    h_i^k  = RMSNorm(Block_k(h'^k)_i)                              (one transformer block, own attention)
    P_i^k  = OutHead(h_i^k)                                        -> token t_{i+k+1}

h^0 is the main model's final (normed) hidden state. The embedding and output head are the main model's
own (shared, not copied). The loss is the mean cross-entropy over the D depths (those with a target to
score, see `mtp_loss`) times lambda (`mtp_loss_weight`), added to the main loss; it densifies the
training signal and teaches the model to plan ahead. At inference the modules can be dropped, or used to
draft tokens for speculative decoding (`generate(..., draft="mtp")`, see gator/generate/speculative.py).

Layout (the DeepSeek-V3 checkpoint's `model.layers.{n_layers + k}`): enorm, hnorm, eh_proj, the block,
and the final norm (`shared_head.norm`). Positions: entry i of module k sits at position i + k, the
position of the token it embeds (what transformers' MtpModel does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.cache import KVCache
from gator.model.layers import make_norm


class MTPModule(nn.Module):
    def __init__(self, config: ModelConfig, block: nn.Module):
        super().__init__()
        d = config.d_model
        self.enorm = make_norm(config)  # for the embedding of the token k ahead
        self.hnorm = make_norm(config)  # for the previous depth's hidden state
        self.proj = nn.Linear(2 * d, d, bias=False)  # eh_proj
        self.block = block  # a Block of the main model's kind (MoE when the model has MoE layers)
        self.block.attn.layer_idx = 0  # it caches in a one-layer cache of its own (speculative decoding)
        self.norm = make_norm(config)  # shared_head.norm, before the shared output head

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """h_prev (B, T, d) from depth k-1 and emb (B, T, d) of the tokens k ahead -> h^k (B, T, d), normed."""
        x = self.proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1))  # (B, T, d)
        return self.norm(self.block(x, rope, cache, mask))


def mtp_loss(model: nn.Module, h0: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over depths of the MTP cross-entropy. h0 (B, T, d) normed main hidden states, ids/targets (B, T).

    Depth k reads ids[:, k:] (token i+k at entry i) and is scored against targets[:, k:] (token i+k+1);
    targets of -100 are ignored, as in the main loss. A depth's loss is the mean over its scored targets;
    a depth with none (all -100, e.g. a batch of short answers in SFT) has no mean to give, so it is left
    out of the mean over depths, like a depth with no entries at all, rather than counted as a NaN (what
    0/0 gives) or as a 0 that would shrink the MTP loss by how many depths a batch happened to leave empty.
    Its term is multiplied by 0 rather than dropped, so every MTP parameter still gets a (zero) gradient
    (DDP expects one). With no scored target at any depth the MTP loss is 0.
    """
    T = ids.shape[1]
    h, losses, has_targets = h0, [], []
    for k, module in enumerate(model.mtp, start=1):
        n = T - k  # entries of depth k
        if n < 1:
            break
        rope = model.rope_at(torch.arange(k, T, device=ids.device)) if model.rope is not None else None
        h = module(h[:, :n], model.tok_emb(ids[:, k:]), rope)  # (B, n, d)
        logits = model.lm_head(h)  # (B, n, V)
        depth_targets = targets[:, k:].reshape(-1)
        scored = (depth_targets != -100).sum()
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), depth_targets, ignore_index=-100,
                                reduction="sum")  # 0 (with a graph) when nothing is scored
        losses.append(total / scored.clamp(min=1))
        has_targets.append(scored > 0)
    if not losses:
        return h0.new_zeros(())
    used = torch.stack(has_targets)
    return (torch.stack(losses) * used).sum() / used.sum().clamp(min=1)
