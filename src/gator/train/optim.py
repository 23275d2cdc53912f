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

Muon (Jordan et al., 2024; used by modded-nanogpt and nanochat) is the alternative for the matrices
inside the blocks: it keeps momentum like SGD, then replaces the update matrix by the nearest
semi-orthogonal matrix (all singular values 1), found with a few Newton-Schulz iterations, so every
direction of the matrix moves by the same amount instead of the few that dominate the gradient. Update
sizes are matched to AdamW's (x 0.2 sqrt(max(rows, cols)), Liu et al., 2025, "Muon is scalable"), so
one `lr` and one schedule drive both: embeddings, the LM head, norms and biases stay on AdamW.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from gator.runtime import fast_dtype


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
                   eps: float, device: torch.device, kind: str = "adamw",
                   momentum: float = 0.95) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (fused when this PyTorch supports it on the device, else foreach), or
    with kind="muon", Muon for the blocks' matrices and AdamW for the rest, in one optimizer."""
    if kind == "muon":
        return Muon(muon_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, momentum=momentum)
    if kind != "adamw":
        raise ValueError(f"unknown optimizer {kind!r}; expected adamw or muon")
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


# --------------------------------------------------------------------------------------------------
# Muon
# --------------------------------------------------------------------------------------------------

def muon_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Muon for the 2-D (or stacked 3-D expert) weights inside the blocks, except routers; AdamW for the
    rest (embeddings and LM head, whose rows are looked up one token at a time, and 1-D gains/biases)."""
    muon, adam_decay, adam_no_decay, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("blocks.") and p.dim() >= 2 and "router" not in name:
            muon.append(p)
        else:
            (adam_decay if p.dim() >= 2 else adam_no_decay).append(p)
    return [{"params": muon, "weight_decay": weight_decay, "use_muon": True},
            {"params": adam_decay, "weight_decay": weight_decay, "use_muon": False},
            {"params": adam_no_decay, "weight_decay": 0.0, "use_muon": False}]


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (the last two dims; leading dims are a batch), by the quintic
    Newton-Schulz iteration X <- a X + (b A + c A^2) X, A = X X^T. Its coefficients (from Keller Jordan's
    Muon) push every singular value of the normalised X quickly into roughly [0.7, 1.2], which is all the
    update needs; exact convergence to 1 would need many more steps. The iteration runs in `dtype`, by
    default the device's fast matmul dtype (`gator.runtime.fast_dtype`: bf16 where it is native, else
    fp32); its low precision is harmless at this accuracy."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or fast_dtype(g.device))
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # work on the side with fewer rows: A is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm, so all s <= 1
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x if wide else x.mT).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the parameter groups marked use_muon, AdamW (decoupled weight decay) for the others.

    Muon step for a matrix W with gradient G (Nesterov momentum m):
        B <- m B + (1 - m) G;   U = orthogonalize((1 - m) G + m B)
        W <- W (1 - lr wd) - lr * 0.2 * sqrt(max(rows, cols)) * U
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        ns_steps=ns_steps, use_muon=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["use_muon"]:
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = orthogonalize(p.grad.lerp(buf, group["momentum"]), group["ns_steps"])
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * 0.2 * max(p.size(-2), p.size(-1)) ** 0.5)
                else:
                    self._adamw(p, state, group)
        return loss

    @staticmethod
    def _adamw(p: torch.Tensor, state: dict, group: dict) -> None:
        """The AdamW update (Loshchilov & Hutter), as torch.optim.AdamW computes it."""
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"].item()
        p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))
