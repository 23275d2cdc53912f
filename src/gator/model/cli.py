"""`gator info`, `gator export hf|gguf`, `gator import hf`: model facts, Hugging Face and llama.cpp conversion."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gator.cli_args import add_force, add_model, add_out, pick


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, FLOPs per token and KV-cache size of a preset or model directory")
    add_model(p, "a preset name (e.g. gatorgpt, gpt2), a model folder, or a run folder", positional=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    exp = sub.add_parser("export", help="export a Gator model to another format")
    exp = exp.add_subparsers(dest="format", required=True)
    e = exp.add_parser("hf", help="write a transformers directory (AutoModelForCausalLM, vLLM)")
    add_model(e, positional=True)
    add_out(e, "output folder", positional=True)
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast weights")
    add_force(e, "an earlier export in --out (the folder is replaced as a whole)")
    e.set_defaults(func=cmd_export_hf)
    g = exp.add_parser("gguf", help="write one GGUF file for llama.cpp (model + tokenizer)")
    add_model(g, positional=True)
    add_out(g, "output .gguf file", positional=True)
    g.add_argument("--type", choices=["f32", "f16", "bf16", "q8_0"], default="f32", help="tensor type (default f32)")
    add_force(g, "an existing output file")
    g.add_argument("--drop-mtp", action="store_true", help="leave out multi-token-prediction modules")
    g.set_defaults(func=cmd_export_gguf)

    imp = sub.add_parser("import", help="import a model into Gator's format")
    imp = imp.add_subparsers(dest="format", required=True)
    i = imp.add_parser("hf", help="convert a transformers GPT-2/Llama/Mistral directory or hub id")
    add_model(i, "transformers model folder or hub repo id", positional=True)
    add_out(i, "output Gator model folder", positional=True)
    add_force(i, "an earlier model in --out (the folder is replaced as a whole)")
    i.set_defaults(func=cmd_import_hf)


def load_model(name_or_dir: str) -> Any:
    """A preset name builds a model on the meta device (no memory); a model folder or a run folder (its
    best/, else its checkpoint/) loads real weights."""
    import torch

    from gator.config import PRESETS, get_preset
    from gator.model import Transformer
    from gator.train.checkpoint import resolve_model_dir

    if Path(name_or_dir).is_dir():
        return Transformer.from_pretrained(resolve_model_dir(name_or_dir))
    if name_or_dir not in PRESETS:
        raise ValueError(f"{name_or_dir!r} is neither a model folder, a run folder nor a preset; "
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

    name = pick(args, "model")
    model = load_model(name)
    info = model.info()
    if args.json:
        print(json.dumps({"config": model.config.to_dict(), **info}, indent=2))
        return 0
    c = model.config
    heads = (f"({c.n_kv_heads} KV heads, head_dim {c.head_dim})" if c.attention != "mla" else
             f"(MLA: q/k head dim {c.head_dim}, v head dim {c.v_head_dim})")
    print(f"{name}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads {heads}, "
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
    import torch

    from gator.interop.hf import export_hf
    from gator.model import Transformer
    from gator.outputs import MODEL_FOLDER_FILES, output_dir, replace_dir
    from gator.train.checkpoint import resolve_model_dir

    source, out = resolve_model_dir(pick(args, "model")), Path(pick(args, "out"))
    output_dir(out, earlier_work=MODEL_FOLDER_FILES, force=args.force, what="an earlier export", create=False)
    model = Transformer.from_pretrained(source)
    tokenizer = _maybe_tokenizer(source)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    # the whole folder is replaced: no file of an earlier export (a tokenizer.json of another vocabulary) stays
    replace_dir(out, lambda tmp: export_hf(model, tmp, tokenizer=tokenizer, dtype=dtype),
                replaceable=MODEL_FOLDER_FILES)
    print(f"exported {source} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from gator.interop.gguf import export_gguf, load_tokenizer_for_gguf
    from gator.model import Transformer
    from gator.outputs import output_file
    from gator.train.checkpoint import resolve_model_dir

    given = Path(pick(args, "model"))
    # writable, not a folder (an existing file is refused by export_gguf itself, without --force)
    source, out = resolve_model_dir(given), output_file(pick(args, "out"), force=True)
    model = Transformer.from_pretrained(source)
    tokenizer, chat_template = load_tokenizer_for_gguf(source)
    out = export_gguf(model, out, tokenizer, type=args.type, force=args.force, name=given.resolve().name,
                      chat_template=chat_template, drop_mtp=args.drop_mtp)
    size = out.stat().st_size / 2**20
    print(f"exported {source} -> {out} ({args.type}, {size:.1f} MiB; load with llama.cpp)")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from gator.interop.hf import import_hf
    from gator.outputs import MODEL_FOLDER_FILES, output_dir, replace_dir

    source, out = pick(args, "model"), Path(pick(args, "out"))
    output_dir(out, earlier_work=MODEL_FOLDER_FILES, force=args.force, what="a model", create=False)
    model = replace_dir(out, lambda tmp: import_hf(source, tmp), replaceable=MODEL_FOLDER_FILES)
    print(f"imported {source} -> {out} ({model.num_params():,} parameters)")
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
