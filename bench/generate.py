"""Decode speed: Gator's cached generation vs transformers' `generate`, on the same weights, in one run.

A GatorGPT-shaped model (random init) is exported to transformers' LlamaForCausalLM, so both sides run
identical weights, in fp32 and in bf16. Each side generates greedily from the same prompts; the table reports
decode tokens/s (new tokens / wall time, prefill included) and the ratios gator / transformers. fp32 outputs
are checked to be token-identical, so the comparison is like for like.

    .venv/bin/python bench/generate.py [--new-tokens 128] [--prompt-len 32] [--batches 1 8] [--threads N]
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
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model32 = Transformer(get_preset(args.preset)).eval()
    hf32 = to_hf(model32).eval()
    model16 = Transformer(model32.config).eval().to(torch.bfloat16)
    model16.load_state_dict(model32.state_dict())
    hf16 = to_hf(model32).to(torch.bfloat16).eval()
    V = model32.config.vocab_size
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"model: {args.preset} ({model32.num_params() / 1e6:.1f}M params)")
    print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, decode tokens/s, "
          f"best of {args.repeats}\n")
    print(f"{'batch':>5} | {'gator fp32':>10} | {'hf fp32':>8} | {'ratio':>6} | {'gator bf16':>10} | {'hf bf16':>8} | "
          f"{'ratio':>6} | {'gator bf16 / hf fp32':>20} | same tokens")
    print("-" * 110)
    for B in args.batches:
        prompts = torch.randint(0, V, (B, args.prompt_len))

        def run_gator(model, prompts=prompts):
            return [c.tokens for c in generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, temperature=0)]

        def run_hf(hf, prompts=prompts):
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[:, args.prompt_len:].tolist()

        same32 = run_gator(model32) == run_hf(hf32)
        same16 = run_gator(model16) == run_hf(hf16)
        n = B * args.new_tokens
        g32 = n / best_of(lambda: run_gator(model32), args.repeats)
        h32 = n / best_of(lambda: run_hf(hf32), args.repeats)
        g16 = n / best_of(lambda: run_gator(model16), args.repeats)
        h16 = n / best_of(lambda: run_hf(hf16), args.repeats)
        print(f"{B:>5} | {g32:>10.1f} | {h32:>8.1f} | {g32 / h32:>5.2f}x | {g16:>10.1f} | {h16:>8.1f} | "
              f"{g16 / h16:>5.2f}x | {g16 / h32:>19.2f}x | fp32 {same32}, bf16 {same16}")
    print("\nratio = gator tokens/s / transformers tokens/s on identical weights. 'same tokens': the greedy outputs "
          "are identical\n(bf16 rounding can flip a near-tie, so bf16 outputs may legitimately differ).")


if __name__ == "__main__":
    main()
