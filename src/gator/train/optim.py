"""The optimiser and the learning-rate schedule.

AdamW (Loshchilov & Hutter, 2019) with weight decay on matrices only: linear weights and embeddings
are decayed; norms' gains and biases (1-D tensors) are not, since shrinking them toward zero only
fights the normalisation. PyTorch's fused or multi-tensor ("foreach") implementation is used, which
updates all parameters in a few kernels instead of one loop iteration per tensor.

Schedules, as a function of progress through training (steps done / total steps, or time used / time
budget when training runs against a clock):

    cosine:   linear warmup to lr, then half a cosine down to min_lr        (GPT-3, Chinchilla, nanoGPT)
    wsd:      warmup, stay at lr, decay linearly to min_lr over the last decay_fraction
              (warmup-stable-decay, MiniCPM, Hu et al., 2024: a run can be extended without restarting)
    constant: warmup, then lr
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: parameters with 2+ dimensions (decayed) and the rest (not decayed)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   eps: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused when this PyTorch supports it on the device, else foreach."""
    kwargs = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def lr_at(step: int, progress: float, *, lr: float, min_lr: float, warmup_steps: int, schedule: str,
          decay_fraction: float = 0.2) -> float:
    """The learning rate for `step` (0-based) when `progress` in [0, 1] of training is done."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if progress <= start:
            return lr
        return lr - (lr - min_lr) * (progress - start) / decay_fraction
    raise ValueError(f"unknown schedule {schedule!r}")
