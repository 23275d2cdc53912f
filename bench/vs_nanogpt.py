"""Gator against nanoGPT's CPU recipe, side by side in one run: byte-level tinyshakespeare, equal wall time.

The reference is nanoGPT's published CPU recipe for shakespeare_char (README "I only have a macbook":
`--device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, with config/train_shakespeare_char.py's AdamW lr 1e-3,
beta2 0.99, 100 warmup iterations, cosine to min_lr 1e-4, weight decay 0.1 on matrices, grad clip 1.0, fp32)
run on transformers' `GPT2LMHeadModel` (exact GELU, tied embeddings, nanoGPT's init) as an independent
implementation. It trains until its 2000 iterations are done or `--seconds` have passed, whichever comes
first. Differences from nanoGPT itself: the vocabulary is the 256 byte values (nanoGPT's char-level
tokenizer has 65), GPT2LMHeadModel has biases (nanoGPT's default is bias=False), and there are no
evaluations during training (nanoGPT's every 250 iterations would count against the wall time).

Then Gator trains for the same number of seconds with bench/train_shakespeare.py's settings
(recipes/shakespeare-char.yaml, whose optimizer follows gator.runtime's dtype policy). Both use the same
data split (first 90% of the bytes for training, last 10% for validation), and their final weights are
scored by the same function (`val_loss`): every byte of the validation split after the first, predicted
from up to 64 preceding bytes in consecutive 64-byte windows, fp32, no autocast.

Targets (issue 17): Gator's val loss <= 0.85 x the reference's; stretch: <= 1.55 on a CPU with native bf16.
`GATOR_FAST_BF16=0` (or 1) forces the other dtype policy; the output says so.

    .venv/bin/python bench/vs_nanogpt.py [--seconds 60] [--out runs/bench-vs-nanogpt]
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from train_shakespeare import describe, gator_config, load_bytes, write_byte_shards  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gator.model import Transformer  # noqa: E402
from gator.runtime import cpu_has_fast_bf16, describe_cpu, describe_dtype_policy  # noqa: E402
from gator.train import pretrain  # noqa: E402

# nanoGPT's CPU recipe for shakespeare_char (see the docstring)
N_LAYER, N_HEAD, N_EMBD, BLOCK_SIZE, BATCH_SIZE = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP_ITERS, LR_DECAY_ITERS, MAX_ITERS = 1e-3, 1e-4, 100, 2000, 2000
BETAS, WEIGHT_DECAY, GRAD_CLIP, SEED = (0.9, 0.99), 0.1, 1.0, 1337
EVAL_CONTEXT = BLOCK_SIZE
RATIO_TARGET, STRETCH_TARGET = 0.85, 1.55


def nanogpt_lr(it: int) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to MIN_LR at LR_DECAY_ITERS, MIN_LR after."""
    if it < WARMUP_ITERS:
        return LR * (it + 1) / (WARMUP_ITERS + 1)
    if it > LR_DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP_ITERS) / (LR_DECAY_ITERS - WARMUP_ITERS)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def train_nanogpt_recipe(train: torch.Tensor, seconds: float) -> tuple[GPT2LMHeadModel, dict]:
    """nanoGPT's recipe on GPT2LMHeadModel until MAX_ITERS or `seconds` of training; (model, stats)."""
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=256, n_positions=BLOCK_SIZE, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    it, t0 = 0, time.perf_counter()
    while it < MAX_ITERS and time.perf_counter() - t0 < seconds:
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it)
        ix = torch.randint(len(train) - BLOCK_SIZE, (BATCH_SIZE,))
        x = torch.stack([train[i:i + BLOCK_SIZE] for i in ix])
        y = torch.stack([train[i + 1:i + 1 + BLOCK_SIZE] for i in ix])
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
    elapsed = time.perf_counter() - t0
    tokens = it * BATCH_SIZE * BLOCK_SIZE
    return model.eval(), {"steps": it, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
                          "parameters": sum(p.numel() for p in params)}


@torch.no_grad()
def val_loss(logits_of: Callable[[torch.Tensor], torch.Tensor], val: torch.Tensor, batch: int = 64) -> float:
    """Mean next-byte cross-entropy (nats per character) over the whole validation split, for either model:
    consecutive windows of EVAL_CONTEXT input bytes (the last one shorter), each scored on the byte after
    every input, so every byte after the first is predicted exactly once. fp32, no autocast."""
    n = len(val) - 1  # predictions
    total, start = 0.0, 0
    while start < n:
        rows = min(batch, (n - start) // EVAL_CONTEXT) or 1
        length = EVAL_CONTEXT if (n - start) >= EVAL_CONTEXT else n - start
        x = val[start:start + rows * length].view(rows, length)
        y = val[start + 1:start + 1 + rows * length].view(rows, length)
        logits = logits_of(x).float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        start += rows * length
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="training time of each side")
    ap.add_argument("--out", default="runs/bench-vs-nanogpt")
    args = ap.parse_args()

    train_np, val_np = load_bytes()
    train, val = torch.from_numpy(train_np.astype("int64")), torch.from_numpy(val_np.astype("int64"))
    out = Path(args.out)
    print(f"machine: {describe_cpu()}")
    print(f"dtype policy: {describe_dtype_policy()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"tinyshakespeare bytes: train {len(train):,} / val {len(val):,}; {args.seconds:g} s of training each; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")

    print(f"[1/2] nanoGPT's CPU recipe on transformers GPT2LMHeadModel (up to {MAX_ITERS} iterations)", flush=True)
    ref, r = train_nanogpt_recipe(train, args.seconds)
    r["val_loss"] = val_loss(lambda x: ref(input_ids=x).logits, val)
    print(f"  {r['steps']} iterations in {r['seconds']:.1f} s, val loss {r['val_loss']:.3f}\n", flush=True)

    print("[2/2] Gator, recipes/shakespeare-char.yaml", flush=True)
    cfg = gator_config(write_byte_shards(out / "data", train_np, val_np), out / "gator", args.seconds,
                       len(val), {"progress": False})
    g = pretrain(cfg)
    model = Transformer.from_pretrained(Path(g["run_dir"]) / "checkpoint").eval()  # the final weights
    own_val = g["val_loss"]
    g["val_loss"] = val_loss(lambda x: model(x)[0], val)

    ratio = g["val_loss"] / r["val_loss"]
    print(f"\nmachine: {describe_cpu()}\ndtype policy: {describe_dtype_policy()}\n")
    print("| run | settings | params | steps | tokens seen | tokens/s | val loss (nats/char) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| nanoGPT CPU recipe, transformers GPT2LMHeadModel | {N_LAYER}x{N_EMBD}, {N_HEAD} heads, T {BLOCK_SIZE}, "
          f"batch {BATCH_SIZE}, AdamW lr {LR:g} beta2 {BETAS[1]}, cosine over {MAX_ITERS} it (float32) | "
          f"{r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
          f"{r['val_loss']:.3f} |")
    print(f"| Gator, recipes/shakespeare-char.yaml | {describe(cfg)} ({g['dtype']}) | {g['parameters'] / 1e6:.2f}M | "
          f"{g['steps']} | {g['tokens']:,} | {g['tokens_per_s']:,.0f} | {g['val_loss']:.3f} |")
    done = "finished its iterations" if r["steps"] >= MAX_ITERS else "was stopped by the time limit"
    print(f"\nbudget: {args.seconds:g} s of training each; the reference {done} ({r['seconds']:.0f} s). "
          f"Gator's own evaluation of the same split: {own_val:.3f} (under its training dtype).")
    verdict = "met" if ratio <= RATIO_TARGET else f"missed by {ratio - RATIO_TARGET:.3f}"
    print(f"val loss ratio gator / nanoGPT recipe: {ratio:.3f}x (target <= {RATIO_TARGET}x: {verdict})")
    stretch = "met" if g["val_loss"] <= STRETCH_TARGET else f"missed by {g['val_loss'] - STRETCH_TARGET:.3f}"
    where = "this run's policy is bf16" if cpu_has_fast_bf16() else "this run's policy is fp32: informational"
    print(f"stretch (CPUs with native bf16): gator val loss <= {STRETCH_TARGET}: {stretch} ({where})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
