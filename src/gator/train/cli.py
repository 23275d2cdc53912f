"""`gator prepare`, `gator pretrain`, `gator finetune` and `gator sample`: thin wrappers over the library
functions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gator.cli_args import (
    add_device,
    add_field,
    add_force,
    add_model,
    add_out,
    add_progress,
    duration,
    fraction,
    non_negative_float,
    non_negative_int,
    pick,
    positive_int,
    probability,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into train/val token shards")
    p.add_argument("--input", nargs="+", required=True,
                   help="text/JSONL files or folders, or a Hugging Face dataset name (owner/name)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (from `gator tokenizer train`)")
    add_out(p, "output folder for shards and manifest.json")
    add_force(p, "shards already in --out")
    add_field(p)
    p.add_argument("--val-fraction", type=fraction, default=0.05,
                   help="fraction of documents for validation, between 0 and 1 (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="tokenizer processes (default: all cores; 0: in this process)")
    p.add_argument("--limit", type=positive_int, default=None, help="stop after this many documents")
    p.add_argument("--doc-chars", type=positive_int, default=8000,
                   help="cut unmarked plain text into documents of about this many characters")
    add_progress(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="pretrain a model on prepared shards (works under torchrun)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override any recipe key, e.g. lr=3e-4 model_config.n_layers=4")
    p.add_argument("--recipe", help="recipe name in recipes/ (demo, tiny, gatorgpt-tinystories, gpt2-124m) or a .yaml")
    p.add_argument("--data", help="shard folder from `gator prepare`")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the shards were made with)")
    p.add_argument("--out", dest="out_dir", metavar="PATH", help="run folder")
    p.add_argument("--output", dest="out_dir", help=argparse.SUPPRESS)
    p.add_argument("--max-time", type=duration, help="wall-clock budget, e.g. 60s, 3m, 1h")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint")
    add_force(p, "a run in --out: start over (checkpoint/, best/ and metrics.jsonl are removed)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    add_device(p)
    add_progress(p, default=None)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a model on a JSONL file, fully or with LoRA (works under torchrun)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override any recipe key, e.g. lr=1e-4 packing=true lora_dropout=0.05")
    p.add_argument("--model", dest="init_from", required=True,
                   help="model folder (from gator pretrain, finetune or import hf) or a run folder (its best/)")
    p.add_argument("--data", required=True, help='JSONL file: {"messages": [...]}, {"prompt", "completion"}, '
                                                 'Alpaca {"instruction", "input", "output"} or {"text": ...} lines')
    p.add_argument("--out", dest="out_dir", required=True, help="run folder")
    p.add_argument("--recipe", help="recipe name in recipes/ or a .yaml (default: sft, or sft-lora with --lora)")
    p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters only")
    p.add_argument("--rank", dest="lora_rank", type=positive_int, help="LoRA rank r (default 16)")
    p.add_argument("--alpha", dest="lora_alpha", type=float, help="LoRA alpha; the update is scaled by alpha/r")
    p.add_argument("--targets", dest="lora_targets",
                   help="comma-separated LoRA targets: q,k,v,o,gate,up,down (Llama) or qkv,o,up,down (GPT-2)")
    p.add_argument("--rslora", dest="lora_rslora", action="store_true", default=None,
                   help="scale by alpha/sqrt(r) (rsLoRA)")
    p.add_argument("--packing", action="store_true", default=None, help="pack several short samples per row")
    p.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help="leave malformed lines out (counted and reported) instead of stopping")
    p.add_argument("--val-fraction", type=fraction, help="share of the samples held out for validation (default 0.05)")
    p.add_argument("--seq-len", type=positive_int, help="longest sample in tokens (default: the model's context)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's own)")
    p.add_argument("--max-time", type=duration, help="wall-clock budget, e.g. 60s, 3m, 1h")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint")
    add_force(p, "a run in --out: start over")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("sample", help="generate text from a trained model")
    add_model(p)
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for several)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=200,
                   help="at most this many new tokens (and no more than the context leaves after the prompt)")
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0: always the likeliest token")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=probability, default=0.95)
    p.add_argument("--seed", type=int, default=None, help="fix the random choices (default: new ones each call)")
    add_device(p)
    p.set_defaults(func=_sample)


def _prepare(args: argparse.Namespace) -> int:
    from gator.data import prepare

    source = args.input if len(args.input) > 1 else args.input[0]
    t0 = time.perf_counter()
    m = prepare(source, args.tokenizer, args.out, field=args.field, val_fraction=args.val_fraction,
                seed=args.seed, workers=args.workers, limit=args.limit, doc_chars=args.doc_chars,
                progress=args.progress, force=args.force)
    for split, info in m["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens, "
              f"{info['bytes'] / max(1, info['tokens']):.2f} bytes/token, {len(info['files'])} shard(s)")
    print(f"{m['dtype']} shards and manifest.json in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from gator.train import make_config, parse_overrides, pretrain

    overrides = parse_overrides(args.overrides)
    for key in ("data", "tokenizer", "out_dir", "max_time", "max_steps", "resume", "compile", "dtype", "device",
                "progress"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.force:
        overrides["force"] = True
    summary = pretrain(make_config(args.recipe, overrides))  # GatorError (bad input, a full disk) -> one line
    return 130 if str(summary["stopped"]).startswith("interrupted") else 0


def _finetune(args: argparse.Namespace) -> int:
    from gator.train import make_config, parse_overrides
    from gator.train.finetune import finetune

    overrides = parse_overrides(args.overrides)
    if args.lora_targets is not None:
        args.lora_targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    for key in ("init_from", "data", "out_dir", "lora", "lora_rank", "lora_alpha", "lora_targets", "lora_rslora",
                "packing", "skip_bad_lines", "val_fraction", "seq_len", "tokenizer", "max_time", "max_steps",
                "resume", "compile", "dtype", "device", "progress"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.force:
        overrides["force"] = True
    recipe = args.recipe or ("sft-lora" if overrides.get("lora") else "sft")
    summary = finetune(make_config(recipe, overrides))
    print(f"fine-tuned model: {summary['model']} (gator sample --checkpoint {summary['model']})")
    if "adapter" in summary:
        print(f"LoRA adapter (PEFT layout: adapter_config.json + adapter_model.safetensors): {summary['adapter']}")
    return 130 if str(summary["stopped"]).startswith("interrupted") else 0


def _sample(args: argparse.Namespace) -> int:
    import random
    import sys

    from gator.train import load_model_for_sampling, sample

    model, tok, where = load_model_for_sampling(pick(args, "model"), device=args.device)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    context = model.config.context_length
    for prompt in args.prompt or ["Once upon a time"]:
        room = context - max(1, len(tok.encode(prompt)))
        if args.max_new_tokens > room:
            print(f"note: the context is {context} tokens and the prompt takes {context - room}, so at most {room} "
                  f"new tokens follow (not --max-new-tokens {args.max_new_tokens})", file=sys.stderr)
        for text in sample(model, tok, prompt, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=seed):
            print(text)
            print("-" * 60)
    print(f"(model: {Path(where)}, seed {seed}: pass --seed {seed} to repeat)")
    return 0
