"""Hugging Face transformers interop: import GPT-2 and Llama-family checkpoints, export to them.

Weights move by name (a table per family, as litgpt does) plus two reshapes:
- Gator fuses Q, K, V into one `attn.qkv` matrix and SwiGLU's gate and up into `mlp.gate_up`;
  transformers keeps them separate (Llama) or fuses QKV the same way (GPT-2's `c_attn`).
- GPT-2's original code stores linear weights as (in, out) (`Conv1D`); torch's Linear stores (out, in).
RoPE needs no permutation: Gator uses the Hugging Face "rotate half" layout (see model/layers.py).

Export writes `config.json` and `model.safetensors` in the transformers layout, readable by
`AutoModelForCausalLM.from_pretrained` with no custom code and so servable by vLLM. A model with a
sliding window is exported as Mistral (Llama weights plus `sliding_window`). DeepSeek-style models
(MLA, DeepSeekMoE, MTP) map to DeepseekV3ForCausalLM; their tables live in interop/hf_deepseek.py.
Importing needs no transformers install for directories: it reads config.json and the safetensors
files directly.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from gator.config import ModelConfig
from gator.interop import hf_deepseek
from gator.model.transformer import Transformer, _atomic_write

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "generation_config.json")


# ---------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------

def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a transformers config dict (GPT-2, Llama, Mistral, Qwen2-without-bias...)."""
    model_type = hf.get("model_type")
    if model_type == "deepseek_v3":
        return hf_deepseek.config_from_hf(hf)
    if model_type == "gpt2":
        for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                        ("scale_attn_weights", True)):
            if hf.get(key, ok) != ok:
                raise ValueError(f"GPT-2 config sets {key}={hf[key]!r}, which Gator does not implement")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {hf['activation_function']!r} is not supported (expected gelu_new)")
        d = hf["n_embd"]
        return ModelConfig(vocab_size=hf["vocab_size"], context_length=hf["n_positions"], d_model=d,
                           n_layers=hf["n_layer"], n_heads=hf["n_head"], ffn_dim=hf.get("n_inner") or 4 * d,
                           norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu",
                           positions="learned", bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                           extra={"hf_model_type": "gpt2"})
    if model_type in ("llama", "mistral"):
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"activation {hf['hidden_act']!r} is not supported (Gator's SwiGLU uses silu)")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ValueError("attention_bias and mlp_bias differ; Gator has one `bias` switch for both")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"RoPE scaling {rope!r} is not supported yet; only plain RoPE imports")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        return ModelConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
                           d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                           n_heads=hf["num_attention_heads"],
                           n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                           head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                           ffn_dim=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
                           mlp="swiglu", positions="rope", rope_theta=float(theta),
                           bias=bool(hf.get("attention_bias", False)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                           sliding_window=hf.get("sliding_window") if model_type == "mistral" else None,
                           extra={"hf_model_type": model_type})
    raise ValueError(f"importing model_type {model_type!r} is not supported; supported: gpt2, llama, mistral, "
                     "deepseek_v3")


def hf_family(c: ModelConfig) -> str:
    if c.mod_layers:
        raise ValueError("Mixture-of-Depths (mod_layers) has no transformers equivalent; it cannot be exported")
    if c.attention == "mla" or c.moe_routed_experts or c.mtp_depth:
        return "deepseek_v3"  # see interop/hf_deepseek.py
    if c.norm == "layernorm" and c.mlp == "gelu" and c.positions == "learned" and c.sliding_window is None \
            and c.head_dim * c.n_heads == c.d_model and c.n_kv_heads == c.n_heads:
        return "gpt2"
    if c.norm == "rmsnorm" and c.mlp == "swiglu" and c.positions == "rope":
        return "mistral" if c.sliding_window is not None else "llama"
    raise ValueError("no transformers architecture matches this config: GPT-2 needs layernorm + gelu + learned "
                     "positions + MHA; Llama needs rmsnorm + swiglu + rope")


def config_to_hf(c: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    family = hf_family(c)
    if family == "deepseek_v3":
        return hf_deepseek.config_to_hf(c, dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_positions": c.context_length, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
                "n_inner": c.ffn_dim, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
                "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
                "bos_token_id": None, "eos_token_id": None, "dtype": dtype_name, "torch_dtype": dtype_name}
    cfg = {"architectures": ["MistralForCausalLM" if family == "mistral" else "LlamaForCausalLM"],
           "model_type": family, "vocab_size": c.vocab_size, "hidden_size": c.d_model,
           "intermediate_size": c.ffn_dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
           "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim, "hidden_act": "silu",
           "max_position_embeddings": c.context_length, "rms_norm_eps": c.norm_eps,
           "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
           "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": c.dropout,
           "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
           "bos_token_id": None, "eos_token_id": None, "dtype": dtype_name, "torch_dtype": dtype_name}
    if family == "mistral":
        cfg["sliding_window"] = c.sliding_window
    return cfg


# ---------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------

def state_from_hf(hf_state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """Gator state dict from a transformers state dict of the family `c` was imported from."""
    if hf_family(c) == "deepseek_v3":
        return hf_deepseek.state_from_hf(hf_state, c)
    s = {k.removeprefix("module."): v for k, v in hf_state.items()}

    def take(name: str) -> torch.Tensor:
        if name not in s:
            raise ValueError(f"the checkpoint has no tensor {name!r}; is it a complete {family} model?")
        return s[name]

    family = hf_family(c)
    out: dict[str, torch.Tensor] = {}
    if family == "gpt2":
        p = "transformer." if "transformer.wte.weight" in s else ""
        out["tok_emb.weight"], out["pos_emb.weight"] = take(p + "wte.weight"), take(p + "wpe.weight")
        for i in range(c.n_layers):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight")
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight").t().contiguous()  # Conv1D is (in, out)
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
        out["norm.weight"], out["norm.bias"] = take(p + "ln_f.weight"), take(p + "ln_f.bias")
    else:
        out["tok_emb.weight"] = take("model.embed_tokens.weight")
        for i in range(c.n_layers):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[b + "attn_norm.weight"] = take(h + "input_layernorm.weight")
            out[b + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
            suffixes = (".weight", ".bias") if c.bias else (".weight",)
            for sfx in suffixes:
                out[b + "attn.qkv" + sfx] = torch.cat([take(h + f"self_attn.{n}_proj" + sfx) for n in "qkv"])
                out[b + "attn.proj" + sfx] = take(h + "self_attn.o_proj" + sfx)
                out[b + "mlp.gate_up" + sfx] = torch.cat([take(h + f"mlp.{n}_proj" + sfx) for n in ("gate", "up")])
                out[b + "mlp.down" + sfx] = take(h + "mlp.down_proj" + sfx)
        out["norm.weight"] = take("model.norm.weight")
    if not c.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    return out


def state_to_hf(model: Transformer, in_memory: bool = False, lm_head: bool = True) -> dict[str, torch.Tensor]:
    """transformers state dict of `model`. in_memory: the names of transformers' modules rather than of
    its checkpoint files (they differ for DeepSeek's stacked experts). lm_head=False leaves the LM head
    out (a trunk under another head, e.g. the reward model's; see interop/hf_reward.py)."""
    c = model.config
    if hf_family(c) == "deepseek_v3":
        return hf_deepseek.state_to_hf(model, in_memory=in_memory)
    s = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if hf_family(c) == "gpt2":
        def zeros(n: int = c.d_model) -> torch.Tensor:  # a bias=False model exports zero biases, each its own
            return torch.zeros(n, dtype=s["tok_emb.weight"].dtype)

        out["transformer.wte.weight"], out["transformer.wpe.weight"] = s["tok_emb.weight"], s["pos_emb.weight"]
        for i in range(c.n_layers):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[h + theirs + ".weight"] = s[b + ours + ".weight"]
                out[h + theirs + ".bias"] = s[b + ours + ".bias"] if c.bias else zeros()
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                w = s[b + ours + ".weight"]
                out[h + theirs + ".weight"] = w.t().contiguous()
                out[h + theirs + ".bias"] = s[b + ours + ".bias"] if c.bias else zeros(w.shape[0])
        out["transformer.ln_f.weight"] = s["norm.weight"]
        out["transformer.ln_f.bias"] = s["norm.bias"] if c.bias else zeros()
    else:
        out["model.embed_tokens.weight"] = s["tok_emb.weight"]
        for i in range(c.n_layers):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[h + "input_layernorm.weight"] = s[b + "attn_norm.weight"]
            out[h + "post_attention_layernorm.weight"] = s[b + "mlp_norm.weight"]
            for sfx in ((".weight", ".bias") if c.bias else (".weight",)):
                q, k, v = s[b + "attn.qkv" + sfx].split([c.q_dim, c.kv_dim, c.kv_dim])
                out[h + "self_attn.q_proj" + sfx], out[h + "self_attn.k_proj" + sfx] = q, k
                out[h + "self_attn.v_proj" + sfx] = v
                out[h + "self_attn.o_proj" + sfx] = s[b + "attn.proj" + sfx]
                gate, up = s[b + "mlp.gate_up" + sfx].split(c.ffn_dim)
                out[h + "mlp.gate_proj" + sfx], out[h + "mlp.up_proj" + sfx] = gate, up
                out[h + "mlp.down_proj" + sfx] = s[b + "mlp.down" + sfx]
        out["model.norm.weight"] = s["norm.weight"]
    if not c.tie_embeddings and lm_head:
        out["lm_head.weight"] = s["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# the public API
# ---------------------------------------------------------------------------------------------------

def from_hf(source: Any, device: str | torch.device = "cpu") -> Transformer:
    """A Gator Transformer from a transformers model object, a local directory, or a hub repo id."""
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        config = config_from_hf(source.config.to_dict())
        state = source.state_dict()
    else:
        directory = _resolve_dir(source)
        config = config_from_hf(_read_json(directory / "config.json"))
        state = read_hf_weights(directory)
    if config.extra.get("hf_model_type") == "deepseek_v3":
        config = hf_deepseek.config_for_state(config, state)
    model = _build(config, state_from_hf(state, config))
    return model.to(device)


def to_hf(model: Transformer) -> Any:
    """The equivalent transformers model object (needs transformers installed)."""
    import transformers

    cfg = config_to_hf(model.config)
    arch = getattr(transformers, cfg["architectures"][0])
    hf_config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
    hf_model = arch(hf_config)
    missing, unexpected = hf_model.load_state_dict(state_to_hf(model, in_memory=True), strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()


def export_hf(model: Transformer, out_dir: str | Path, tokenizer: Any = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write a transformers-layout directory (config.json + model.safetensors [+ tokenizer])."""
    from safetensors.torch import save_file

    if getattr(model, "lora_config", None) is not None:
        raise ValueError("the model has LoRA adapters: export the base model and save the adapters with "
                         "gator.interop.peft.save_adapter (PEFT loads them), or merge them first "
                         "(gator.model.lora.remove_lora)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = state_to_hf(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    state = _own_storage(state)
    dtype = next(iter(state.values())).dtype
    _atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    cfg = config_to_hf(model.config, dtype)
    gen = generation_config(tokenizer) if tokenizer is not None else None
    if gen:
        cfg.update(bos_token_id=gen.get("bos_token_id"), eos_token_id=gen.get("eos_token_id"))
    _atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer.save_hf(out)
        _atomic_write(out / "generation_config.json", lambda p: Path(p).write_text(json.dumps(gen, indent=2) + "\n"))
    if model.config.head_dim < 32:
        warnings.warn(f"head_dim is {model.config.head_dim}: vLLM's CPU attention needs head_dim >= 32 (it stops "
                      "with 'Unsupported CPU attention configuration'); GPUs and transformers are fine", stacklevel=2)
    return out


def generation_config(tokenizer: Any) -> dict[str, Any]:
    """generation_config.json for a Gator tokenizer: the token ids only (bos, eos, pad), so that servers
    such as vLLM stop where Gator stops and keep their own sampling defaults. eos lists the chat template's
    end-of-turn marker (when the tokenizer has one) and <|endoftext|>."""
    from gator.tokenizer.chat import chat_stop_ids

    eot = tokenizer.special_ids.get("<|endoftext|>")
    eos = [*chat_stop_ids(tokenizer), *([eot] if eot is not None else [])]
    gen: dict[str, Any] = {}
    if eot is not None:
        gen.update(bos_token_id=eot, pad_token_id=eot)
    if eos:
        gen["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return gen


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor in a storage of its own (copied when an earlier one uses the same storage): safetensors
    refuses tensors that share memory, such as a weight tied to another or one tensor used twice."""
    seen: set[int] = set()
    out = {}
    for name, t in state.items():
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def import_hf(source: Any, out_dir: str | Path) -> Transformer:
    """Convert a transformers checkpoint into a Gator model directory (tokenizer files are copied)."""
    model = from_hf(source)
    model.save_pretrained(out_dir)
    if not (hasattr(source, "config") and hasattr(source, "state_dict")):
        src = _resolve_dir(source)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, Path(out_dir) / name)
    return model


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers checkpoint directory: one or sharded safetensors, else a .bin file
    loaded with weights_only=True (no arbitrary code from pickles)."""
    from gator.model.transformer import load_safetensors

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_safetensors(directory / shard))
        return state
    if (directory / "model.safetensors").is_file():
        return load_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _build(config: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    with torch.device("meta"):
        model = Transformer(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_checked_state_dict(state, source="transformers checkpoint")
    model.init_buffers()
    return model


def _resolve_dir(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source} is not a model directory (expected a folder with config.json)")
    try:  # a hub repo id such as "openai-community/gpt2"
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as err:
        raise FileNotFoundError(f"could not download {source!r} from the Hugging Face hub ({type(err).__name__}); "
                                "without network access, pass a local directory that holds config.json and "
                                "model.safetensors") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
