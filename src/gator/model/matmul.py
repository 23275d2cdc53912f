"""Linear layers whose small-batch inference product picks the fastest of equivalent formulations.

A decode step multiplies a handful of rows (one per sequence in the batch) by every weight matrix: a
matrix-vector product whose speed is how fast the weights stream from memory. On CPU, the BLAS kernel
that serves such a product depends on how the operands are laid out, and the kernels differ a lot.
Measured on the 2-core dev machine (fp32, the 50,281 x 384 LM head of `gatorgpt`, GB/s of weights read):

    rows of x                          1      2      4      8
    F.linear(x, W)  (= x @ W.T)       10.0    4.2    6.2    6.8
    (W @ x.T).T                       10.0   38.2   25.8   16.4

The same numbers, summed in a different order. So `Linear` here is a `torch.nn.Linear` (same parameters,
same state-dict keys) that, when it runs without autograd on CPU with at most `MAX_ROWS` rows, times
the candidate formulations once per (rows, in, out, dtype) and then always uses the fastest:

    "linear"   F.linear(x, W, b)
    "w_x"      (W @ x.T).T + b
    "w_xx"     one row only: the row twice, (W @ [x; x].T), first column; the 2-row kernel above is
               faster than any 1-row one, reading the same weights once

Training, GPU tensors and large batches go straight to F.linear. Results agree with F.linear to
floating-point rounding (the sums run in a different order), not bit for bit; `set_matmul_autotune(False)`
turns the search off when bit-for-bit agreement with F.linear matters more than speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 16  # more rows than this: a real matrix-matrix product, F.linear's kernels are right
_enabled = True
_choice: dict[tuple[int, int, int, torch.dtype], str] = {}


def set_matmul_autotune(enabled: bool) -> None:
    """Turn the small-batch formulation search on or off (on by default); forget earlier choices."""
    global _enabled
    _enabled = enabled
    _choice.clear()


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, b)


def _w_x(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    y = (w @ x.t()).t()
    return y if b is None else y + b


def _w_xx(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    y = (w @ x.expand(2, -1).contiguous().t())[:, :1].t()
    return y if b is None else y + b


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")


CANDIDATES: dict[str, Callable] = {"linear": _linear, "w_x": _w_x, "w_xx": _w_xx, "onednn": _onednn}


def _can_pack(w: torch.Tensor) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _pack(w: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight reordered into oneDNN's blocked layout for products with `rows` rows (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(w, rows)


def _pick(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None,
          repeats: int = 3) -> str:
    names = [n for n in CANDIDATES if (n != "w_xx" or x.shape[0] == 1) and (n != "onednn" or packed is not None)]
    best, best_time = "linear", float("inf")
    for name in names:
        fn = CANDIDATES[name]
        fn(x, w, b, packed)  # warm-up: first-call allocations and kernel dispatch
        t = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x, w, b, packed)
            t = min(t, time.perf_counter() - t0)
        if t < best_time * 0.97:  # keep F.linear unless another formulation is clearly faster
            best, best_time = name, t
    return best


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           owner: nn.Module | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), with the small-batch CPU inference formulation search described above.

    `owner` (the module the weight belongs to) keeps the packed copy of the weight for the oneDNN
    formulation; without it that candidate is skipped.
    """
    if (not _enabled or x.device.type != "cpu" or (torch.is_grad_enabled() and (weight.requires_grad or
                                                                                 x.requires_grad))):
        return F.linear(x, weight, bias)
    K = x.shape[-1]
    rows = x.numel() // K if K else 0
    if rows == 0 or rows > MAX_ROWS or x.dtype != weight.dtype or torch.is_autocast_enabled("cpu"):
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, K)
    key = (rows, K, weight.shape[0], weight.dtype)
    name = _choice.get(key)
    packed = None
    if owner is not None and name in (None, "onednn") and _can_pack(weight):
        packed = _packed_weight(owner, weight, rows)
    if name is None:
        name = _choice[key] = _pick(x2, weight, bias, packed)
        if name != "onednn" and owner is not None:
            owner.__dict__.get("_gator_packed", {}).pop(rows, None)  # not used: drop the copy
    y = CANDIDATES[name](x2, weight, bias, packed)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _packed_weight(owner: nn.Module, weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The owner's packed copy of `weight` for `rows`, made again whenever the weight has changed."""
    cache = owner.__dict__.setdefault("_gator_packed", {})
    stamp = (weight.data_ptr(), weight._version, weight.dtype)
    hit = cache.get(rows)
    if hit is None or hit[0] != stamp:
        hit = cache[rows] = (stamp, _pack(weight.detach(), rows))
    return hit[1]


class Linear(nn.Linear):
    """`torch.nn.Linear` whose forward is `linear` above (identical parameters and state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, owner=self)
