"""`gator eval ppl | mc | bleu`: perplexity and bits per byte, multiple-choice accuracy, BLEU."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint: perplexity, multiple choice, BLEU")
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    ppl = sub.add_parser("ppl", help="perplexity and bits per byte of a checkpoint over a text file")
    ppl.add_argument("--checkpoint", type=Path, required=True, help="a directory written by gator")
    ppl.add_argument("--input", type=Path, required=True,
                     help="a text file, or JSONL with a 'text' field per line (joined by blank lines)")
    ppl.add_argument("--stride", type=int, default=None,
                     help="new tokens scored per window (default: half the context length)")
    ppl.add_argument("--max-chars", type=int, default=None, help="score only the first N characters")
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    ppl.set_defaults(func=run_ppl)

    mc = sub.add_parser("mc", help="multiple-choice accuracy by log-likelihood (HellaSwag layout JSONL)")
    mc.add_argument("--checkpoint", type=Path, required=True, help="a directory written by gator")
    mc.add_argument("--input", type=Path, required=True,
                    help='JSONL, one {"context": str, "choices": [str, ...], "label": int} per line')
    mc.add_argument("--output", type=Path, default=None, help="write per-item scores to this JSONL file")
    mc.add_argument("--limit", type=int, default=None, help="score only the first N items")
    mc.add_argument("--separator", default=" ", help="text between context and choice (default: a space)")
    mc.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    mc.set_defaults(func=run_mc)

    bleu = sub.add_parser("bleu", help="corpus BLEU of a hypothesis file against reference files")
    bleu.add_argument("--hypotheses", type=Path, required=True, help="one hypothesis per line")
    bleu.add_argument("--references", type=Path, nargs="+", required=True,
                      help="one or more files, each with one reference per line, aligned with the hypotheses")
    bleu.add_argument("--smooth", default="exp", choices=["none", "floor", "add-k", "exp"])
    bleu.add_argument("--lowercase", action="store_true")
    bleu.set_defaults(func=run_bleu)


def load_checkpoint(checkpoint: Path, device: str | None = None) -> tuple[Any, Any]:
    """The model and tokenizer saved in a checkpoint directory, the model in eval mode on `device`."""
    import torch

    from gator.model import Transformer
    from gator.tokenizer import Tokenizer

    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {checkpoint}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = Transformer.from_pretrained(checkpoint, device=device).eval()
    return model, Tokenizer.load(checkpoint)


def read_text(path: Path) -> str:
    """A text file as it is, or the 'text' fields of a JSONL file joined by blank lines."""
    if path.suffix != ".jsonl":
        return path.read_text(encoding="utf-8")
    from gator.data.sources import read_jsonl

    return "\n\n".join(read_jsonl(path, "text"))


def run_ppl(args: argparse.Namespace) -> int:
    from gator.eval.perplexity import perplexity

    text = read_text(args.input)
    if args.max_chars:
        text = text[: args.max_chars]
    model, tokenizer = load_checkpoint(args.checkpoint, args.device)
    start = time.perf_counter()
    result = perplexity(model, tokenizer, text, stride=args.stride, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(f"tokens {result.n_tokens}  bytes {result.n_bytes}  nll {result.nll:.4f}  "
          f"perplexity {result.perplexity:.3f}  bits/byte {result.bits_per_byte:.4f}  "
          f"({result.n_tokens / max(seconds, 1e-9):.0f} tokens/s)")
    return 0


def run_mc(args: argparse.Namespace) -> int:
    from gator.eval.multiple_choice import load_mc_jsonl, score_multiple_choice

    items = load_mc_jsonl(args.input)[: args.limit]
    model, tokenizer = load_checkpoint(args.checkpoint, args.device)
    result = score_multiple_choice(model, tokenizer, items, separator=args.separator, progress=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            for item in result.items:
                f.write(json.dumps(item.to_dict()) + "\n")
        print(f"wrote {args.output}")
    print(f"items {len(result.items)}  acc {result.accuracy:.4f}  acc_norm {result.accuracy_norm:.4f}")
    return 0


def run_bleu(args: argparse.Namespace) -> int:
    from gator.eval.bleu import corpus_bleu

    hyps = args.hypotheses.read_text(encoding="utf-8").splitlines()
    refs = [path.read_text(encoding="utf-8").splitlines() for path in args.references]
    print(corpus_bleu(hyps, refs, smooth=args.smooth, lowercase=args.lowercase))
    return 0
