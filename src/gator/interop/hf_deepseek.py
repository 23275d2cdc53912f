"""DeepSeek-V3 interop with transformers (`DeepseekV3ForCausalLM`): configs and weight names.

`gator.interop.hf` dispatches here for MLA/MoE/MTP models; the public API stays from_hf/to_hf/export_hf/
import_hf. The mapping, one name per tensor (Gator <- transformers, layer i):

    attn.wq | attn.wq_a, attn.q_norm, attn.wq_b   <- self_attn.q_proj | q_a_proj, q_a_layernorm, q_b_proj
    attn.wkv_a, attn.kv_norm, attn.wkv_b, attn.wo <- self_attn.kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj
    mlp.gate_up, mlp.down (dense, shared)         <- [gate_proj; up_proj], down_proj
    mlp.router.weight, mlp.router.expert_bias     <- mlp.gate.weight, mlp.gate.e_score_correction_bias
    mlp.experts.gate_up (E, 2F, d), .down (E, d, F) <- mlp.experts.{j}.{gate,up,down}_proj (files; stacked)
                                                     or mlp.experts.gate_up_proj / down_proj (transformers' modules)
    mtp.k.{enorm, hnorm, proj, norm, block.*}     <- model.layers.{n_layers+k}.{enorm, hnorm, eh_proj,
                                                     shared_head.norm, <a decoder layer>} (DeepSeek-V3's layout)

RoPE layout: DeepSeek checkpoints rotate *adjacent* pairs of the RoPE dims (`rope_interleave=True`);
Gator pairs dim i with i + d/2. Rotating adjacent pairs and then reading the result as [evens; odds]
(which is what transformers computes) is the same as permuting the RoPE rows of the query and of the
shared key to [evens; odds] and rotating halves, and q.k is unchanged by a common permutation. So import
permutes those rows once, and export writes `rope_interleave: false`.

Config keys: one a config.json leaves out means what it means to transformers (HF_DEFAULTS, checked
against DeepseekV3Config() in the tests). YaRN's rope_parameters keys carry over one to one (model/layers.py
computes them as transformers does); what Gator cannot reproduce (partial_rotary_factor, factor < 1) is
refused. The latent norms' eps is transformers' fixed 1e-6 (ModelConfig.mla_norm_eps), not rms_norm_eps.
A model without MoE exports first_k_dense_replace past its last (MTP) layer, so every layer stays dense.

Files are written in the checkpoint layout transformers itself saves (one tensor per expert), which is
also what vLLM reads; the MTP layers follow the DeepSeek-V3 checkpoint (transformers' causal LM ignores
them, serving engines use them for speculative decoding).
"""

from __future__ import annotations

from typing import Any

import torch

from gator.config import ModelConfig

# What transformers' DeepseekV3Config assumes for each key that a config.json leaves out. Gator assumes
# the same, from this one table (tests/test_deepseek_interop.py checks it against DeepseekV3Config()).
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "num_hidden_layers": 61, "num_attention_heads": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02,
    "rope_theta": 10000.0, "rope_interleave": True,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
    "first_k_dense_replace": 3, "num_nextn_predict_layers": 1,
}

# transformers (like DeepSeek-V3's inference/model.py) builds q_a_layernorm and kv_a_layernorm with this
# eps, whatever rms_norm_eps says; Gator's ModelConfig.mla_norm_eps.
HF_MLA_NORM_EPS = 1e-6

# YaRN keys with the same name and meaning in transformers' rope_parameters and Gator's rope_scaling
# (model/layers.py); original_max_position_embeddings is Gator's original_context_length.
YARN_KEYS = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate")


def _get(hf: dict[str, Any], key: str) -> Any:
    return hf[key] if key in hf else HF_DEFAULTS[key]


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, Gator's rope_scaling) from the RoPE keys, resolved as transformers resolves them."""
    # transformers: a legacy `rope_scaling` wins over `rope_parameters`; keys inside the dict win over
    # top-level ones, except `original_max_position_embeddings`, where the top-level key wins.
    rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf.get("rope_theta", HF_DEFAULTS["rope_theta"])))
    if kind in ("default", None):
        return theta, None
    if kind != "yarn":
        raise ValueError(f"RoPE type {kind!r} is not supported; Gator implements plain RoPE and YaRN")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"rope_parameters.partial_rotary_factor={rope['partial_rotary_factor']} is not supported: "
                         "DeepseekV3 rotates all qk_rope_head_dim dimensions")
    context = _get(hf, "max_position_embeddings")
    original = hf.get("original_max_position_embeddings")
    if original is None:
        original = rope.get("original_max_position_embeddings") or context
    if float(original) != int(original):
        raise ValueError(f"original_max_position_embeddings must be a whole number of positions, got {original}")
    if rope.get("factor") is None:  # transformers refuses this config too
        raise ValueError("YaRN rope_parameters need a 'factor' (the context stretch, e.g. "
                         "max_position_embeddings / original_max_position_embeddings)")
    scaling = {"type": "yarn", "factor": rope["factor"], "original_context_length": int(original)}
    scaling.update({k: rope[k] for k in YARN_KEYS if rope.get(k) is not None})
    return theta, scaling


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a transformers DeepseekV3 config dict; a key it lacks means what it means to
    transformers (HF_DEFAULTS)."""
    if _get(hf, "hidden_act") != "silu":
        raise ValueError(f"activation {hf['hidden_act']!r} is not supported (DeepSeek's experts use silu)")
    if _get(hf, "attention_bias"):
        raise ValueError("attention_bias=True is not supported: Gator's MLA has no biases")
    # DeepSeek's own config.json keys, which transformers does not read (it always does what the default says)
    if hf.get("moe_layer_freq", 1) != 1:
        raise ValueError(f"moe_layer_freq={hf['moe_layer_freq']} is not supported (every layer past "
                         "first_k_dense_replace must be MoE)")
    if hf.get("scoring_func", "sigmoid") != "sigmoid":
        raise ValueError(f"DeepseekV3 scores experts with sigmoid, but the config says {hf['scoring_func']!r}")
    if str((hf.get("quantization_config") or {}).get("quant_method", "")) == "fp8":
        raise ValueError("FP8 checkpoints are not supported; dequantize to bf16 first (DeepSeek's fp8_cast_bf16.py)")
    theta, scaling = _rope_from_hf(hf)
    n_layers = _get(hf, "num_hidden_layers")
    mtp_depth = hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", HF_DEFAULTS["num_nextn_predict_layers"]))
    first_dense = _get(hf, "first_k_dense_replace") or 0
    # Layer i (main or MTP, i < n_layers + mtp_depth) is MoE when i >= first_k_dense_replace; with none
    # such, the expert fields are unused and the model has no MoE.
    moe = first_dense < n_layers + (mtp_depth or 0)
    experts = dict(
        moe_routed_experts=_get(hf, "n_routed_experts"), moe_shared_experts=_get(hf, "n_shared_experts"),
        moe_top_k=_get(hf, "num_experts_per_tok"), moe_ffn_dim=_get(hf, "moe_intermediate_size"),
        moe_scoring="sigmoid", moe_norm_top_k=bool(_get(hf, "norm_topk_prob")),
        moe_routed_scale=float(_get(hf, "routed_scaling_factor")),
        # null groups cannot run in transformers; DeepSeek's reference code reads them as no grouping
        moe_groups=_get(hf, "n_group") or 1, moe_top_groups=_get(hf, "topk_group") or 1,
        moe_dense_layers=min(first_dense, n_layers)) if moe else {}
    return ModelConfig(
        vocab_size=_get(hf, "vocab_size"), context_length=_get(hf, "max_position_embeddings"),
        d_model=_get(hf, "hidden_size"), n_layers=n_layers, n_heads=_get(hf, "num_attention_heads"),
        ffn_dim=_get(hf, "intermediate_size"), norm="rmsnorm", norm_eps=_get(hf, "rms_norm_eps"), mlp="swiglu",
        positions="rope", rope_theta=theta, bias=False, tie_embeddings=bool(_get(hf, "tie_word_embeddings")),
        attention="mla", q_lora_rank=_get(hf, "q_lora_rank"), kv_lora_rank=_get(hf, "kv_lora_rank"),
        qk_nope_head_dim=_get(hf, "qk_nope_head_dim"), qk_rope_head_dim=_get(hf, "qk_rope_head_dim"),
        v_head_dim=_get(hf, "v_head_dim"), mla_norm_eps=HF_MLA_NORM_EPS, rope_scaling=scaling, **experts,
        mtp_depth=mtp_depth or 0, init_std=_get(hf, "initializer_range"),
        extra={"hf_model_type": "deepseek_v3", "rope_interleave": bool(_get(hf, "rope_interleave"))})


def config_for_state(c: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """Drop the MTP modules from the config when the weights do not include them (transformers' model
    objects never do; checkpoints may)."""
    if c.mtp_depth and f"model.layers.{c.n_layers}.eh_proj.weight" not in state:
        return ModelConfig.from_dict({**c.to_dict(), "mtp_depth": 0})
    return c


def config_to_hf(c: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    problems = []
    if c.attention != "mla":
        problems.append("attention must be 'mla'")
    if (c.norm, c.mlp, c.positions, c.bias) != ("rmsnorm", "swiglu", "rope", False):
        problems.append("DeepseekV3 needs norm='rmsnorm', mlp='swiglu', positions='rope', bias=False")
    if c.moe_routed_experts and c.moe_scoring != "sigmoid":
        problems.append("DeepseekV3 scores experts with sigmoid (moe_scoring='softmax' is DeepSeek-V2's)")
    if c.moe_routed_experts and not c.moe_shared_experts:
        problems.append("DeepseekV3's MoE layers always have shared experts (moe_shared_experts >= 1)")
    if c.moe_routed_experts and c.moe_groups > 1 and c.moe_routed_experts // c.moe_groups < 2:
        problems.append("transformers scores a group by its best two experts; groups need >= 2 experts")
    if c.mod_layers:
        problems.append("Mixture-of-Depths has no transformers equivalent")
    if c.sliding_window is not None:
        problems.append("DeepseekV3 has no sliding window")
    if c.mla_norm_eps != HF_MLA_NORM_EPS:
        problems.append(f"transformers fixes the eps of q_a_layernorm/kv_a_layernorm at {HF_MLA_NORM_EPS} "
                        f"(mla_norm_eps is {c.mla_norm_eps})")
    if problems:
        raise ValueError("cannot export to DeepseekV3ForCausalLM: " + "; ".join(problems))
    dtype_name = str(dtype).removeprefix("torch.")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rs = c.rope_scaling
        rope = {"rope_type": "yarn", "rope_theta": c.rope_theta, "factor": rs["factor"],
                "original_max_position_embeddings": rs["original_context_length"],
                **{k: rs[k] for k in YARN_KEYS if rs.get(k) is not None}}
    moe = c.moe_routed_experts > 0
    # Without MoE, every layer (the MTP layers too) is below first_k_dense_replace, so dense; the expert
    # fields are then unused, and set to the smallest consistent values.
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "intermediate_size": c.ffn_dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_heads, "hidden_act": "silu",
        "max_position_embeddings": c.context_length, "rms_norm_eps": c.norm_eps, "rope_parameters": rope,
        "rope_interleave": False, "attention_bias": False, "attention_dropout": c.dropout,
        "q_lora_rank": c.q_lora_rank, "kv_lora_rank": c.kv_lora_rank, "qk_nope_head_dim": c.qk_nope_head_dim,
        "qk_rope_head_dim": c.qk_rope_head_dim, "v_head_dim": c.v_head_dim,
        "n_routed_experts": c.moe_routed_experts if moe else 1, "n_shared_experts": c.moe_shared_experts if moe else 1,
        "num_experts_per_tok": c.moe_top_k if moe else 1, "moe_intermediate_size": c.moe_ffn_dim if moe else 1,
        "n_group": c.moe_groups if moe else 1, "topk_group": c.moe_top_groups if moe else 1,
        "norm_topk_prob": c.moe_norm_top_k, "routed_scaling_factor": c.moe_routed_scale if moe else 1.0,
        "first_k_dense_replace": c.moe_dense_layers if moe else c.n_layers + c.mtp_depth,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "num_nextn_predict_layers": c.mtp_depth,
        "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
        "bos_token_id": None, "eos_token_id": None, "dtype": dtype_name, "torch_dtype": dtype_name,
    }


# ---------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------

_Q_FULL = (("wq", "q_proj"),)
_Q_LORA = (("wq_a", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("wq_b", "q_b_proj"))
_KV = (("wkv_a", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"), ("wkv_b", "kv_b_proj"), ("wo", "o_proj"))
_MTP = (("enorm", "enorm"), ("hnorm", "hnorm"), ("proj", "eh_proj"), ("norm", "shared_head.norm"))


def _interleaved_to_halves(w: torch.Tensor, rows_per_block: int, rope_rows: int) -> torch.Tensor:
    """Reorder the last `rope_rows` rows of each block of `rows_per_block` rows from adjacent pairs to
    [evens; odds]."""
    perm = torch.cat([torch.arange(0, rope_rows, 2), torch.arange(1, rope_rows, 2)]) + rows_per_block - rope_rows
    blocks = w.view(-1, rows_per_block, *w.shape[1:])
    return torch.cat([blocks[:, :rows_per_block - rope_rows], blocks[:, perm]], dim=1).reshape(w.shape)


def _layer_from_hf(take, h: str, b: str, c: ModelConfig, moe: bool, interleave: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    out[b + "attn_norm.weight"] = take(h + "input_layernorm.weight")
    out[b + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
    for ours, theirs in (_Q_FULL if c.q_lora_rank is None else _Q_LORA) + _KV:
        w = take(h + f"self_attn.{theirs}.weight")
        if interleave and ours in ("wq", "wq_b"):
            w = _interleaved_to_halves(w, c.qk_nope_head_dim + c.qk_rope_head_dim, c.qk_rope_head_dim)
        elif interleave and ours == "wkv_a":
            w = _interleaved_to_halves(w, c.kv_lora_rank + c.qk_rope_head_dim, c.qk_rope_head_dim)
        out[b + f"attn.{ours}.weight"] = w
    if not moe:
        out[b + "mlp.gate_up.weight"] = torch.cat([take(h + "mlp.gate_proj.weight"), take(h + "mlp.up_proj.weight")])
        out[b + "mlp.down.weight"] = take(h + "mlp.down_proj.weight")
        return out
    out[b + "mlp.router.weight"] = take(h + "mlp.gate.weight")
    out[b + "mlp.router.expert_bias"] = take(h + "mlp.gate.e_score_correction_bias")
    if take.has(h + "mlp.experts.gate_up_proj"):  # transformers' in-memory layout: already stacked
        out[b + "mlp.experts.gate_up"] = take(h + "mlp.experts.gate_up_proj")
        out[b + "mlp.experts.down"] = take(h + "mlp.experts.down_proj")
    else:
        e = h + "mlp.experts."
        out[b + "mlp.experts.gate_up"] = torch.stack([
            torch.cat([take(f"{e}{j}.gate_proj.weight"), take(f"{e}{j}.up_proj.weight")])
            for j in range(c.moe_routed_experts)])
        out[b + "mlp.experts.down"] = torch.stack([take(f"{e}{j}.down_proj.weight")
                                                    for j in range(c.moe_routed_experts)])
    s = h + "mlp.shared_experts."
    out[b + "mlp.shared.gate_up.weight"] = torch.cat([take(s + "gate_proj.weight"), take(s + "up_proj.weight")])
    out[b + "mlp.shared.down.weight"] = take(s + "down_proj.weight")
    return out


class _Taker:
    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.state:
            raise ValueError(f"the checkpoint has no tensor {name!r}; is it a complete DeepseekV3 model?")
        return self.state[name]

    def has(self, name: str) -> bool:
        return name in self.state


def state_from_hf(hf_state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """Gator state dict from a DeepseekV3 state dict (a checkpoint's or a transformers model's)."""
    take = _Taker({k.removeprefix("module."): v for k, v in hf_state.items()})
    interleave = bool(c.extra.get("rope_interleave", False))
    out = {"tok_emb.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    for i in range(c.n_layers):
        out.update(_layer_from_hf(take, f"model.layers.{i}.", f"blocks.{i}.", c, c.is_moe_layer(i), interleave))
    for k in range(c.mtp_depth):
        h, b = f"model.layers.{c.n_layers + k}.", f"mtp.{k}."
        for ours, theirs in _MTP:
            out[b + ours + ".weight"] = take(h + theirs + ".weight")
        out.update(_layer_from_hf(take, h, b + "block.", c, c.moe_routed_experts > 0, interleave))
    if not c.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    return out


def _layer_to_hf(s: dict[str, torch.Tensor], b: str, h: str, c: ModelConfig, moe: bool,
                 stacked: bool) -> dict[str, torch.Tensor]:
    out = {h + "input_layernorm.weight": s[b + "attn_norm.weight"],
           h + "post_attention_layernorm.weight": s[b + "mlp_norm.weight"]}
    for ours, theirs in (_Q_FULL if c.q_lora_rank is None else _Q_LORA) + _KV:
        out[h + f"self_attn.{theirs}.weight"] = s[b + f"attn.{ours}.weight"]
    if not moe:
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = s[b + "mlp.gate_up.weight"].split(c.ffn_dim)
        out[h + "mlp.down_proj.weight"] = s[b + "mlp.down.weight"]
        return out
    out[h + "mlp.gate.weight"] = s[b + "mlp.router.weight"]
    out[h + "mlp.gate.e_score_correction_bias"] = s[b + "mlp.router.expert_bias"].float()
    gate_up, down = s[b + "mlp.experts.gate_up"], s[b + "mlp.experts.down"]  # (E, 2F, d), (E, d, F)
    if stacked:
        out[h + "mlp.experts.gate_up_proj"], out[h + "mlp.experts.down_proj"] = gate_up, down
    else:
        for j in range(c.moe_routed_experts):
            e = f"{h}mlp.experts.{j}."
            out[e + "gate_proj.weight"], out[e + "up_proj.weight"] = gate_up[j].split(c.moe_ffn_dim)
            out[e + "down_proj.weight"] = down[j]
    sg, su = s[b + "mlp.shared.gate_up.weight"].split(c.moe_shared_experts * c.moe_ffn_dim)
    out[h + "mlp.shared_experts.gate_proj.weight"], out[h + "mlp.shared_experts.up_proj.weight"] = sg, su
    out[h + "mlp.shared_experts.down_proj.weight"] = s[b + "mlp.shared.down.weight"]
    return out


def state_to_hf(model: torch.nn.Module, in_memory: bool = False) -> dict[str, torch.Tensor]:
    """DeepseekV3 state dict: the checkpoint layout (per-expert tensors, MTP layers) for files, or the
    layout of transformers' modules (stacked experts, no MTP) with in_memory=True."""
    c = model.config
    config_to_hf(c)  # raises, naming the reasons, when the model has no DeepseekV3 equivalent
    s = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": s["tok_emb.weight"], "model.norm.weight": s["norm.weight"]}
    for i in range(c.n_layers):
        out.update(_layer_to_hf(s, f"blocks.{i}.", f"model.layers.{i}.", c, c.is_moe_layer(i), in_memory))
    if not in_memory:
        for k in range(c.mtp_depth):
            h, b = f"model.layers.{c.n_layers + k}.", f"mtp.{k}."
            for ours, theirs in _MTP:
                out[h + theirs + ".weight"] = s[b + ours + ".weight"]
            out.update(_layer_to_hf(s, b + "block.", h, c, c.moe_routed_experts > 0, False))
            # DeepSeek-V3's checkpoint repeats the shared embedding and head inside each MTP layer.
            out[h + "embed_tokens.weight"] = s["tok_emb.weight"]  # export_hf copies shared storage for the file
            out[h + "shared_head.head.weight"] = s.get("lm_head.weight", s["tok_emb.weight"])
    out["lm_head.weight"] = s["lm_head.weight"] if "lm_head.weight" in s else s["tok_emb.weight"]
    return {k: v.contiguous() for k, v in out.items()}
