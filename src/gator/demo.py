"""`make demo`: Gator's main job, end to end, in about four minutes on a laptop CPU.

    corpus -> BPE tokenizer -> token shards -> pretraining (~3 min) -> sampled stories + summary

1. The corpus: `--data FILE_OR_FOLDER` if given; else TinyStories from the Hugging Face hub if it can be
   reached; else the synthetic story corpus that Gator writes itself (and it says so).
2. A byte-level BPE tokenizer trained on (up to 20 MB of) the corpus, with <|endoftext|> between documents.
3. Train/val token shards (`gator prepare`), split by document.
4. Pretraining with `recipes/demo.yaml`: a GatorGPT-shaped model of a few million parameters.
5. A few sampled stories from the best checkpoint, and a summary.

Everything lands in one run folder (default `runs/demo-<time>`): corpus (when downloaded or generated),
tokenizer/, data/, checkpoint/, best/, metrics.jsonl, loss.png, train_config.yaml, samples.txt, summary.json.
"""

from __future__ import annotations

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: spin on a quiet machine, sleep on a busy one

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from gator.cli import report, user_error  # noqa: E402
from gator.cli_args import positive_float, positive_int  # noqa: E402

TINYSTORIES = "roneneldan/TinyStories"
HUB_STORIES = 50_000  # stories streamed from the hub (about 40 MB of text: more than 3 minutes can use)
SYNTHETIC_STORIES = 20_000
TOKENIZER_CHARS = 20_000_000
PROMPTS = ["Once upon a time", "One day, a little girl named Lily", "Tom and his dog"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gator.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a text/JSONL file or a folder (default: TinyStories from the hub, else synthetic)")
    p.add_argument("--field", default="text", help="text field of JSONL records")
    p.add_argument("--out", help="run folder (default: runs/demo-YYYYmmdd-HHMMSS)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo run in --out")
    p.add_argument("--minutes", type=positive_float, default=3.0, help="pretraining time budget")
    p.add_argument("--max-steps", type=positive_int, default=None, help="also stop after this many steps")
    p.add_argument("--vocab-size", type=positive_int, default=4096)
    p.add_argument("--recipe", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-stories", type=positive_int, default=SYNTHETIC_STORIES,
                   help="size of the synthetic corpus, when it is used")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        run(args)
    except Exception as err:  # the one error path of the `gator` command: a user's error is one line
        message = user_error(err)
        if message is None:
            raise
        report("demo", message)
        return 1
    return 0


def run(args: argparse.Namespace) -> dict:
    import torch

    from gator.data import END_OF_TEXT, hub_reachable, iter_documents, prepare
    from gator.data.synthetic import write_corpus
    from gator.outputs import output_dir
    from gator.tokenizer import train_bpe
    from gator.train import load_model_for_sampling, pretrain, sample
    from gator.train.setup import RUN_FILES

    t_start = time.perf_counter()
    run_dir = output_dir(args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"), force=args.force,
                         earlier_work=(*RUN_FILES, "data", "tokenizer", "samples.txt"), what="an earlier demo run")
    progress = not args.no_progress
    print(f"Gator demo -> {run_dir}  (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")

    # 1. corpus
    print("[1/5] corpus")
    if args.data:
        source = Path(args.data)
        if not source.exists():
            raise FileNotFoundError(f"DATA={args.data} does not exist; give a text/JSONL file or a folder")
        print(f"  using {source}")
    elif hub_reachable():
        source = run_dir / "corpus.jsonl"
        print(f"  streaming the first {HUB_STORIES:,} stories of {TINYSTORIES} from the Hugging Face hub")
        with open(source, "w") as f:
            for doc in iter_documents(TINYSTORIES, limit=HUB_STORIES):
                f.write(json.dumps({"text": doc}) + "\n")
    else:
        source = write_corpus(run_dir / "corpus.jsonl", args.synthetic_stories, seed=args.seed)
        print("  the Hugging Face hub is not reachable, so this demo uses Gator's synthetic story corpus\n"
              f"  ({args.synthetic_stories:,} stories from the grammar in gator/data/synthetic.py, "
              f"written to {source}).\n"
              "  It is a fallback: for real text run  make demo DATA=../shared/data/tinystories/tinystories_5k.jsonl")

    # 2. tokenizer
    print(f"\n[2/5] BPE tokenizer, vocabulary {args.vocab_size}")
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # a small corpus may support fewer merges
        warnings.simplefilter("always")
        tok = train_bpe(_capped(iter_documents(source, field=args.field), TOKENIZER_CHARS), args.vocab_size,
                        special_tokens=[END_OF_TEXT], progress=progress)
    tok.save(run_dir / "tokenizer")
    note = " (the corpus has no more pairs to merge)" if len(tok.vocab) < args.vocab_size and caught else ""
    print(f"  {len(tok.vocab)} tokens{note}, trained in {time.perf_counter() - t:.1f} s -> {run_dir / 'tokenizer'}")

    # 3. shards
    print("\n[3/5] token shards (train/val split by document)")
    t = time.perf_counter()
    manifest = prepare(source, run_dir / "tokenizer", run_dir / "data", field=args.field, val_fraction=0.05,
                       seed=args.seed, progress=progress, force=args.force)
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"  train {tr['tokens']:,} tokens ({tr['documents']:,} documents), val {va['tokens']:,} tokens "
          f"({va['documents']:,} documents), {tr['bytes'] / tr['tokens']:.2f} bytes/token, "
          f"{time.perf_counter() - t:.1f} s")

    # 4. pretraining
    print(f"\n[4/5] pretraining for {args.minutes:g} minutes (recipe {args.recipe})")
    overrides = dict(data=str(run_dir / "data"), out_dir=str(run_dir), max_time=f"{args.minutes * 60:g}s",
                     seed=args.seed, progress=progress, force=args.force)
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    summary = pretrain(recipe=args.recipe, **overrides)

    # 5. samples
    print("\n[5/5] stories sampled from the best checkpoint (temperature 0.8, top-p 0.95)\n")
    model, tok, _ = load_model_for_sampling(run_dir)
    texts = []
    for i, prompt in enumerate(PROMPTS):
        text = sample(model, tok, prompt, max_new_tokens=160, temperature=0.8, top_p=0.95, seed=args.seed + i)[0]
        texts.append(text)
        print(f"--- {i + 1} ---\n{text.strip()}\n")
    (run_dir / "samples.txt").write_text("".join(f"--- {i + 1} ---\n{t.strip()}\n\n" for i, t in enumerate(texts)))

    summary.update(corpus=str(source), vocab_size=len(tok.vocab), train_tokens=tr["tokens"], val_tokens=va["tokens"],
                   total_seconds=time.perf_counter() - t_start)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("summary")
    rows = [("corpus", str(source)), ("parameters", f"{summary['parameters']:,}"),
            ("tokens seen", f"{summary['tokens']:,} ({summary['tokens'] / tr['tokens']:.2f} epochs)"),
            ("training time", f"{summary['seconds']:.0f} s, {summary['steps']} steps"),
            ("tokens/s", f"{summary['tokens_per_s']:,.0f} ({summary['dtype']})"),
            ("val loss", f"{summary['val_loss']:.3f} nats/token (best {summary['best_val_loss']:.3f})"),
            ("val perplexity", f"{summary['val_ppl']:.2f}"),
            ("val bits per byte", f"{summary['val_bpb']:.3f}"),
            ("run folder", f"{run_dir} (checkpoint/, best/, tokenizer/, data/, metrics.jsonl, loss.png, "
                           "train_config.yaml, samples.txt, summary.json)"),
            ("total time", f"{summary['total_seconds']:.0f} s")]
    for k, v in rows:
        print(f"  {k:<18} {v}")
    print(f"\nMore: gator sample --model {run_dir} --prompt \"Once upon a time\"")
    return summary


def _capped(docs, max_chars: int):
    total = 0
    for d in docs:
        yield d
        total += len(d)
        if total >= max_chars:
            return


if __name__ == "__main__":
    sys.exit(main())
