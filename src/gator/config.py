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
    attention: str = "gqa"  # "gqa" covers MHA/GQA/MQA through n_kv_heads; "mla" is DeepSeek's latent attention
    # --- multi-head latent attention (DeepSeek-V2/V3; model/mla.py), used when attention == "mla" ---
    q_lora_rank: int | None = None  # queries pass a low-rank bottleneck this wide (None: one full projection)
    kv_lora_rank: int = 0  # keys and values are compressed into a latent this wide: what the KV cache stores
    qk_nope_head_dim: int = 0  # per-head query/key dims that carry no position
    qk_rope_head_dim: int = 0  # RoPE dims: a rotated query part per head, ONE rotated key part shared by all heads
    v_head_dim: int = 0  # per-head value dims
    mla_norm_eps: float = 1e-6  # eps of the latent norms (q_norm, kv_norm); DeepSeek fixes it at 1e-6
    rope_scaling: dict[str, Any] | None = None  # YaRN (MLA only): {"type": "yarn", "factor": 40, ...}, see layers.py
    # --- DeepSeekMoE (model/moe.py): layers >= moe_dense_layers replace the MLP by shared + routed experts ---
    moe_routed_experts: int = 0  # 0 = no MoE
    moe_shared_experts: int = 0  # always-on experts
    moe_top_k: int = 0  # routed experts per token
    moe_ffn_dim: int = 0  # hidden width of each (fine-grained) expert
    moe_scoring: str = "sigmoid"  # "sigmoid" (V3: normalised over the chosen experts) | "softmax" (V2)
    moe_norm_top_k: bool = True  # divide the chosen experts' scores by their sum
    moe_routed_scale: float = 1.0  # the routed scaling factor applied to the routed experts' weights
    moe_groups: int = 1  # group-limited routing: experts split into this many groups...
    moe_top_groups: int = 1  # ...and each token picks its experts from its best this-many groups
    moe_dense_layers: int = 0  # the first k layers keep a dense MLP
    moe_bias_update: float = 0.001  # gamma of auxiliary-loss-free balancing (0 = off)
    moe_balance_loss: float = 0.0  # alpha of the sequence-wise balance loss (0 = off)
    # --- multi-token prediction (DeepSeek-V3; model/mtp.py) ---
    mtp_depth: int = 0  # D sequential MTP modules, module k predicts token i + 1 + k
    mtp_loss_weight: float = 0.3  # lambda: loss = main + lambda * mean over the D MTP losses
    # --- Mixture-of-Depths (Raposo et al., 2024; model/depth.py) ---
    mod_layers: list[int] = field(default_factory=list)  # block indices that route tokens (empty = off)
    mod_capacity: float = 0.125  # fraction of each sequence's tokens those blocks process in training
    mod_decode: str = "threshold"  # causal rule at inference: "threshold" (router > 0) | "predictor" (small MLP)
    mod_aux_loss: float = 0.1  # weight of the BCE loss that teaches the causal rule the top-k choice
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata (e.g. the source of imported weights)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and self.attention == "mla":
            self.head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim  # the query/key width of one head
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
        need(self.attention in ("gqa", "mla"), "attention",
             f"unknown attention kind {self.attention!r}; expected 'gqa' or 'mla'")
        if self.positions == "rope" and self.attention == "gqa":
            need(self.head_dim % 2 == 0, "head_dim",
                 f"RoPE rotates pairs of dimensions, so head_dim must be even, got {self.head_dim}")
            need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        need(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        need(self.sliding_window is None or (isinstance(self.sliding_window, int) and self.sliding_window > 0),
             "sliding_window", f"must be None or a positive integer, got {self.sliding_window!r}")
        self._validate_deepseek(need)

    def _validate_deepseek(self, need) -> None:
        """The MLA, MoE, MTP and Mixture-of-Depths fields (each error names its field)."""
        need(self.rope_scaling is None or self.attention == "mla", "rope_scaling",
             "YaRN scaling is implemented for attention='mla' (DeepSeek's definition); set it to None")
        if self.attention == "mla":
            need(self.positions == "rope", "positions", f"MLA's decoupled key is a RoPE key; got {self.positions!r}")
            for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
                value = getattr(self, name)
                need(isinstance(value, int) and value > 0, name,
                     f"must be a positive integer with attention='mla', got {value!r}")
            need(isinstance(self.qk_nope_head_dim, int) and self.qk_nope_head_dim >= 0, "qk_nope_head_dim",
                 f"must be a non-negative integer, got {self.qk_nope_head_dim!r}")
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
                 f"RoPE rotates pairs of dimensions, so it must be even, got {self.qk_rope_head_dim}")
            need(self.q_lora_rank is None or (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0),
                 "q_lora_rank", f"must be None or a positive integer, got {self.q_lora_rank!r}")
            need(self.mla_norm_eps > 0, "mla_norm_eps", f"must be positive, got {self.mla_norm_eps}")
            need(self.head_dim == self.qk_nope_head_dim + self.qk_rope_head_dim, "head_dim",
                 f"with MLA it is qk_nope_head_dim + qk_rope_head_dim = "
                 f"{self.qk_nope_head_dim + self.qk_rope_head_dim}, got {self.head_dim}; leave it None")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            need(isinstance(rs, dict) and rs.get("type") == "yarn", "rope_scaling",
                 f"expected a dict with type 'yarn', got {rs!r}")
            unknown = sorted(set(rs) - {"type", "factor", "original_context_length", "beta_fast", "beta_slow",
                                        "mscale", "mscale_all_dim", "attention_factor", "truncate"})
            need(not unknown, "rope_scaling", f"unknown YaRN keys {unknown}")
            for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
                need(rs.get(key) is None or isinstance(rs[key], (int, float)), "rope_scaling",
                     f"{key!r} must be a number or None, got {rs.get(key)!r}")
            need(rs.get("attention_factor") is None or (isinstance(rs["attention_factor"], (int, float))
                                                        and rs["attention_factor"] > 0), "rope_scaling",
                 f"'attention_factor' must be a positive number or None, got {rs.get('attention_factor')!r}")
            need(isinstance(rs.get("truncate", True), bool), "rope_scaling",
                 f"'truncate' must be true or false, got {rs.get('truncate')!r}")
            need(isinstance(rs.get("factor"), (int, float)) and rs["factor"] >= 1, "rope_scaling",
                 f"'factor' must be a number >= 1, got {rs.get('factor')!r}")
            need(isinstance(rs.get("original_context_length"), int) and rs["original_context_length"] > 0,
                 "rope_scaling", "'original_context_length' (the pretraining context) must be a positive integer")
        if self.moe_routed_experts:
            E = self.moe_routed_experts
            need(isinstance(E, int) and E > 0, "moe_routed_experts", f"must be a non-negative integer, got {E!r}")
            need(isinstance(self.moe_top_k, int) and 0 < self.moe_top_k <= E, "moe_top_k",
                 f"must be between 1 and moe_routed_experts ({E}), got {self.moe_top_k!r}")
            need(isinstance(self.moe_ffn_dim, int) and self.moe_ffn_dim > 0, "moe_ffn_dim",
                 f"each expert needs a positive hidden width, got {self.moe_ffn_dim!r}")
            need(isinstance(self.moe_shared_experts, int) and self.moe_shared_experts >= 0, "moe_shared_experts",
                 f"must be a non-negative integer, got {self.moe_shared_experts!r}")
            need(self.moe_scoring in ("sigmoid", "softmax"), "moe_scoring",
                 f"expected 'sigmoid' (DeepSeek-V3) or 'softmax' (DeepSeek-V2), got {self.moe_scoring!r}")
            need(isinstance(self.moe_groups, int) and self.moe_groups > 0 and E % self.moe_groups == 0, "moe_groups",
                 f"must divide moe_routed_experts ({E}), got {self.moe_groups!r}")
            need(isinstance(self.moe_top_groups, int) and 0 < self.moe_top_groups <= self.moe_groups,
                 "moe_top_groups", f"must be between 1 and moe_groups ({self.moe_groups}), got {self.moe_top_groups!r}")
            per_group = E // self.moe_groups
            need(self.moe_top_k <= self.moe_top_groups * per_group, "moe_top_k",
                 f"{self.moe_top_k} experts cannot be chosen from {self.moe_top_groups} group(s) of {per_group}")
            need(self.moe_groups == 1 or self.moe_scoring == "softmax" or per_group >= 2, "moe_groups",
                 "sigmoid group scores sum each group's best two experts, so groups need at least 2 experts")
            need(isinstance(self.moe_dense_layers, int) and 0 <= self.moe_dense_layers <= self.n_layers,
                 "moe_dense_layers", f"must be between 0 and n_layers ({self.n_layers}), got {self.moe_dense_layers!r}")
            need(self.moe_routed_scale > 0, "moe_routed_scale", f"must be positive, got {self.moe_routed_scale}")
            need(self.moe_bias_update >= 0, "moe_bias_update", f"must be >= 0 (0 = off), got {self.moe_bias_update}")
            need(self.moe_balance_loss >= 0, "moe_balance_loss", f"must be >= 0 (0 = off), got {self.moe_balance_loss}")
        need(isinstance(self.mtp_depth, int) and self.mtp_depth >= 0, "mtp_depth",
             f"must be a non-negative integer, got {self.mtp_depth!r}")
        need(self.mtp_loss_weight >= 0, "mtp_loss_weight", f"must be >= 0, got {self.mtp_loss_weight}")
        need(isinstance(self.mod_layers, list) and all(isinstance(i, int) and 0 <= i < self.n_layers
                                                       for i in self.mod_layers)
             and len(set(self.mod_layers)) == len(self.mod_layers), "mod_layers",
             f"must be a list of distinct block indices in [0, {self.n_layers}), got {self.mod_layers!r}")
        need(0.0 < self.mod_capacity <= 1.0, "mod_capacity", f"must be in (0, 1], got {self.mod_capacity}")
        need(self.mod_decode in ("threshold", "predictor"), "mod_decode",
             f"expected 'threshold' or 'predictor', got {self.mod_decode!r}")
        need(self.mod_aux_loss >= 0, "mod_aux_loss", f"must be >= 0, got {self.mod_aux_loss}")

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

    @property
    def rope_dim(self) -> int:
        """Dimensions RoPE rotates: the whole head, or MLA's decoupled RoPE part."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.moe_routed_experts > 0 and layer_idx >= self.moe_dense_layers

    def kv_cache_bytes_per_token(self, bytes_per_number: int = 2) -> int:
        """Bytes the KV cache needs per token of context.

        MHA/GQA: one K and one V vector per KV head per layer. MLA: one latent (kv_lora_rank) and one shared
        RoPE key (qk_rope_head_dim) per layer, whatever the number of heads.
        """
        if self.attention == "mla":
            return self.n_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * bytes_per_number
        return 2 * self.n_layers * self.kv_dim * bytes_per_number

    def kv_cache_bytes_per_token_mha(self, bytes_per_number: int = 2) -> int:
        """What the cache would need with plain multi-head attention of the same heads (K and V per head)."""
        if self.attention == "mla":
            return self.n_layers * self.n_heads * (self.head_dim + self.v_head_dim) * bytes_per_number
        return 2 * self.n_layers * self.n_heads * self.head_dim * bytes_per_number

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


def _deepseek(**kw: Any) -> dict[str, Any]:
    """DeepSeek-style: RMSNorm, SwiGLU, RoPE, MLA, DeepSeekMoE, untied embeddings, no biases."""
    base = dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", positions="rope", rope_theta=10000.0, bias=False,
                tie_embeddings=False, attention="mla")
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
    # DeepSeek-V3's design at toy size (tests, demo): MLA with a query bottleneck, one dense layer then
    # DeepSeekMoE (sigmoid routing, group-limited, aux-loss-free bias), one MTP module.
    "deepseek-tiny": _deepseek(vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4, ffn_dim=128,
                               q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                               v_head_dim=16, moe_routed_experts=8, moe_shared_experts=1, moe_top_k=2,
                               moe_ffn_dim=32, moe_groups=4, moe_top_groups=2, moe_dense_layers=1,
                               moe_balance_loss=0.0001, mtp_depth=1),
    # DeepSeek-V2-Lite as published (15.7B parameters, 2.4B active): MLA without query compression,
    # 2 shared + 64 routed experts (6 per token, softmax scores), first layer dense, YaRN to 160K context.
    "deepseek-v2-lite": _deepseek(vocab_size=102400, context_length=163840, d_model=2048, n_layers=27, n_heads=16,
                                  ffn_dim=10944, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                                  qk_rope_head_dim=64, v_head_dim=128,
                                  rope_scaling=dict(type="yarn", factor=40, original_context_length=4096,
                                                    beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707),
                                  moe_routed_experts=64, moe_shared_experts=2, moe_top_k=6, moe_ffn_dim=1408,
                                  moe_scoring="softmax", moe_norm_top_k=False, moe_dense_layers=1,
                                  moe_bias_update=0.0, moe_balance_loss=0.001),
    # The same shape scaled down to train on a CPU (GatorGPT's vocabulary and context, no YaRN).
    "deepseek-v2-lite-mini": _deepseek(vocab_size=50281, context_length=1024, d_model=256, n_layers=6, n_heads=8,
                                       ffn_dim=1376, q_lora_rank=None, kv_lora_rank=128, qk_nope_head_dim=32,
                                       qk_rope_head_dim=16, v_head_dim=32, moe_routed_experts=64,
                                       moe_shared_experts=2, moe_top_k=6, moe_ffn_dim=128, moe_scoring="softmax",
                                       moe_norm_top_k=False, moe_dense_layers=1, moe_bias_update=0.0,
                                       moe_balance_loss=0.001),
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
