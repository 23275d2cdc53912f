"""Quality at a fixed budget: a byte-level GatorGPT (vocabulary 256, no merges) on tinyshakespeare.txt,
first 90% of the bytes for training and the last 10% for validation, 60 seconds of training on this
machine. Target: validation loss <= 1.70 nats per character (the text is ASCII: one byte per character).

The settings are `recipes/shakespeare-char.yaml`, which picks the optimizer by gator.runtime's dtype policy
(its `per_dtype:` section: Muon where bf16 is native, AdamW where the CPU would emulate Muon's bf16 step).
`GATOR_FAST_BF16=0` (or 1) forces the other policy; the output says which policy ran and whether it was
forced. The bytes are written as token shards directly (`gator.data.write_tokens`), then
`gator.train.pretrain` runs; the final evaluation covers the whole validation split. Evaluations during
training would count against the 60 s, so there is only the final one (after the budget).

`--sweep KEY=V1,V2 ...` runs every combination of the listed values (on top of the recipe and `--set`), each
for `--seconds`, and prints one row per run: the evidence for choosing the recipe's settings on a machine.

    .venv/bin/python bench/train_shakespeare.py [--seconds 60] [--set KEY=VALUE ...] [--sweep KEY=V1,V2 ...]
    GATOR_FAST_BF16=0 .venv/bin/python bench/train_shakespeare.py --sweep optimizer=adamw,muon batch_tokens=1024,2048
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from gator.data import write_tokens  # noqa: E402
from gator.runtime import describe_cpu, describe_dtype_policy  # noqa: E402
from gator.train import TrainConfig, make_config, parse_overrides, pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
RECIPE = ROOT / "recipes" / "shakespeare-char.yaml"  # the settings, per dtype policy (see the recipe)
TARGET = 1.70


def load_bytes(corpus: Path = CORPUS) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) bytes of the corpus: the first 90% and the last 10%."""
    if not corpus.is_file():
        raise SystemExit(f"{corpus} not found: this bench needs tinyshakespeare.txt (see ../shared/data/README)")
    data = np.frombuffer(corpus.read_bytes(), dtype=np.uint8)
    n_train = int(0.9 * len(data))
    return data[:n_train], data[n_train:]


def write_byte_shards(out: Path, train: np.ndarray, val: np.ndarray) -> Path:
    """The bytes as token shards (token id = byte value) for `gator.train.pretrain`."""
    write_tokens(out, {"train": train.astype(np.uint16), "val": val.astype(np.uint16)},
                 {"vocab_size": 256, "eot_id": None, "fingerprint": "bytes"}, source=str(CORPUS))
    return out


def gator_config(data: Path, out_dir: Path, seconds: float, n_val: int, overrides: dict[str, Any]) -> TrainConfig:
    """The recipe's settings for this machine's dtype policy, with the bench's paths and budget on top."""
    return make_config(RECIPE, {**overrides, "data": str(data), "out_dir": str(out_dir), "max_time": seconds,
                                "eval_tokens": n_val, "force": True})


def describe(cfg: TrainConfig) -> str:
    mc = cfg.model_config
    return (f"d{mc['d_model']} x{mc['n_layers']}, T {cfg.seq_len}, batch {cfg.batch_tokens}, {cfg.optimizer}, "
            f"{cfg.schedule} lr {cfg.lr:g}")


def sweep_grid(items: list[str]) -> list[dict[str, Any]]:
    """["optimizer=adamw,muon", "lr=2e-3,3e-3"] -> one override dict per combination."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--sweep {item!r}: write KEY=V1,V2 (e.g. optimizer=adamw,muon)")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [parse_overrides(list(combo)) for combo in itertools.product(*axes)]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if "model_config" in base or "model_config" in extra:
        merged["model_config"] = {**base.get("model_config", {}), **extra.get("model_config", {})}
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--out", default="runs/bench-shakespeare")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a setting of the recipe")
    ap.add_argument("--sweep", nargs="*", default=[], metavar="KEY=V1,V2", help="run every combination")
    args = ap.parse_args()

    train, val = load_bytes()
    out = Path(args.out)
    data = write_byte_shards(out / "data", train, val)
    base = parse_overrides(args.set)
    runs = [merge(base, extra) for extra in sweep_grid(args.sweep)] if args.sweep else [base]
    print(f"machine: {describe_cpu()}")
    print(f"dtype policy: {describe_dtype_policy()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"tinyshakespeare: {len(train) + len(val):,} bytes, train {len(train):,} / val {len(val):,}; "
          f"recipe {RECIPE.name}; load average {os.getloadavg()[0]:.2f}")

    rows = []
    for i, overrides in enumerate(runs):
        cfg = gator_config(data, out / (f"run-{i}" if args.sweep else "run"), args.seconds, len(val), overrides)
        print(f"\n[{i + 1}/{len(runs)}] {describe(cfg)} {overrides or ''}", flush=True)
        t0 = time.perf_counter()
        s = pretrain(cfg)
        rows.append((cfg, overrides, s, time.perf_counter() - t0))

    print(f"\nmachine: {describe_cpu()}\ndtype policy: {describe_dtype_policy()}\n")
    print("| model | settings | params | budget | steps | tokens seen | tokens/s | val loss (nats/char) | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg, overrides, s, _ in rows:
        status = "met" if s["val_loss"] <= TARGET else "NOT met"
        shown = " ".join(f"{k}={v}" for k, v in overrides.items()) or "recipe"
        print(f"| byte-level GatorGPT {describe(cfg)} ({s['dtype']}) | {shown} | {s['parameters'] / 1e6:.2f}M | "
              f"{args.seconds:g} s | {s['steps']} | {s['tokens']:,} | {s['tokens_per_s']:,.0f} | "
              f"{s['val_loss']:.3f} | <= {TARGET}: {status} |")
    print(f"(wall time per run including startup and the final evaluation of {len(val):,} characters: "
          f"{', '.join(f'{w:.0f} s' for *_, w in rows)}; load average at end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
