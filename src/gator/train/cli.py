"""`gator prepare`, `gator pretrain` and `gator sample`: thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gator.cli import GatorError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into train/val token shards")
    p.add_argument("--input", nargs="+", required=True,
                   help="text/JSONL files or folders, or a Hugging Face dataset name (owner/name)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (from `gator tokenizer train`)")
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    p.add_argument("--field", default="text", help="text field of JSONL records / dataset rows")
    p.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many documents")
    p.add_argument("--doc-chars", type=int, default=8000,
                   help="cut unmarked plain text into documents of about this many characters")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="pretrain a model on prepared shards (works under torchrun)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override any recipe key, e.g. lr=3e-4 model_config.n_layers=4")
    p.add_argument("--recipe", help="recipe name in recipes/ (demo, gatorgpt-tinystories, gpt2-124m) or a .yaml")
    p.add_argument("--data", help="shard folder from `gator prepare`")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the shards were made with)")
    p.add_argument("--out", dest="out_dir", help="run folder")
    p.add_argument("--max-time", help="wall-clock budget, e.g. 60s, 3m, 1h")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("sample", help="generate text from a trained model")
    p.add_argument("--checkpoint", required=True, help="model folder, or a run folder (uses best/)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for several)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_sample)


def _prepare(args: argparse.Namespace) -> int:
    from gator.data import prepare

    source = args.input if len(args.input) > 1 else args.input[0]
    t0 = time.perf_counter()
    m = prepare(source, args.tokenizer, args.out, field=args.field, val_fraction=args.val_fraction,
                seed=args.seed, workers=args.workers, limit=args.limit, doc_chars=args.doc_chars,
                progress=not args.no_progress)
    for split, info in m["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['tokens']:,} tokens, "
              f"{info['bytes'] / max(1, info['tokens']):.2f} bytes/token, {len(info['files'])} shard(s)")
    print(f"{m['dtype']} shards and manifest.json in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from gator.train import TrainingError, make_config, parse_overrides, pretrain
    from gator.train.checkpoint import CheckpointError

    overrides = parse_overrides(args.overrides)
    for key in ("data", "tokenizer", "out_dir", "max_time", "max_steps", "resume", "compile", "dtype", "device",
                "progress"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    try:
        summary = pretrain(make_config(args.recipe, overrides))
    except CheckpointError as err:
        raise GatorError(str(err)) from None
    except TrainingError:
        raise
    return 130 if str(summary["stopped"]).startswith("interrupted") else 0


def _sample(args: argparse.Namespace) -> int:
    from gator.train import load_model_for_sampling, sample

    model, tok, where = load_model_for_sampling(args.checkpoint)
    prompts = args.prompt or ["Once upon a time"]
    for prompt in prompts:
        for text in sample(model, tok, prompt, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed):
            print(text)
            print("-" * 60)
    print(f"(model: {Path(where)})")
    return 0
