"""The LM head + cross-entropy: Gator's chunked loss (gator/model/head_loss.py, never holds the logits)
against the plain computation (`F.cross_entropy(F.linear(h, W).float(), y)`, what transformers and the
`return_logits=True` path do), in one run.

Two tables. First the head and loss alone, forward + backward, for a frozen head (LoRA: only the hidden
states need a gradient) and a trainable one, in fp32 and (where gator.runtime calls it fast) bf16 autocast.
Then a whole GatorGPT training step (forward, loss, backward, AdamW) with `return_logits=True` against
`return_logits=False`, eager and with torch.compile. Every pair starts from the same weights and batch; the
losses are printed first and must agree. Rounds are interleaved; the tables give the median and the best.

    .venv/bin/python bench/head_loss.py [--preset gatorgpt] [--batch 8] [--seq-len 256] [--rounds 5] [--no-compile]
    .venv/bin/python bench/head_loss.py --quick     # a tiny model, one round: checks that the bench runs
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine_lines, time_rounds, warm_up  # noqa: E402  (bench/ is on sys.path)

from gator.config import get_preset  # noqa: E402
from gator.model import Transformer  # noqa: E402
from gator.model.head_loss import linear_cross_entropy  # noqa: E402
from gator.runtime import fast_dtype  # noqa: E402
from gator.train.optim import make_optimizer  # noqa: E402


def head_step(chunked: bool, h0, W0, y, dtype, head_trains: bool):
    def step() -> float:
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_(head_trains)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = (linear_cross_entropy(h, W, y) if chunked else
                    F.cross_entropy(F.linear(h, W).float(), y, ignore_index=-100))
        loss.backward()
        return loss.item()
    return step


def model_step(chunked: bool, args, dtype, compiled: bool):
    torch.manual_seed(0)
    config = get_preset(args.preset, context_length=args.seq_len)
    model = Transformer(config).train()
    optimizer = make_optimizer(model, 1e-4, 0.0, (0.9, 0.95), 1e-8, torch.device("cpu"))
    run = torch.compile(model) if compiled else model
    torch.manual_seed(1)
    seq = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1))
    x, y = seq[:, :-1], seq[:, 1:]

    def step() -> float:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = run(x, y, return_logits=not chunked)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def table(title: str, configs: dict, rounds: int, steps: int) -> None:
    first = warm_up(configs)
    print(f"\n{title}\nfirst-step losses: " + ", ".join(f"{k}: {v:.4f}" for k, v in first.items()))
    times = time_rounds(configs, rounds, steps)
    print(f"| {'configuration':<52} | {'ms (median)':>11} | {'vs plain':>8} | {'ms (best)':>9} | "
          f"{'vs plain (best)':>15} |")
    print(f"|{'-' * 54}|{'-' * 13}|{'-' * 10}|{'-' * 11}|{'-' * 17}|")
    for name, ts in times.items():
        plain = times[name.replace("chunked", "plain")]
        print(f"| {name:<52} | {1000 * statistics.median(ts):>11.1f} | "
              f"{statistics.median(plain) / statistics.median(ts):>7.2f}x | {1000 * min(ts):>9.1f} | "
              f"{min(plain) / min(ts):>14.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gatorgpt")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.batch, args.seq_len, args.rounds, args.steps, args.no_compile = \
            "tiny-gatorgpt", 2, 32, 1, 1, True
    print(machine_lines())
    dtypes = {"fp32": None, **({"bf16": torch.bfloat16} if fast_dtype(torch.device("cpu")) == torch.bfloat16 else {})}
    config = get_preset(args.preset)
    N = args.batch * args.seq_len
    torch.manual_seed(0)
    h0, W0 = torch.randn(N, config.d_model), torch.randn(config.vocab_size, config.d_model) * 0.02
    y = torch.randint(0, config.vocab_size, (N,))
    configs = {}
    for dname, dtype in dtypes.items():
        for head_trains in (False, True):
            for chunked in (False, True):
                head = "trains" if head_trains else "frozen"
                name = f"{'chunked' if chunked else 'plain'} head+loss, {dname}, head {head}"
                configs[name] = head_step(chunked, h0, W0, y, dtype, head_trains)
    table(f"head + loss alone: {N} positions x vocabulary {config.vocab_size:,}, d_model {config.d_model}",
          configs, args.rounds, args.steps)
    configs = {}
    dname, dtype = list(dtypes.items())[-1]
    for compiled in ([False] if args.no_compile else [False, True]):
        for chunked in (False, True):
            name = f"{'chunked' if chunked else 'plain'} training step, {dname}{' + compile' if compiled else ''}"
            configs[name] = model_step(chunked, args, dtype, compiled)
    table(f"whole training step: preset {args.preset}, batch {args.batch} x {args.seq_len}", configs, args.rounds,
          args.steps)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other programs on this machine make timings noisy)")


if __name__ == "__main__":
    main()
