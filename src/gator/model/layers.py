"""The small layers a transformer block is made of: normalisation, the MLP, and rotary positions.

- LayerNorm (Ba et al., 2016) centres and scales each vector; GPT-2 uses it with a bias.
- RMSNorm (Zhang & Sennrich, 2019) only rescales by the root mean square; Llama and DeepSeek use it.
- The GELU MLP (GPT-2): d -> 4d -> d with the tanh approximation of GELU (what GPT-2 was trained with).
- SwiGLU (Shazeer, 2020): down(silu(gate(x)) * up(x)); gate and up are computed by one fused matmul.
- RoPE (Su et al., 2021): rotate pairs of query/key dimensions by an angle proportional to the position,
  so the dot product of a query and a key depends only on their distance.
"""

from __future__ import annotations

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
        # Normalise in fp32 for stability (as Llama does), then cast back.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


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

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.max_positions = max_positions
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos", cos, persistent=False)  # (max_positions, head_dim)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device)
                                         / self.head_dim))
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv_freq)  # (n, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, head_dim): pair i and i + head_dim/2 share an angle
        return angles.cos().float(), angles.sin().float()

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer positions of shape (T,) or (B, T) -> (..., T, head_dim)."""
        return self.cos[positions], self.sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by the angles in cos/sin (T, head_dim) or (B, 1, T, head_dim)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
