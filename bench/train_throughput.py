"""Training-step throughput: gator's training step against a plain fp32 eager transformers LlamaForCausalLM
of the same shape on the same batch, and achieved FLOP/s against the machine's measured matmul peak
in the dtype gator.runtime calls fast (bf16 where the CPU runs it natively, else fp32; bf16 rows only then).

One full training step = forward + loss + backward + AdamW step. Both models start from the same weights
(gator's exported with `to_hf`; the first-step losses are printed to show they agree). Configurations
are timed in interleaved rounds, so a burst of load from other programs hits all of them alike; the
table reports the median and the best step time over the rounds. The matmul peak is the best of
square matmuls of size 1024-4096 in the same run. MFU uses the PaLM count: 6 FLOPs per matmul
weight per token, plus 12 * layers * seq_len * q_dim for attention.

bf16 rows run only where gator.runtime's policy says bf16 is native: elsewhere (e.g. AVX2-only CPUs) they
would be emulated and crawl, so they are skipped and the output says so. `GATOR_FAST_BF16=0` (or 1) forces the
other policy; the output then says it was forced. `--quick`: 3 rounds of 1 step, no torch.compile, peak
matmuls up to 2048 only.

    .venv/bin/python bench/train_throughput.py [--batch 16] [--seq-len 256] [--rounds 6] [--no-compile] [--quick]
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import machine_lines, make_step, time_rounds, warm_up  # noqa: E402  (bench/ is on sys.path)

from gator.config import get_preset  # noqa: E402
from gator.interop.hf import to_hf  # noqa: E402
from gator.model import Transformer  # noqa: E402
from gator.runtime import describe_cpu, describe_dtype_policy, fast_dtype  # noqa: E402
from gator.train import make_config  # noqa: E402
from gator.train.metrics import measure_matmul_flops, training_flops_per_token  # noqa: E402
from gator.train.optim import make_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo", help="take the model shape from this recipe")
    ap.add_argument("--vocab-size", type=int, default=4096, help="with --recipe")
    ap.add_argument("--preset", help="a model preset instead of a recipe's shape (e.g. gatorgpt)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 1 step, no torch.compile, peak of n<=2048")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.no_compile = min(args.rounds, 3), 1, True
    peak_sizes = (1024, 2048) if args.quick else (1024, 2048, 4096)

    if args.preset:
        config, shape = get_preset(args.preset, context_length=args.seq_len), f"preset {args.preset}"
    else:
        recipe = make_config(ROOT / "recipes" / f"{args.recipe}.yaml")  # its settings for this dtype policy
        config = get_preset(recipe.model, **{**recipe.model_config, "vocab_size": args.vocab_size})
        shape = f"{args.recipe} recipe shape"
    B, T = args.batch, args.seq_len
    print(machine_lines())
    torch.manual_seed(0)
    seq = torch.randint(0, config.vocab_size, (B, T + 1))
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, -1] = -100
    cpu = torch.device("cpu")

    def gator(dtype, compiled):
        torch.manual_seed(0)
        m = Transformer(config)
        opt = make_optimizer(m, 1e-4, 0.1, (0.9, 0.95), 1e-8, cpu)
        return make_step(torch.compile(m) if compiled else m, opt, x, y, dtype, hf=False), m

    def transformers_llama(attn):
        torch.manual_seed(0)
        hf = to_hf(Transformer(config)).train()
        hf.config._attn_implementation = attn
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
        return make_step(hf, opt, x, y, None, hf=True), hf

    # bf16 configurations only where gator.runtime says this CPU runs bf16 natively (else it is emulated)
    bf16 = fast_dtype(cpu) == torch.bfloat16
    if not bf16:
        print("bf16 autocast rows and the bf16 matmul peak skipped: the policy says bf16 is not native here "
              "(it would be emulated, slower than fp32); the efficiency column is against the fp32 peak")
    configs = {
        "transformers LlamaForCausalLM fp32 eager (reference)": transformers_llama("eager")[0],
        "transformers LlamaForCausalLM fp32 sdpa": transformers_llama("sdpa")[0],
        "gator fp32": gator(None, False)[0],
    }
    if bf16:
        configs["gator bf16 autocast"] = gator(torch.bfloat16, False)[0]
    if not args.no_compile:
        configs["gator fp32 + torch.compile"] = gator(None, True)[0]
        if bf16:
            configs["gator bf16 autocast + torch.compile"] = gator(torch.bfloat16, True)[0]
    first = warm_up(configs)  # (and compilation)
    print("first-step loss (same weights, same batch): "
          + ", ".join(f"{n.split(' (')[0]}: {v:.4f}" for n, v in first.items()))
    times = time_rounds(configs, args.rounds, args.steps)

    peak_fp32 = max(measure_matmul_flops(cpu, torch.float32, n=n, seconds=0.5) for n in peak_sizes)
    peak_bf16 = (max(measure_matmul_flops(cpu, torch.bfloat16, n=n, seconds=0.5) for n in peak_sizes)
                 if bf16 else None)
    peak, peak_name = (peak_bf16, "bf16") if bf16 else (peak_fp32, "fp32")  # the peak of the fast dtype
    flops_tok = training_flops_per_token(config, Transformer(config).num_matmul_params(), T)
    ref = statistics.median(times[next(iter(configs))])
    ref_best = min(times[next(iter(configs))])
    n_params = Transformer(config).num_params()
    print(f"\nmachine: {describe_cpu()}\ndtype policy: {describe_dtype_policy()}")
    print(f"model: {shape}, {n_params / 1e6:.2f}M parameters (d_model {config.d_model}, "
          f"{config.n_layers} layers, {config.n_heads}/{config.n_kv_heads} heads, vocab {config.vocab_size}); "
          f"batch {B} x {T} tokens; {flops_tok / 1e6:.1f} MFLOP per token per training step")
    print(f"measured matmul peak: fp32 {peak_fp32 / 1e9:.0f} GFLOP/s"
          + (f", bf16 {peak_bf16 / 1e9:.0f} GFLOP/s\n" if bf16 else " (bf16 is not fast by the policy: not run)\n"))
    print(f"| {'configuration':<52} | {'tokens/s (median)':>17} | {'vs reference':>12} | {'tokens/s (best)':>15} "
          f"| {'vs ref (best)':>13} | {'GFLOP/s (best)':>14} | {'of ' + peak_name + ' peak':>12} |")
    print(f"|{'-' * 54}|{'-' * 19}|{'-' * 14}|{'-' * 17}|{'-' * 15}|{'-' * 16}|{'-' * 14}|")
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        achieved = flops_tok * B * T / best
        print(f"| {name:<52} | {B * T / med:>17,.0f} | {ref / med:>11.2f}x | {B * T / best:>15,.0f} | "
              f"{ref_best / best:>12.2f}x | {achieved / 1e9:>14.1f} | {achieved / peak:>11.0%} |")
    fastest = max((n for n in times if n.startswith("gator")), key=lambda n: ref / statistics.median(times[n]))
    speedup, target = ref / statistics.median(times[fastest]), 3.0 if bf16 else 2.0
    print(f"\ntarget (issue 17, vs the fp32 eager reference): >= {target:g}x where the policy is "
          f"{'bf16' if bf16 else 'fp32'}; fastest gator row: {fastest}, {speedup:.2f}x median: "
          + ("met" if speedup >= target else f"missed by {target - speedup:.2f}x"))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (other programs on this machine make timings noisy)")


if __name__ == "__main__":
    main()
