"""GGUF export: one file that llama.cpp (and the tools built on it: llama-cpp-python, Ollama, LM Studio) loads.

GGUF (llama.cpp's "GPT-Generated Unified Format") holds three things in one file: key/value metadata
(the architecture's hyperparameters), the tokenizer (tokens, merges, special ids), and the tensors under
llama.cpp's names, each stored as F32, F16, BF16 or a block-quantized type such as Q8_0 (blocks of 32
weights sharing one fp16 scale, the weights as int8). The file is written with the `gguf` package, the
reference writer that ships with llama.cpp.

Weights go through the transformers mapping first (`interop.hf.state_to_hf`), then get llama.cpp's names,
as llama.cpp's own converter does from a transformers directory. Two families map onto llama.cpp
architectures:

- Llama-style (GatorGPT, imported Llama/Mistral): architecture "llama". Gator, like transformers,
  applies RoPE in the "rotate half" layout: dimension i of a head pairs with i + head_dim/2. llama.cpp's
  llama architecture rotates *adjacent* pairs (2i, 2i+1), the layout of Meta's original checkpoints.
  So the rows of W_q and W_k are permuted within each head, [0, h, 1, h+1, ...] with h = head_dim/2
  (`permute_rotary`); since q.k is a sum over dimensions, permuting q and k the same way changes no score.
- GPT-2-style: architecture "gpt2" (learned positions, LayerNorm, GELU, fused QKV).

The tokenizer is Gator's byte-level BPE: `tokenizer.ggml.model` "gpt2", the tokens in GPT-2's printable
byte form, the merges, special tokens typed CONTROL (so llama.cpp never makes them out of ordinary text
unless asked to parse specials), and `tokenizer.ggml.pre`, the name under which llama.cpp implements
the pre-tokenizer regex (llama.cpp hard-codes a few regexes by name rather than reading one from the file).

Anything llama.cpp would run differently is refused with the reason: MLA/MoE models (exported to
transformers instead), Mixture-of-Depths, multi-token-prediction heads (unless dropped on purpose), a
sliding window shorter than the context, a tokenizer regex llama.cpp has no name for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gator.config import ModelConfig
from gator.errors import GatorError
from gator.interop.hf import state_to_hf
from gator.model.transformer import Transformer
from gator.tokenizer.formats import to_printable
from gator.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN

TYPES = ("f32", "f16", "bf16", "q8_0")

# The pre-tokenizer regexes Gator knows, by the name llama.cpp gives its own implementation of each
# (llama-vocab.cpp: "gpt-2"; "llama-bpe" is Llama 3's regex, which is tiktoken's cl100k; "gpt-4o" is o200k).
PRE_TOKENIZER_NAMES = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "llama-bpe", O200K_PATTERN: "gpt-4o"}

# transformers name -> llama.cpp name, per architecture ("{i}" is the layer). Tensors llama.cpp names
# `blk.N.*` live in each block; the rest are global.
LLAMA_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj": "blk.{i}.attn_q",
    "model.layers.{i}.self_attn.k_proj": "blk.{i}.attn_k",
    "model.layers.{i}.self_attn.v_proj": "blk.{i}.attn_v",
    "model.layers.{i}.self_attn.o_proj": "blk.{i}.attn_output",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj": "blk.{i}.ffn_gate",
    "model.layers.{i}.mlp.up_proj": "blk.{i}.ffn_up",
    "model.layers.{i}.mlp.down_proj": "blk.{i}.ffn_down",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GPT2_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.h.{i}.ln_1": "blk.{i}.attn_norm",
    "transformer.h.{i}.attn.c_attn": "blk.{i}.attn_qkv",
    "transformer.h.{i}.attn.c_proj": "blk.{i}.attn_output",
    "transformer.h.{i}.ln_2": "blk.{i}.ffn_norm",
    "transformer.h.{i}.mlp.c_fc": "blk.{i}.ffn_up",
    "transformer.h.{i}.mlp.c_proj": "blk.{i}.ffn_down",
    "transformer.ln_f": "output_norm",
    "lm_head.weight": "output.weight",
}
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gguf_architecture(c: ModelConfig, drop_mtp: bool = False) -> str:
    """"llama" or "gpt2": the llama.cpp architecture that runs this config exactly, or ValueError saying
    what llama.cpp could not run."""
    if c.mod_layers:
        raise ValueError(f"Mixture-of-Depths routes tokens around blocks {c.mod_layers}; llama.cpp runs every "
                         "block on every token, so the exported model would compute something else")
    if c.attention == "mla" or c.moe_routed_experts:
        kind = "multi-head latent attention" if c.attention == "mla" else "mixture-of-experts layers"
        raise ValueError(f"this model has {kind} (DeepSeek-style), which gator's GGUF export does not write; "
                         "export it with `gator export hf` and serve it with vLLM")
    if c.mtp_depth and not drop_mtp:
        raise ValueError(f"this model has {c.mtp_depth} multi-token-prediction module(s), which llama.cpp cannot "
                         "run; pass drop_mtp=True (--drop-mtp) to export the next-token model without them "
                         "(its outputs are unchanged; only MTP's extra predictions are lost)")
    if c.sliding_window is not None and c.sliding_window < c.context_length:
        raise ValueError(f"llama.cpp's llama architecture has no sliding window: tokens would attend beyond the "
                         f"model's window of {c.sliding_window} (context {c.context_length}); set context_length "
                         f"<= {c.sliding_window} in config.json to export a model that behaves the same")
    if c.norm == "rmsnorm" and c.mlp == "swiglu" and c.positions == "rope":
        return "llama"
    if c.norm == "layernorm" and c.mlp == "gelu" and c.positions == "learned" and c.n_kv_heads == c.n_heads \
            and c.head_dim * c.n_heads == c.d_model:
        return "gpt2"
    raise ValueError(f"no llama.cpp architecture matches norm={c.norm}, mlp={c.mlp}, positions={c.positions}: "
                     "'llama' needs rmsnorm + swiglu + rope; 'gpt2' needs layernorm + gelu + learned positions + MHA")


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Q or K projection (weight (n_heads*hd, d) or bias (n_heads*hd,)) from the rotate-half
    layout (pairs i, i+hd/2) to the interleaved layout (pairs 2i, 2i+1) llama.cpp's llama arch rotates."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_state(model: Transformer, drop_mtp: bool = False) -> dict[str, torch.Tensor]:
    """{llama.cpp tensor name: float32 tensor}, in the order of the transformers state dict. Shapes are
    torch's (out, in); GGUF lists dimensions innermost first, so the file shows them as (in, out)."""
    c = model.config
    arch = gguf_architecture(c, drop_mtp)
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("the model has LoRA adapters, which the GGUF export would leave out; merge them into the "
                         "weights first (gator.model.lora.remove_lora(model, merge=True))")
    table = LLAMA_NAMES if arch == "llama" else GPT2_NAMES
    if c.mtp_depth:  # the next-token model alone: the same weights, without the MTP modules
        model = _without_mtp(model)
    hf = state_to_hf(model)
    if c.tie_embeddings:
        hf.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when `output` is absent
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf.items():
        tensor = tensor.detach().float()
        if arch == "gpt2" and name.endswith(GPT2_CONV1D):
            tensor = tensor.t()  # transformers' GPT-2 Conv1D is (in, out); ggml wants Linear's (out, in)
        if arch == "llama" and ".self_attn.q_proj." in name:
            tensor = permute_rotary(tensor, c.n_heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            tensor = permute_rotary(tensor, c.n_kv_heads)
        out[_gguf_name(name, table)] = tensor.contiguous()
    return out


def _without_mtp(model: Transformer) -> Transformer:
    with torch.device("meta"):
        base = Transformer(dataclasses.replace(model.config, mtp_depth=0))
    base.load_checked_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    base.init_buffers()
    return base


def _gguf_name(hf_name: str, table: dict[str, str]) -> str:
    parts = hf_name.split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    generic = hf_name.replace(f".{layer}.", ".{i}.", 1) if layer is not None else hf_name
    for theirs, ours in table.items():
        if generic == theirs or generic.startswith(theirs + "."):
            return (ours + generic[len(theirs):]).replace("{i}", str(layer))
    raise ValueError(f"no llama.cpp name for tensor {hf_name!r}; the GGUF mapping is incomplete")


# ---------------------------------------------------------------------------------------------------
# tensor types
# ---------------------------------------------------------------------------------------------------

def encode_tensor(name: str, tensor: torch.Tensor, kind: str) -> tuple[np.ndarray, Any]:
    """(array, GGMLQuantizationType) for one tensor stored as `kind`. Vectors (norms, biases) and the
    learned position table stay F32, as llama.cpp's converter keeps them; Q8_0 needs rows that are a
    multiple of its block of 32 and keeps other matrices F32."""
    import gguf

    q = gguf.GGMLQuantizationType
    x = tensor.float().cpu()
    if x.dim() == 1 or name.startswith("position_embd") or kind == "f32":
        return x.numpy(), q.F32
    if kind == "f16":
        return x.to(torch.float16).numpy(), q.F16
    if kind == "bf16":  # raw bytes; the writer turns the byte shape back into the element shape
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8), q.BF16
    if kind == "q8_0":
        block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
        if x.shape[-1] % block:
            return x.numpy(), q.F32
        return gguf.quants.quantize(x.numpy(), q.Q8_0), q.Q8_0
    raise ValueError(f"unknown GGUF type {kind!r}; choose one of {', '.join(TYPES)}")


# ---------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------

def pre_tokenizer_name(pattern: str) -> str:
    """llama.cpp's name for a pre-tokenizer regex, or ValueError when llama.cpp has no implementation."""
    if pattern in PRE_TOKENIZER_NAMES:
        return PRE_TOKENIZER_NAMES[pattern]
    raise ValueError(f"llama.cpp has no pre-tokenizer for the regex {pattern!r}: it implements a fixed set by "
                     "name and cannot read a regex from the file, so text would be split differently and "
                     "encode to other ids; retrain the tokenizer with pattern gpt2, gpt4 or o200k")


def tokenizer_metadata(tok: Any, vocab_size: int) -> dict[str, Any]:
    """The `tokenizer.ggml.*` values for a Gator Tokenizer in a model with `vocab_size` embedding rows:
    tokens (GPT-2 printable form; specials as text), token types, merges, pre-tokenizer and special ids.
    Ids the tokenizer does not use (embedding rows beyond it, or gaps) become unused "[PAD<id>]" tokens."""
    import gguf

    pre = pre_tokenizer_name(tok.pattern)
    if max(tok.vocab) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(tok.vocab)} but the model only {vocab_size} embedding "
                         "rows; this tokenizer does not belong to this model")
    special = {i: s for s, i in tok.special_ids.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(gguf.TokenType.CONTROL)
        elif i in tok.vocab:
            tokens.append(to_printable(tok.vocab[i]))
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    meta: dict[str, Any] = {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": [int(t) for t in types],
                            "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in tok.merges],
                            "add_bos_token": False, "add_eos_token": False}
    eos = tok.special_ids.get("<|endoftext|>")
    if eos is not None:  # Gator's document separator: the end of a generation, and the start marker too
        meta.update(bos_token_id=eos, eos_token_id=eos)
    template = getattr(tok, "chat_template", None)
    if template is not None:  # the end-of-turn marker: llama.cpp stops a chat reply there
        meta.update(eot_token_id=tok.special_ids[template.end], chat_template=chatml_jinja(template))
    return meta


def chatml_jinja(template: Any) -> str:
    """Gator's ChatML template (tokenizer/chat.py) as the Jinja llama.cpp renders. Unlike the transformers
    export it escapes nothing: llama.cpp has no normalizer to undo an escape, so the content goes in as is."""
    start, end = json.dumps(template.start), json.dumps(template.end + "\n")
    return ("{%- for message in messages -%}"
            f"{{{{- {start} + message['role'] + '\\n' + message['content'] + {end} -}}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- {json.dumps(template.start + 'assistant' + chr(10))} -}}}}"
            "{%- endif -%}")


# ---------------------------------------------------------------------------------------------------
# the public API
# ---------------------------------------------------------------------------------------------------

def export_gguf(model: Transformer, out_path: str | Path, tokenizer: Any, type: str = "f32",
                force: bool = False, name: str = "gator", chat_template: str | None = None,
                drop_mtp: bool = False) -> Path:
    """Write `model` and its byte-level BPE `tokenizer` as a GGUF file for llama.cpp.

    type: f32 | f16 | bf16 | q8_0. The file is written to a temporary name beside `out_path` and renamed
    when complete; an existing `out_path` is replaced only with force=True."""
    import gguf

    type = type.lower()
    if type not in TYPES:
        raise ValueError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give the path of the .gguf file to write")
    if out.exists() and not force:
        raise GatorError(f"{out} exists; pass force=True (--force) to overwrite it")
    if tokenizer is None:
        raise ValueError("llama.cpp needs the tokenizer inside the GGUF file, and this model has none; save the "
                         "model with its tokenizer (model.save_pretrained(dir, tokenizer=tok))")
    c = model.config
    arch = gguf_architecture(c, drop_mtp)
    if c.mtp_depth:
        warnings.warn(f"dropping {c.mtp_depth} multi-token-prediction module(s): llama.cpp cannot run them",
                      stacklevel=2)
    tok_meta = tokenizer_metadata(tokenizer, c.vocab_size)
    tensors = gguf_state(model, drop_mtp)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        _write_hparams(writer, c, arch, name, type)
        _write_tokenizer(writer, tok_meta, chat_template)
        for tensor_name, tensor in tensors.items():
            data, qtype = encode_tensor(tensor_name, tensor, type)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        from gator.outputs import file_mode

        os.chmod(tmp, file_mode())  # what open() would give, not mkstemp's 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out


def load_tokenizer_for_gguf(directory: str | Path) -> tuple[Any, str | None]:
    """(tokenizer, chat template) saved beside a model: Gator's tokenizer.gator.json (its own chat template,
    if any, is written by export_gguf), else a byte-level BPE tokenizer.json (imported models) with the
    chat template of tokenizer_config.json unless Gator recognised it as its own (Gator's transformers export
    escapes content for a normalizer llama.cpp does not have). (None, None) when there is no tokenizer;
    ValueError for one llama.cpp's gpt2 vocabulary cannot hold."""
    from gator.tokenizer import Tokenizer
    from gator.tokenizer.formats import FILE

    d = Path(directory)
    if (d / FILE).is_file():
        return Tokenizer.load(d), None
    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.load(d / "tokenizer.json")
        if tok.chat_template is not None:  # a Gator export: its config's Jinja escapes content for HF only
            return tok, None
    elif (d / "tokenizer.model").is_file():
        raise ValueError(f"{d} has a SentencePiece tokenizer (tokenizer.model); gator's GGUF export writes byte-level "
                         "BPE vocabularies only; convert this model with llama.cpp's convert_hf_to_gguf.py")
    else:
        return None, None
    template = None
    if getattr(tok, "chat_template", None) is None and (d / "tokenizer_config.json").is_file():
        template = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    return tok, template if isinstance(template, str) else None


def _write_hparams(w: Any, c: ModelConfig, arch: str, name: str, type: str) -> None:
    import gguf

    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_name(name)
    w.add_file_type(file_types[type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.ffn_dim)
    w.add_head_count(c.n_heads)
    w.add_vocab_size(c.vocab_size)
    if arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
        return
    w.add_head_count_kv(c.n_kv_heads)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    if c.head_dim * c.n_heads != c.d_model:  # llama.cpp assumes d_model / n_heads unless told
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)


def _write_tokenizer(w: Any, meta: dict[str, Any], chat_template: str | None) -> None:
    w.add_tokenizer_model(meta["model"])
    w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["token_type"])
    w.add_token_merges(meta["merges"])
    w.add_add_bos_token(meta["add_bos_token"])
    w.add_add_eos_token(meta["add_eos_token"])
    if "eos_token_id" in meta:
        w.add_bos_token_id(meta["bos_token_id"])
        w.add_eos_token_id(meta["eos_token_id"])
    if "eot_token_id" in meta:
        w.add_eot_token_id(meta["eot_token_id"])
    chat_template = chat_template or meta.get("chat_template")
    if chat_template:
        w.add_chat_template(chat_template)
