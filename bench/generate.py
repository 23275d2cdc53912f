"""Decode speed: Gator's cached generation vs transformers' `generate`, on the same weights, in one run.

A GatorGPT-shaped model (random init) is exported to transformers' LlamaForCausalLM, so both sides run
identical weights. Each side generates greedily from the same prompts; the table reports decode tokens/s
(new tokens / wall time, prefill included) and the ratio gator / transformers. Outputs are checked to be
token-identical, so the comparison is like for like.

    .venv/bin/python bench/generate.py [--new-tokens 128] [--prompt-len 32] [--batches 1 8] [--dtype float32]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gator.config import get_preset
from gator.generate import generate
from gator.interop.hf import to_hf
from gator.model import Transformer


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gatorgpt")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = Transformer(get_preset(args.preset)).eval().to(dtype)
    hf = to_hf(model.float()).to(dtype).eval()
    model = model.to(dtype)
    V = model.config.vocab_size
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model: {args.preset} ({model.num_params() / 1e6:.1f}M params), {args.dtype}")
    print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}\n")
    print(f"{'batch':>5} | {'gator tok/s':>11} | {'transformers tok/s':>18} | {'ratio':>6} | same tokens")
    print("-" * 64)
    for B in args.batches:
        prompts = torch.randint(0, V, (B, args.prompt_len))
        eos = V  # out of vocabulary: never stops early

        def run_gator(prompts=prompts):
            return generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, temperature=0)

        def run_hf(prompts=prompts, eos=eos):
            with torch.inference_mode():
                return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)

        ours = [c.tokens for c in run_gator()]
        theirs = run_hf()[:, args.prompt_len:].tolist()
        same = ours == theirs
        t_gator = best_of(run_gator, args.repeats)
        t_hf = best_of(run_hf, args.repeats)
        n = B * args.new_tokens
        print(f"{B:>5} | {n / t_gator:>11.1f} | {n / t_hf:>18.1f} | {t_hf / t_gator:>5.2f}x | {same}")


if __name__ == "__main__":
    main()
