"""Quality at a fixed budget: a byte-level GatorGPT (vocabulary 256, no merges) on tinyshakespeare.txt,
first 90% of the bytes for training and the last 10% for validation, 60 seconds of training on this
machine. Target: validation loss <= 1.70 nats per character (the text is ASCII: one byte per character).

The bytes are written as token shards directly (`gator.data.write_tokens`), then `gator.train.pretrain`
runs with the settings below; the final evaluation covers the whole validation split. Evaluations during
training count against the 60 s, so there is only the final one (after the budget).

    .venv/bin/python bench/train_shakespeare.py [--seconds 60] [--out runs/bench-shakespeare]
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gator.data import write_tokens  # noqa: E402
from gator.train import pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"

SETTINGS = dict(
    model="gatorgpt",
    model_config=dict(vocab_size=256, context_length=64, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4,
                      ffn_dim=320),
    seq_len=64, micro_batch=32, batch_tokens=2048, optimizer="muon", lr=3e-3, min_lr=0.0, warmup_steps=20,
    schedule="wsd", decay_fraction=0.5, weight_decay=0.1, grad_clip=1.0, dtype="auto", eval_every=10**9,
    log_every=10, ckpt_every=10**9,
)  # chosen by sweeps of 60 s runs: width 128-192, 3-4 layers, context 64-128, batch 1024-4096 tokens,
#    lr 2e-3-5e-3, cosine or wsd, AdamW or Muon. Muon was the largest single gain (see README).


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--out", default="runs/bench-shakespeare")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a setting")
    args = ap.parse_args()

    from gator.train import parse_overrides

    data = np.frombuffer(CORPUS.read_bytes(), dtype=np.uint8).astype(np.uint16)
    n_train = int(0.9 * len(data))
    out = Path(args.out)
    write_tokens(out / "data", {"train": data[:n_train], "val": data[n_train:]},
                 {"vocab_size": 256, "eot_id": None, "fingerprint": "bytes"}, source=str(CORPUS))
    overrides = parse_overrides(args.set)
    settings = {**SETTINGS, **overrides,
                "model_config": {**SETTINGS["model_config"], **overrides.get("model_config", {})}}
    n_val = len(data) - n_train
    print(f"tinyshakespeare: {len(data):,} bytes, train {n_train:,} / val {n_val:,}; load average "
          f"{os.getloadavg()[0]:.2f}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    t0 = time.perf_counter()
    s = pretrain(data=str(out / "data"), out_dir=str(out / "run"), max_time=args.seconds,
                 eval_tokens=n_val, **settings)
    wall = time.perf_counter() - t0
    status = "met" if s["val_loss"] <= 1.70 else "NOT met"
    print("\n| model | params | budget | steps | tokens seen | tokens/s | val loss (nats/char) | target |")
    print("|---|---|---|---|---|---|---|---|")
    mc = settings["model_config"]
    print(f"| byte-level GatorGPT d{mc['d_model']} x{mc['n_layers']}, T {settings['seq_len']}, batch "
          f"{settings['batch_tokens']} ({s['dtype']}) | {s['parameters'] / 1e6:.2f}M | {args.seconds:g} s | "
          f"{s['steps']} | {s['tokens']:,} | {s['tokens_per_s']:,.0f} | {s['val_loss']:.3f} | <= 1.70: {status} |")
    print(f"(wall time including startup and the final evaluation of {n_val:,} characters: {wall:.0f} s; load "
          f"average at end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
