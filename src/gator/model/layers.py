"""The small layers a transformer block is made of: normalisation, the MLP, and rotary positions.

- LayerNorm (Ba et al., 2016) centres and scales each vector; GPT-2 uses it with a bias.
- RMSNorm (Zhang & Sennrich, 2019) only rescales by the root mean square; Llama and DeepSeek use it.
- The GELU MLP (GPT-2): d -> 4d -> d with the tanh approximation of GELU (what GPT-2 was trained with).
- SwiGLU (Shazeer, 2020): down(silu(gate(x)) * up(x)); gate and up are computed by one fused matmul.
- RoPE (Su et al., 2021): rotate pairs of query/key dimensions by an angle proportional to the position,
  so the dot product of a query and a key depends only on their distance.
- YaRN (Peng et al., 2023): rescaled RoPE frequencies that stretch a model's context (DeepSeek-V2/V3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gator.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps) * weight; the fused kernel accumulates in fp32 for bf16/fp16 inputs.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class GeluMLP(nn.Module):
    """GPT-2's feed-forward block: expand, GELU (tanh approximation), project back."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.down.is_residual_projection = True  # scaled at init, see Transformer._init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Llama's feed-forward block. `gate_up` holds [gate; up] stacked, so one matmul computes both."""

    def __init__(self, config: ModelConfig, ffn_dim: int | None = None):
        super().__init__()
        self.ffn_dim = ffn_dim or config.ffn_dim
        self.gate_up = nn.Linear(config.d_model, 2 * self.ffn_dim, bias=config.bias)
        self.down = nn.Linear(self.ffn_dim, config.d_model, bias=config.bias)
        self.down.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.ffn_dim, dim=-1)
        return self.down(F.silu(gate) * up)


def make_mlp(config: ModelConfig) -> nn.Module:
    return SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for RoPE, in the Hugging Face Llama convention.

    Convention (stated because weights must move between Gator and transformers without permutation):
    dimension i of a head is paired with dimension i + head_dim/2 (the "rotate half" layout), and pair i
    turns at frequency theta^(-2i/head_dim). The original Meta checkpoints pair adjacent dimensions
    (2i, 2i+1) instead; converting those needs a permutation of the q/k projection rows, ours does not.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.max_positions = max_positions
        self.scaling = scaling  # YaRN parameters (see yarn_inv_freq), or None for plain RoPE
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos", cos, persistent=False)  # (max_positions, head_dim)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device)
                                         / self.head_dim))
        magnitude = 1.0
        if self.scaling is not None:
            inv_freq = yarn_inv_freq(inv_freq, self.head_dim, self.theta, self.scaling)
            magnitude = yarn_rope_magnitude(self.scaling)
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv_freq)  # (n, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, head_dim): pair i and i + head_dim/2 share an angle
        return (angles.cos() * magnitude).float(), (angles.sin() * magnitude).float()

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer positions of shape (T,) or (B, T) -> (..., T, head_dim)."""
        return self.cos[positions], self.sin[positions]


def make_rope(config: ModelConfig) -> RotaryEmbedding | None:
    """The model's RoPE tables (over MLA's decoupled RoPE dims when attention is MLA), or None."""
    if config.positions != "rope":
        return None
    return RotaryEmbedding(config.rope_dim, config.context_length, config.rope_theta, config.rope_scaling)


# YaRN (Peng et al., 2023), as DeepSeek-V2/V3 use it to stretch a 4K pretraining context to 128K+: pairs
# that turn many times within the original context keep their frequency (extrapolate), slow pairs are
# divided by `factor` (interpolate), with a linear ramp between; cos/sin are then scaled by an
# "attention factor", by default mscale(factor) = 0.1 * m * ln(factor) + 1.
#
# The scaling dict (ModelConfig.rope_scaling) holds the keys of transformers' YaRN `rope_parameters`,
# with the same meaning and defaults, so imported models compute the same tables:
#   factor                    the context stretch (required)
#   original_context_length   the pretraining context (transformers: original_max_position_embeddings)
#   beta_fast, beta_slow      the ramp ends, in turns within the original context (default 32 and 1)
#   mscale, mscale_all_dim    the attention factor is mscale(factor, mscale) / mscale(factor, mscale_all_dim)
#                             when both are set (DeepSeek: equal, so 1), else mscale(factor)
#   attention_factor          overrides that computed attention factor
#   truncate                  round the ramp ends to whole pairs (default True; gpt-oss uses False)

def yarn_mscale(factor: float, m: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def yarn_inv_freq(inv_freq: torch.Tensor, dim: int, theta: float, s: dict) -> torch.Tensor:
    """YaRN-corrected inverse frequencies (dim/2,) from the plain ones."""
    factor, original = float(s["factor"]), int(s["original_context_length"])
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the pair index that turns `rotations` times in `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=inv_freq.dtype, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def yarn_rope_magnitude(s: dict) -> float:
    """The attention factor cos/sin are multiplied by: `attention_factor` when given, else
    mscale(m) / mscale(m_all) when both are set (1 for DeepSeek, where m = m_all), else mscale(factor)."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    factor, m, m_all = float(s["factor"]), s.get("mscale"), s.get("mscale_all_dim")
    if m and m_all:
        return yarn_mscale(factor, m) / yarn_mscale(factor, m_all)
    return yarn_mscale(factor)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by the angles in cos/sin (T, head_dim) or (B, 1, T, head_dim)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
