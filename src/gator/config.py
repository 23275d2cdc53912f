"""Model configuration and the registry of named presets.

One `ModelConfig` describes every model family Gator builds: GPT-2 (LayerNorm, GELU, learned positions,
biases), GatorGPT and Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases), and the
DeepSeek-style and Mixture-of-Depths extensions, which add their own fields here and their own layers
in `gator/model/`. `Transformer(config)` reads nothing else.

The config is a plain dataclass that round-trips through JSON (`to_dict`/`from_dict`, `save`/`load`),
and it checks itself on construction so that an inconsistent shape fails here, naming the field, rather
than deep inside a matmul.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    # --- sizes ---
    vocab_size: int = 50257
    context_length: int = 1024  # the longest sequence the model is built for (RoPE table, learned positions)
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12  # query heads
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA); 1 = MQA; in between = GQA
    head_dim: int | None = None  # None = d_model // n_heads
    ffn_dim: int | None = None  # hidden width of the MLP; None = 4 * d_model (GELU) or ~8/3 d_model (SwiGLU)
    # --- the choices that distinguish families ---
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (GPT-2, tanh approximation) | "swiglu" (Llama)
    positions: str = "learned"  # "learned" (GPT-2) | "rope" (Llama) | "none"
    rope_theta: float = 10000.0
    bias: bool = True  # biases in linear layers and LayerNorm
    tie_embeddings: bool = True  # the LM head shares the token-embedding matrix
    dropout: float = 0.0
    sliding_window: int | None = None  # each token attends to at most this many most recent tokens
    init_std: float = 0.02
    # --- extension points (later chapters add their own fields, e.g. MLA, MoE, MTP, MoD) ---
    attention: str = "gqa"  # "gqa" covers MHA/GQA/MQA through n_kv_heads
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata (e.g. the source of imported weights)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                    "set head_dim explicitly or change one of them"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.d_model if self.mlp == "gelu" else _swiglu_width(self.d_model)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, field_name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig.{field_name}: {msg}")

        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "head_dim", "ffn_dim"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, name, f"must be a positive integer, got {value!r}")
        need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
             f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        need(self.norm in ("layernorm", "rmsnorm"), "norm", f"expected 'layernorm' or 'rmsnorm', got {self.norm!r}")
        need(self.mlp in ("gelu", "swiglu"), "mlp", f"expected 'gelu' or 'swiglu', got {self.mlp!r}")
        need(self.positions in ("learned", "rope", "none"), "positions",
             f"expected 'learned', 'rope' or 'none', got {self.positions!r}")
        need(self.attention == "gqa", "attention", f"unknown attention kind {self.attention!r}; expected 'gqa'")
        if self.positions == "rope":
            need(self.head_dim % 2 == 0, "head_dim", f"RoPE rotates pairs of dimensions, so head_dim must be even, got {self.head_dim}")
            need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        need(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        need(self.sliding_window is None or (isinstance(self.sliding_window, int) and self.sliding_window > 0),
             "sliding_window", f"must be None or a positive integer, got {self.sliding_window!r}")

    # --- JSON round trip ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no model config at {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save the model or fix the file") from None
        return cls.from_dict(data)

    # --- derived quantities (printed by `gator info`) ---
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def kv_cache_bytes_per_token(self, bytes_per_number: int = 2) -> int:
        """Bytes the KV cache needs per token of context: one K and one V vector per KV head per layer."""
        return 2 * self.n_layers * self.kv_dim * bytes_per_number

    def flops_per_token(self, n_matmul_params: int, training: bool = False) -> int:
        """FLOPs per token at full context (the PaLM appendix B convention).

        A matmul with N weights costs 2N FLOPs per token forward; attention scores and the weighted sum
        cost 2 * 2 * context * q_dim per layer. Backward costs twice the forward, so training is 3x.
        """
        attn = 4 * self.n_layers * self.context_length * self.q_dim
        if self.sliding_window:
            attn = 4 * self.n_layers * min(self.context_length, self.sliding_window) * self.q_dim
        forward = 2 * n_matmul_params + attn
        return 3 * forward if training else forward


def _swiglu_width(d_model: int, multiple_of: int = 32) -> int:
    """Llama's rule: 2/3 of 4*d_model (so SwiGLU's three matrices cost what GELU's two do), rounded up."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# ---------------------------------------------------------------------------------------------------
# Presets: one registry of named configs. Adding a model family is a new entry here.
# ---------------------------------------------------------------------------------------------------

def _gpt2(d_model: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    return dict(vocab_size=50257, context_length=1024, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                norm="layernorm", norm_eps=1e-5, mlp="gelu", positions="learned", bias=True, tie_embeddings=True)


def _llama(**kw: Any) -> dict[str, Any]:
    base = dict(norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", positions="rope", rope_theta=10000.0,
                bias=False, tie_embeddings=True)
    base.update(kw)
    return base


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": _gpt2(768, 12, 12),  # 124M
    "gpt2-medium": _gpt2(1024, 24, 16),  # 355M
    "gpt2-large": _gpt2(1280, 36, 20),  # 774M
    "gpt2-xl": _gpt2(1600, 48, 25),  # 1.5B
    # The seed model of the project: small enough to train on a laptop CPU, shaped like a modern LLM.
    "gatorgpt": _llama(vocab_size=50281, context_length=1024, d_model=384, n_layers=10, n_heads=8,
                       n_kv_heads=4, ffn_dim=768),
    # Karpathy's llama2.c "stories15M" shape (Llama 2 architecture, 32k SentencePiece vocabulary).
    "llama2c-15m": _llama(vocab_size=32000, context_length=256, d_model=288, n_layers=6, n_heads=6,
                          n_kv_heads=6, ffn_dim=768),
    # Tiny presets for tests and quick experiments.
    "tiny-gpt2": dict(_gpt2(64, 2, 4), vocab_size=512, context_length=128),
    "tiny-gatorgpt": _llama(vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4,
                            n_kv_heads=2, ffn_dim=128),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset as a ModelConfig, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})


def register_preset(name: str, **fields: Any) -> None:
    """Add a named preset (checked by building its config once)."""
    ModelConfig.from_dict(fields)
    PRESETS[name] = fields
