"""`gator eval ppl | mc | bleu`: perplexity and bits per byte, multiple-choice accuracy, BLEU."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gator.cli_args import (
    add_device,
    add_field,
    add_force,
    add_model,
    add_out,
    add_progress,
    pick,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model: perplexity, multiple choice, BLEU")
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    ppl = sub.add_parser("ppl", help="perplexity and bits per byte of a model over a text file")
    add_model(ppl)
    ppl.add_argument("--input", type=Path, required=True,
                     help="a text file, or JSONL with a text field per line (documents joined by blank lines)")
    add_field(ppl)
    ppl.add_argument("--stride", type=positive_int, default=None,
                     help="new tokens scored per window (default: half the context length)")
    ppl.add_argument("--max-chars", type=positive_int, default=None, help="score only the first N characters")
    ppl.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    add_device(ppl)
    add_progress(ppl)
    ppl.set_defaults(func=run_ppl)

    mc = sub.add_parser("mc", help="multiple-choice accuracy by log-likelihood (HellaSwag layout JSONL)")
    add_model(mc)
    mc.add_argument("--input", type=Path, required=True,
                    help='JSONL, one {"context": str, "choices": [str, ...], "label": int} per line')
    add_out(mc, "write per-item scores to this JSONL file", required=False)
    add_force(mc, "an existing --out file")
    mc.add_argument("--limit", type=positive_int, default=None, help="score only the first N items")
    mc.add_argument("--separator", default=" ", help="text between context and choice (default: a space)")
    add_device(mc)
    add_progress(mc)
    mc.set_defaults(func=run_mc)

    bleu = sub.add_parser("bleu", help="corpus BLEU of a hypothesis file against reference files")
    bleu.add_argument("--hypotheses", type=Path, required=True, help="one hypothesis per line")
    bleu.add_argument("--references", type=Path, nargs="+", required=True,
                      help="one or more files, each with one reference per line, aligned with the hypotheses")
    bleu.add_argument("--smooth", default="exp", choices=["none", "floor", "add-k", "exp"])
    bleu.add_argument("--lowercase", action="store_true")
    bleu.set_defaults(func=run_bleu)


def load_checkpoint(checkpoint: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """The model (in eval mode, on `device`; default cuda when visible) and tokenizer of a model folder or a
    run folder; the tokenizer may be Gator's, a tokenizer.json or GPT-2's files (an imported model)."""
    from gator.train.sampling import load_model_for_sampling

    model, tokenizer, _ = load_model_for_sampling(checkpoint, device=device)
    return model, tokenizer


def read_text(path: Path, field: str = "text") -> str:
    """A text file as it is, or the `field` of each record of a JSONL file joined by blank lines."""
    from gator.data.sources import read_jsonl, read_whole_text

    if path.is_dir():
        raise ValueError(f"--input {path} is a folder; give a text or JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} does not exist")
    if path.suffix != ".jsonl":
        return read_whole_text(path)
    return "\n\n".join(read_jsonl(path, field))


def run_ppl(args: argparse.Namespace) -> int:
    from gator.eval.perplexity import perplexity

    text = read_text(args.input, args.field)
    if args.max_chars:
        text = text[: args.max_chars]
    model, tokenizer = load_checkpoint(pick(args, "model"), args.device)
    start = time.perf_counter()
    result = perplexity(model, tokenizer, text, stride=args.stride, batch_size=args.batch_size,
                        progress=args.progress)
    seconds = time.perf_counter() - start
    print(f"tokens {result.n_tokens}  bytes {result.n_bytes}  nll {result.nll:.4f}  "
          f"perplexity {result.perplexity:.3f}  bits/byte {result.bits_per_byte:.4f}  "
          f"({result.n_tokens / max(seconds, 1e-9):.0f} tokens/s)")
    return 0


def run_mc(args: argparse.Namespace) -> int:
    from gator.eval.multiple_choice import load_mc_jsonl, score_multiple_choice
    from gator.outputs import atomic_write, output_file

    if args.out:
        output_file(args.out, force=args.force)  # before scoring: a read-only --out fails now, not at the end
    items = load_mc_jsonl(args.input)[: args.limit]
    model, tokenizer = load_checkpoint(pick(args, "model"), args.device)
    result = score_multiple_choice(model, tokenizer, items, separator=args.separator, progress=args.progress)
    if args.out:
        lines = "".join(json.dumps(item.to_dict()) + "\n" for item in result.items)
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
        print(f"wrote {args.out}")
    print(f"items {len(result.items)}  acc {result.accuracy:.4f}  acc_norm {result.accuracy_norm:.4f}")
    return 0


def run_bleu(args: argparse.Namespace) -> int:
    from gator.data.sources import read_whole_text
    from gator.eval.bleu import corpus_bleu

    hyps = read_whole_text(args.hypotheses).splitlines()
    refs = [read_whole_text(path).splitlines() for path in args.references]
    print(corpus_bleu(hyps, refs, smooth=args.smooth, lowercase=args.lowercase))
    return 0
