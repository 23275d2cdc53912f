"""LoRA: low-rank adaptation of a frozen model (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv:2106.09685).

A pretrained weight W (out, in) stays frozen; fine-tuning learns only a low-rank update of it:

    h = W x + s * B A x        A: (r, in), B: (out, r), r << min(in, out)
    s = alpha / r              (rsLoRA, Kalajdzievski 2023: s = alpha / sqrt(r))

A starts Kaiming-uniform (as PEFT initialises it) and B starts at zero, so the adapted model is exactly
the pretrained one at step 0 and training moves away from it smoothly. Dropout, when used, applies to
the adapter's input only. After training, W + s B A can be merged into the weight (no extra cost at
inference) and unmerged again.

Gator fuses projections: attention computes Q, K and V with one `qkv` Linear and SwiGLU computes gate
and up with one `gate_up` Linear. Transformers (and so PEFT) keep q_proj, k_proj, v_proj, gate_proj and
up_proj separate, each with its own adapter. `LoRALinear` therefore holds one (A, B) pair per adapted
*slice* of the fused output rows, which computes exactly what PEFT's separate adapters compute (each
slice even draws its own dropout mask, as PEFT's separate layers do). GPT-2 fuses Q, K and V too
(`c_attn`) and PEFT adapts that as one module: the target "qkv" is one adapter over the whole matrix.

Targets, by the transformers names they correspond to:

    q, k, v   q_proj, k_proj, v_proj (slices of attn.qkv)   qkv    GPT-2's c_attn (all of attn.qkv)
    o         o_proj / GPT-2's attn.c_proj                  gate   gate_proj (slice of mlp.gate_up)
    up        up_proj (slice of mlp.gate_up) / GPT-2's c_fc down   down_proj / GPT-2's mlp.c_proj
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig
from gator.model.attention import CausalSelfAttention
from gator.model.depth import MixtureOfDepths
from gator.model.layers import GeluMLP, SwiGLU

TARGETS = ("q", "k", "v", "qkv", "o", "gate", "up", "down")


def default_targets(config: ModelConfig) -> tuple[str, ...]:
    """Every projection of the blocks, as PEFT can express it for this architecture."""
    if config.mlp == "swiglu":
        return ("q", "k", "v", "o", "gate", "up", "down")
    return ("qkv", "o", "up", "down")


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: Sequence[str] = field(default_factory=lambda: ("q", "k", "v", "o", "gate", "up", "down"))
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"unknown LoRA target(s) {unknown or 'none given'}; choose from {', '.join(TARGETS)}")
        if "qkv" in self.targets and {"q", "k", "v"} & set(self.targets):
            raise ValueError("target 'qkv' (one adapter over the fused Q/K/V matrix) cannot be combined with "
                             "'q', 'k' or 'v' (one adapter each); pick one of the two")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class _LoRAProducts(torch.autograd.Function):
    """y = x W^T + b + s sum_j (x A_j^T) B_j^T on each adapted slice's rows, with only the products LoRA
    needs (A is the slices' A_j stacked; `blocks` gives each B_j's output rows and its columns of h):

        forward    y = x W^T + b,  h = x A^T,  y[rows_j] += s h[cols_j] B_j^T    (adds inside the product)
        backward   g_h[cols_j] = s g[rows_j] B_j,  grad B_j = s g[rows_j]^T h[cols_j],  grad A = g_h^T x,
                   grad x = g W + g_h A          (grad W = g^T x and grad b only if the base layer trains)

    All tensors arrive in one dtype (under autocast the caller casts them, as autocast would)."""

    @staticmethod
    def forward(ctx, scaling: float, blocks: list[tuple[slice, slice]], x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, A: torch.Tensor, *Bs: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        h = x2 @ A.t()
        for (rows, cols), B in zip(blocks, Bs):
            y[:, rows].addmm_(h[:, cols], B.t(), alpha=scaling)
        ctx.save_for_backward(x2, weight, A, h, *Bs)
        ctx.scaling, ctx.blocks, ctx.x_shape = scaling, blocks, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x2, weight, A, h, *Bs = ctx.saved_tensors
        need = ctx.needs_input_grad
        s = ctx.scaling
        g = g.reshape(-1, g.shape[-1])
        g_h = torch.cat([g[:, rows] @ B for (rows, _), B in zip(ctx.blocks, Bs)], dim=1).mul_(s)
        grad_Bs = [(g[:, rows].t() @ h[:, cols]).mul_(s) if need[6 + i] else None
                   for i, (rows, cols) in enumerate(ctx.blocks)]
        grad_x = (g @ weight).addmm_(g_h, A).view(ctx.x_shape) if need[2] else None
        grad_W = g.t() @ x2 if need[3] else None
        grad_b = g.sum(0) if need[4] else None
        grad_A = g_h.t() @ x2 if need[5] else None
        return None, None, grad_x, grad_W, grad_b, grad_A, *grad_Bs


class LoRALinear(nn.Linear):
    """A frozen Linear (the same weight and bias Parameters, so the same state-dict keys) plus one LoRA
    update per adapted slice of its output rows.

    `slices` partitions the output rows, e.g. [("q", 512), ("k", 128), ("v", 128)] for a fused QKV
    matrix; `adapted` names the slices that get an (A, B) pair. Parameters: lora_A.<name> (r, in) and
    lora_B.<name> (rows of the slice, r).
    """

    def __init__(self, base: nn.Linear, slices: Sequence[tuple[str, int]], adapted: Sequence[str],
                 config: LoRAConfig):
        nn.Module.__init__(self)  # no fresh weight: the base layer's Parameters are reused below
        if sum(n for _, n in slices) != base.out_features:
            raise ValueError(f"slices {list(slices)} do not add up to the layer's {base.out_features} outputs")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.__dict__["base"] = base  # the original module (not a submodule), put back by `remove_lora`
        self.slices = [(name, int(n)) for name, n in slices]
        self.adapted = [name for name, _ in self.slices if name in adapted]
        # for each adapted slice: its output rows, and its r columns of h = (stacked A) x
        rows = {name: slice(start, start + n) for (name, n), start
                in zip(self.slices, itertools.accumulate((n for _, n in self.slices), initial=0))}
        self.blocks = [(rows[name], slice(j * config.r, (j + 1) * config.r)) for j, name in enumerate(self.adapted)]
        self.r, self.scaling = config.r, config.scaling
        w = base.weight
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32  # adapters train in fp32
        self.lora_A = nn.ParameterDict({name: nn.Parameter(torch.empty(config.r, self.in_features, device=w.device,
                                                                       dtype=dtype)) for name in adapted})
        self.lora_B = nn.ParameterDict({name: nn.Parameter(torch.zeros(n, config.r, device=w.device, dtype=dtype))
                                        for name, n in self.slices if name in adapted})
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        for A in self.lora_A.values():
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # what PEFT (and torch's Linear) use

    def delta(self, name: str) -> torch.Tensor:
        """The update s * B A of one slice, shape (rows of the slice, in)."""
        return self.scaling * (self.lora_B[name] @ self.lora_A[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        device = x.device.type
        tensors = [x, self.weight, self.bias, self.stacked_A(), *(self.lora_B[name] for name in self.adapted)]
        if torch.is_autocast_enabled(device):  # what autocast would do to each product: all in its dtype
            dtype = torch.get_autocast_dtype(device)
            tensors = [None if t is None else t.to(dtype) for t in tensors]
        if isinstance(self.lora_dropout, nn.Identity) and len({t.dtype for t in tensors if t is not None}) == 1:
            with torch.autocast(device, enabled=False):
                return _LoRAProducts.apply(self.scaling, self.blocks, *tensors)
        return self.plain_forward(x)

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b + s B A x written with autograd's ops (dropout, or fp32 adapters on a bf16/fp16 base
        without autocast, take this path; `_LoRAProducts` computes the same numbers faster)."""
        y = F.linear(x, self.weight, self.bias)
        A, B = self.stacked_A(), self.block_diagonal_B()
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(A.dtype)  # e.g. a bf16 base model: the adapters still compute (and train) in fp32
        if isinstance(self.lora_dropout, nn.Identity):
            h = F.linear(x, A)  # every slice's A x in one product
        else:  # each slice draws its own dropout mask, as PEFT's separate layers do
            h = torch.cat([F.linear(self.lora_dropout(x), self.lora_A[name]) for name in self.adapted], dim=-1)
        return y + (F.linear(h, B) * self.scaling).to(y.dtype)  # each slice's B times its own part of h

    def stacked_A(self) -> torch.Tensor:
        """The adapted slices' A matrices stacked (r * k, in): h = A x is one product for the whole fused
        layer, with r columns of h per slice (in the order of the rows; a ParameterDict sorts its keys)."""
        As = [self.lora_A[name] for name in self.adapted]
        return torch.cat(As) if len(As) > 1 else As[0]

    def block_diagonal_B(self) -> torch.Tensor:
        """The slices' B matrices as one block-diagonal (out, r * k) matrix (an unadapted slice's rows are
        zero), so that B (A x) gives every slice's update at once."""
        if len(self.slices) == 1:
            return self.lora_B[self.slices[0][0]]
        zero = self.lora_B[self.adapted[0]].new_zeros(())
        return torch.block_diag(*(self.lora_B[name] if name in self.lora_B else zero.expand(n, 0)
                                  for name, n in self.slices))

    @torch.no_grad()
    def merge(self) -> None:
        """W += s B A for every slice; the forward then skips the adapters."""
        self._shift(+1)

    @torch.no_grad()
    def unmerge(self) -> None:
        """W -= s B A: undo `merge` (exact up to floating-point rounding)."""
        self._shift(-1)

    def _shift(self, sign: int) -> None:
        if self.merged == (sign > 0):
            return
        start = 0
        for name, n in self.slices:
            if name in self.lora_A:
                rows = self.weight[start:start + n]
                rows += sign * self.delta(name).to(rows.dtype)
            start += n
        self.merged = sign > 0

    def extra_repr(self) -> str:
        adapted = ", ".join(name for name, _ in self.slices if name in self.lora_A)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"lora r={self.r} scaling={self.scaling:g} on [{adapted}], merged={self.merged}")


# ---------------------------------------------------------------------------------------------------
# applying LoRA to a Transformer
# ---------------------------------------------------------------------------------------------------

def _sites(model: nn.Module, targets: Sequence[str]) -> Iterator[tuple[nn.Module, str, list[tuple[str, int]]]]:
    """(parent module, attribute name, output slices) of each Linear that targets can name, block by block."""
    for i, block in enumerate(model.blocks):
        b = block.block if isinstance(block, MixtureOfDepths) else block
        attn, mlp = b.attn, b.mlp
        if isinstance(attn, CausalSelfAttention):
            qkv = ([("qkv", attn.q_dim + 2 * attn.kv_dim)] if "qkv" in targets else
                   [("q", attn.q_dim), ("k", attn.kv_dim), ("v", attn.kv_dim)])
            yield attn, "qkv", qkv
            yield attn, "proj", [("o", attn.proj.out_features)]
        elif {"q", "k", "v", "qkv", "o"} & set(targets):
            raise ValueError(f"block {i} uses {type(attn).__name__}, for which LoRA attention targets are not "
                             "implemented; adapt only the MLP (targets gate,up,down)")
        if isinstance(mlp, SwiGLU):
            yield mlp, "gate_up", [("gate", mlp.ffn_dim), ("up", mlp.ffn_dim)]
            yield mlp, "down", [("down", mlp.down.out_features)]
        elif isinstance(mlp, GeluMLP):
            yield mlp, "up", [("up", mlp.up.out_features)]
            yield mlp, "down", [("down", mlp.down.out_features)]
        elif {"gate", "up", "down"} & set(targets):
            raise ValueError(f"block {i} uses {type(mlp).__name__}, for which LoRA MLP targets are not "
                             "implemented; adapt only attention (targets q,k,v,o)")


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap the targeted Linear layers of `model` (a Transformer) in LoRALinear, in place, and freeze
    everything but the adapters. Returns the model; `model.lora_config` records the config."""
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("this model already has LoRA adapters; merge or remove them (remove_lora) first")
    found: set[str] = set()
    wraps = []
    for parent, attr, slices in _sites(model, config.targets):
        adapted = [name for name, _ in slices if name in config.targets]
        if adapted:
            wraps.append((parent, attr, slices, adapted))
            found.update(adapted)
    missing = [t for t in config.targets if t not in found]
    if missing:
        raise ValueError(f"LoRA target(s) {missing} match no layer of this model; its targets are "
                         f"{', '.join(default_targets(model.config))}")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, attr, slices, adapted in wraps:
        setattr(parent, attr, LoRALinear(getattr(parent, attr), slices, adapted, config))
    model.lora_config = config
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, by Gator name (e.g. blocks.0.attn.qkv.lora_A.q)."""
    return {name: p.detach() for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into a model with the same adapters; every tensor must match by name and shape."""
    own = dict(lora_state_dict(model))
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter does not match the model's LoRA layers: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}; apply_lora with the adapter's own targets first")
    for name, t in state.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise ValueError(f"adapter tensor {name!r} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(own[name].shape)}; was it trained with a different rank or model?")
    with torch.no_grad():
        for name, t in state.items():
            own[name].copy_(t)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters, each shared tensor counted once; all includes the adapters."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())


def trainable_summary(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)"


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (W += s B A); the adapters stay and can be unmerged."""
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the original Linear layers back (with the adapters merged into them unless merge=False) and
    make every parameter trainable again: a plain model, saved by `save_pretrained` as usual."""
    for name, m in lora_layers(model).items():
        if merge:
            m.merge()
        else:
            m.unmerge()
        parent = model.get_submodule(name.rpartition(".")[0])
        base = m.base
        base.weight, base.bias = m.weight, m.bias  # the live Parameters (they may have moved device/dtype)
        setattr(parent, name.rpartition(".")[2], base)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("lora_config", None)
    return model


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes as its base model: every LoRA update is scaled by 0, which adds
    exactly zero. The reference policy of DPO/GRPO with LoRA, without a second copy of the model."""
    layers = list(lora_layers(model).values())
    if any(m.merged for m in layers):
        raise ValueError("the adapters are merged into the weights; unmerge them before asking for the base model")
    saved = [m.scaling for m in layers]
    for m in layers:
        m.scaling = 0.0
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            m.scaling = s
