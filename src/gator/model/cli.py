"""`gator info`, `gator export hf`, `gator import hf`: model facts and Hugging Face conversion."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, FLOPs per token and KV-cache size of a preset or model directory")
    p.add_argument("model", help="a preset name (e.g. gatorgpt, gpt2) or a model directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    exp = sub.add_parser("export", help="export a Gator model to another format")
    exp = exp.add_subparsers(dest="format", required=True)
    e = exp.add_parser("hf", help="write a transformers directory (AutoModelForCausalLM, vLLM)")
    e.add_argument("checkpoint", help="Gator model directory (config.json + model.safetensors)")
    e.add_argument("out", help="output directory")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast weights")
    e.set_defaults(func=cmd_export_hf)

    imp = sub.add_parser("import", help="import a model into Gator's format")
    imp = imp.add_subparsers(dest="format", required=True)
    i = imp.add_parser("hf", help="convert a transformers GPT-2/Llama/Mistral directory or hub id")
    i.add_argument("source", help="transformers model directory or hub repo id")
    i.add_argument("out", help="output Gator model directory")
    i.set_defaults(func=cmd_import_hf)


def load_model(name_or_dir: str) -> torch.nn.Module:
    """A preset name builds a model on the meta device (no memory); a directory loads real weights."""
    from gator.config import PRESETS, get_preset
    from gator.model import Transformer

    if Path(name_or_dir).is_dir():
        return Transformer.from_pretrained(name_or_dir)
    if name_or_dir not in PRESETS:
        raise ValueError(f"{name_or_dir!r} is neither a model directory nor a preset; "
                         f"presets: {', '.join(sorted(PRESETS))}")
    with torch.device("meta"):
        return Transformer(get_preset(name_or_dir))


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def cmd_info(args: argparse.Namespace) -> int:
    import json

    model = load_model(args.model)
    info = model.info()
    if args.json:
        print(json.dumps({"config": model.config.to_dict(), **info}, indent=2))
        return 0
    c = model.config
    heads = (f"({c.n_kv_heads} KV heads, head_dim {c.head_dim})" if c.attention != "mla" else
             f"(MLA: q/k head dim {c.head_dim}, v head dim {c.v_head_dim})")
    print(f"{args.model}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads {heads}, "
          f"ffn {c.ffn_dim} ({c.mlp}), {c.norm}, positions {c.positions}, vocab {c.vocab_size}, "
          f"context {c.context_length}")
    rows = [
        ("parameters", f"{info['parameters']:,}  ({_human(info['parameters'])})"),
        ("parameters without embeddings", f"{info['parameters_without_embeddings']:,}  "
                                          f"({_human(info['parameters_without_embeddings'])})"),
        ("FLOPs per token, training", _human(info["flops_per_token_training"], "FLOP")),
        ("FLOPs per token, inference", _human(info["flops_per_token_inference"], "FLOP")),
    ]
    if "active_parameters" in info:  # MoE: only the top-k routed experts work on a token
        rows.insert(1, ("active parameters per token", f"{info['active_parameters']:,}  "
                                                       f"({_human(info['active_parameters'])})"))
    for key in ("attention", "moe"):
        if key in info:
            rows.append((key, info[key]))
    for key, value in info.items():
        if key == "kv_cache_bytes_per_token_bf16_if_mha":
            rows.append(("KV cache per token, bf16, if MHA", f"{value:,} bytes"))
        elif key.startswith("kv_cache_bytes_per_token"):
            rows.append((f"KV cache per token, {key.rsplit('_', 1)[-1]}", f"{value:,} bytes"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"  (FLOPs at full context {c.context_length}; training = 3 x forward)")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from gator.interop.hf import export_hf
    from gator.model import Transformer

    model = Transformer.from_pretrained(args.checkpoint)
    tokenizer = _maybe_tokenizer(args.checkpoint)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = export_hf(model, args.out, tokenizer=tokenizer, dtype=dtype)
    print(f"exported {args.checkpoint} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from gator.interop.hf import import_hf

    model = import_hf(args.source, args.out)
    print(f"imported {args.source} -> {args.out} ({model.num_params():,} parameters)")
    return 0


def _maybe_tokenizer(directory: str):
    """The Gator tokenizer saved beside the model, if there is one."""
    try:
        from gator.tokenizer import Tokenizer
    except ImportError:
        return None
    try:
        return Tokenizer.load(directory)
    except FileNotFoundError:  # no tokenizer saved there; a corrupt one is an error
        return None
