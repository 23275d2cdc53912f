"""TinyStories 5k at a fixed time budget: the demo recipe (a GatorGPT-shaped model of a few million
parameters) trained from scratch for 3 minutes and, separately, for 10 minutes, each with its learning-rate
schedule fitted to its budget. Reports validation loss, bits per byte and a sampled story per budget.

Data: ../shared/data/tinystories/tinystories_5k.jsonl (5,000 stories); a 4096-token BPE tokenizer trained
on it; 5% of the stories (by a seeded hash) for validation. Evaluations during training count against the
budget, as they do in `make demo`.

    .venv/bin/python bench/train_tinystories.py [--minutes 3 10] [--out runs/bench-tinystories]
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from gator.data import END_OF_TEXT, iter_documents, prepare  # noqa: E402
from gator.tokenizer import train_bpe  # noqa: E402
from gator.train import load_model_for_sampling, pretrain, sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinystories" / "tinystories_5k.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[3, 10])
    ap.add_argument("--out", default="runs/bench-tinystories")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--recipe", default="demo")
    args = ap.parse_args()

    out = Path(args.out)
    tok = train_bpe(iter_documents(CORPUS), args.vocab_size, special_tokens=[END_OF_TEXT], progress=False)
    tok.save(out / "tokenizer")
    m = prepare(CORPUS, out / "tokenizer", out / "data", val_fraction=0.05, seed=0, progress=False)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"TinyStories 5k: train {tr['tokens']:,} tokens ({tr['documents']} stories), val {va['tokens']:,} "
          f"tokens ({va['documents']} stories), vocab {args.vocab_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows, stories = [], []
    for minutes in args.minutes:
        load0 = os.getloadavg()[0]
        run = out / f"run-{minutes:g}min"
        s = pretrain(recipe=args.recipe, data=str(out / "data"), out_dir=str(run), max_time=f"{minutes * 60:g}s",
                     progress=False)
        model, tok, _ = load_model_for_sampling(run)
        stories.append((minutes, sample(model, tok, "Once upon a time", max_new_tokens=150, temperature=0.8,
                                        top_p=0.95, seed=0)[0]))
        rows.append(f"| {minutes:g} min | {s['parameters'] / 1e6:.2f}M | {s['steps']} | {s['tokens']:,} "
                    f"({s['tokens'] / tr['tokens']:.2f} epochs) | {s['tokens_per_s']:,.0f} | {s['val_loss']:.3f} | "
                    f"{s['val_ppl']:.1f} | {s['val_bpb']:.3f} | {load0:.1f} / {os.getloadavg()[0]:.1f} |")
    print("\n| budget | params | steps | tokens seen | tokens/s | val loss | val ppl | val bits/byte | load avg "
          "start/end |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for minutes, text in stories:
        print(f"\nsample after {minutes:g} min (temperature 0.8, top-p 0.95, seed 0):\n{text.strip()}")


if __name__ == "__main__":
    main()
