"""Faster small-batch `nn.Linear` products for CPU decoding, applied explicitly around inference.

A decode step multiplies a handful of rows (one per sequence in the batch) by every weight matrix: a
matrix-vector product whose speed is how fast the weights stream from memory. On CPU, the BLAS kernel
that serves such a product depends on how the operands are laid out, and the kernels differ a lot.
Measured on the 2-core dev machine (fp32, the 50,281 x 384 LM head of `gatorgpt`, GB/s of weights read):

    rows of x                          1      2      4      8
    F.linear(x, W)  (= x @ W.T)       10.0    4.2    6.2    6.8
    (W @ x.T).T                       10.0   38.2   25.8   16.4

The same numbers, summed in a different order. The model itself uses plain `nn.Linear`. Generation runs
it inside `with fast_cpu_linears(model):`, which, for the duration of the block only, lets every
`nn.Linear` of the model time these equivalent formulations once per (rows, in, out, dtype) and then use
the fastest for CPU products without autograd and with at most `MAX_ROWS` rows:

    "linear"   F.linear(x, W, b)
    "w_x"      (W @ x.T).T + b
    "w_xx"     one row only: the row twice, (W @ [x; x].T), first column; the 2-row kernel above is
               faster than any 1-row one, reading the same weights once
    "onednn"   oneDNN's product with the weight reordered into its blocked layout (a packed copy)

Packed copies are made inside the block from the weights as they are then, and dropped when it ends, so
any change to the weights between two blocks (an optimiser step, an EMA update through `.data`, weight
surgery) is always seen. The weights must not change while a block is open; entering a block again
(also nested, e.g. `generate` inside a server's block) starts over from the current weights.
The only state kept across blocks is which formulation was fastest for a shape (`_choice`): every
candidate computes the same product, so that memo cannot give a wrong number. Results agree with
F.linear to floating-point rounding (the sums run in a different order), not bit for bit; call the
model outside a block when bit-for-bit agreement with F.linear matters more than speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from gator import runtime

MAX_ROWS = 16  # more rows than this: a real matrix-matrix product, F.linear's kernels are right
_choice: dict[tuple[int, int, int, torch.dtype], str] = {}  # fastest formulation per shape (a timing memo)


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


def can_pack(w: torch.Tensor) -> bool:
    """Whether this PyTorch build can pack `w` for oneDNN's product: fp32, or bf16 where gator.runtime's
    dtype policy says bf16 is fast on this CPU (never an emulated bf16 kernel)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and runtime.cpu_has_fast_bf16())


def pack(w: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight reordered into oneDNN's blocked layout for products with `rows` rows (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)


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


class FastForward:
    """What one `nn.Linear` runs while a `fast_cpu_linears` block is open: F.linear, or for a small CPU
    inference batch the fastest equivalent formulation. Holds this block's packed copies of the weight."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.packed: dict[int, torch.Tensor] = {}  # rows -> packed weight, made inside this block

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.layer.weight, self.layer.bias
        if x.device.type != "cpu" or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return F.linear(x, w, b)
        K = x.shape[-1]
        rows = x.numel() // K if K else 0
        if rows == 0 or rows > MAX_ROWS or x.dtype != w.dtype or torch.is_autocast_enabled("cpu"):
            return F.linear(x, w, b)
        x2 = x.reshape(rows, K)
        key = (rows, K, w.shape[0], w.dtype)
        name = _choice.get(key)
        packed = None
        if name in (None, "onednn") and can_pack(w):
            packed = self.packed.get(rows)
            if packed is None:
                packed = self.packed[rows] = pack(w, rows)
        if name == "onednn" and packed is None:  # chosen under another dtype policy (GATOR_FAST_BF16): search again
            name = None
        if name is None:
            name = _choice[key] = _pick(x2, w, b, packed)
            if name != "onednn":
                self.packed.pop(rows, None)  # not used: drop the copy
        y = CANDIDATES[name](x2, w, b, packed)
        return y.reshape(*x.shape[:-1], w.shape[0])


@contextmanager
def fast_cpu_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, every plain `nn.Linear` of `model` uses the fast small-batch CPU products above.

    Nothing outlives the block: each layer's `forward` is its class's again afterwards, and the packed
    weight copies are gone. A nested block over the same layers drops the outer block's copies, so they
    are made again from the weights as they are now. Subclasses of nn.Linear keep their own forward.
    """
    installed = []
    for m in model.modules():
        if type(m) is not nn.Linear:
            continue
        current = m.__dict__.get("forward")
        if isinstance(current, FastForward):
            current.packed.clear()
        elif current is None:
            m.forward = FastForward(m)
            installed.append(m)
    try:
        yield
    finally:
        for m in installed:
            del m.forward
