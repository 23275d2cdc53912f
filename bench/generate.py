"""Decode speed: Gator's cached generation vs transformers' `generate`, on the same weights, in one run.

A GatorGPT-shaped model (random init) is exported to transformers' LlamaForCausalLM, so both sides run
identical weights in the same dtype. Each side generates greedily from the same prompts; the table reports
decode tokens/s (new tokens / wall time, prefill included) and the ratio gator / transformers, and whether the
greedy tokens are identical (checked in fp32; bf16 rounding can flip a near-tie).

Dtypes: fp32 always; bf16 too where gator.runtime's policy says this CPU runs bf16 natively. Where it does not
(e.g. AVX2-only CPUs), bf16 would be emulated by both libraries and crawl, so those rows are skipped and the
output says so. `GATOR_FAST_BF16=0` (or 1) forces the other policy: the output then says it was forced.

    .venv/bin/python bench/generate.py [--new-tokens 128] [--prompt-len 32] [--batches 1 8] [--quick]
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from gator.config import get_preset  # noqa: E402
from gator.generate import generate  # noqa: E402
from gator.interop.hf import to_hf  # noqa: E402
from gator.model import Transformer  # noqa: E402
from gator.runtime import cpu_has_fast_bf16, describe_cpu, describe_dtype_policy  # noqa: E402


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
    ap.add_argument("--quick", action="store_true", help="at most 64 new tokens, best of 2")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = min(args.new_tokens, 64), min(args.repeats, 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model32 = Transformer(get_preset(args.preset)).eval()
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_fast_bf16() else [])
    models = {}
    for dtype in dtypes:
        gator = Transformer(model32.config).eval().to(dtype)
        gator.load_state_dict(model32.state_dict())
        models[dtype] = (gator, to_hf(model32).to(dtype).eval())
    V = model32.config.vocab_size
    print(f"machine: {describe_cpu()}")
    print(f"dtype policy: {describe_dtype_policy()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if torch.bfloat16 not in dtypes:
        print("bf16 rows skipped: the policy says bf16 is not native here, so both libraries would emulate it "
              "(slower than fp32)")
    print(f"model: {args.preset} ({model32.num_params() / 1e6:.1f}M params); greedy, prompt {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, decode tokens/s, best of {args.repeats}\n")
    print("| batch | dtype | gator tokens/s | transformers tokens/s | ratio | vs transformers fp32 | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for B in args.batches:
        prompts = torch.randint(0, V, (B, args.prompt_len))

        def run_gator(model, prompts=prompts):
            return [c.tokens for c in generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, temperature=0)]

        def run_hf(hf, prompts=prompts):
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[:, args.prompt_len:].tolist()

        n = B * args.new_tokens
        hf_fp32 = None
        for dtype, (gator, hf) in models.items():
            same = run_gator(gator) == run_hf(hf)
            g = n / best_of(lambda gator=gator: run_gator(gator), args.repeats)
            h = n / best_of(lambda hf=hf: run_hf(hf), args.repeats)
            hf_fp32 = h if dtype == torch.float32 else hf_fp32
            name = str(dtype).replace("torch.", "")
            print(f"| {B} | {name} | {g:,.1f} | {h:,.1f} | {g / h:.2f}x | {g / hf_fp32:.2f}x | {same} |", flush=True)
    print("\nratio = gator tokens/s / transformers tokens/s on identical weights, same dtype; vs transformers fp32 = "
          "gator in this dtype against transformers in fp32 (both libraries' default).\n'same tokens': the greedy "
          "outputs are identical (bf16 rounding can flip a near-tie, so bf16 outputs may legitimately differ).")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
