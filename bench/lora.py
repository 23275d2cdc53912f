"""LoRA fine-tuning step: Gator's LoRA against Gator's full fine-tuning, and against transformers + PEFT on
the same model, batch and dtype, in one run.

One training step = forward + loss + backward + AdamW step (the same optimizer construction for all).
Every configuration starts from the same weights: the GatorGPT preset shape (or --preset), exported to
transformers with `to_hf` for PEFT; the adapters start with B = 0, so the first-step losses, printed
before the table, must agree. Step times come from interleaved rounds (a burst of load from other
programs hits every configuration alike); the table gives the median and the best.

Memory: optimizer-state bytes are the tensors AdamW keeps (exact). Peak memory on CPU is the peak
resident set (Linux VmHWM) of a fresh process that builds the configuration and runs a few steps, above
that process's size after its imports (weights, gradients, optimizer state and activations); on CUDA
it is torch.cuda.max_memory_allocated.

The dtypes follow gator.runtime's policy (as bench/train_throughput.py does): fp32 always, bf16 autocast
only where the policy calls bf16 fast (native on this CPU, or a GPU); elsewhere bf16 is emulated and slower
than fp32, so it runs only when asked for with --dtypes, and the output says it is emulated.
`GATOR_FAST_BF16=0` (or 1) forces the policy.

    .venv/bin/python bench/lora.py [--preset gatorgpt] [--batch 8] [--seq-len 256] [--rank 16] [--alpha 32]
                                   [--dtypes float32,bfloat16] [--rounds 5] [--no-compile]
    .venv/bin/python bench/lora.py --quick        # a tiny model, one round: checks that the bench runs
"""

from __future__ import annotations

import os

from gator.runtime import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from _common import machine_lines, make_step, time_rounds, warm_up  # noqa: E402  (bench/ is on sys.path)

from gator.config import get_preset  # noqa: E402
from gator.interop.hf import to_hf  # noqa: E402
from gator.interop.peft import target_modules  # noqa: E402
from gator.model import Transformer  # noqa: E402
from gator.model.lora import LoRAConfig, apply_lora, count_parameters  # noqa: E402
from gator.runtime import fast_dtype  # noqa: E402
from gator.train.optim import make_optimizer  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: plain fp32; bfloat16: autocast


def build(kind: str, args: argparse.Namespace, device: torch.device):
    """(model, optimizer, is_transformers) for one configuration kind: full | lora | lora-compiled | peft."""
    torch.manual_seed(0)
    config = get_preset(args.preset, context_length=args.seq_len)
    model = Transformer(config).to(device)
    lora = LoRAConfig(r=args.rank, alpha=args.alpha, targets=args.targets.split(","))
    if kind == "peft":
        import peft

        hf = to_hf(model).train().to(device)
        model = peft.get_peft_model(hf, peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                                        target_modules=target_modules("llama", lora.targets)))
    elif kind.startswith("lora"):
        apply_lora(model, lora)
    model.train()
    optimizer = make_optimizer(model, 1e-4, 0.0, (0.9, 0.95), 1e-8, device)  # trainable parameters only
    if kind == "lora-compiled":
        model = torch.compile(model)
    return model, optimizer, kind == "peft"


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = get_preset(args.preset).vocab_size
    torch.manual_seed(1)
    seq = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=device)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, -1] = -100  # transformers scores T-1 positions of labels=x; score the same ones
    return x, y


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t))


def rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process from /proc, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_memory(kind: str, dtype: str, args: argparse.Namespace) -> dict:
    """Runs in a fresh process (see main): peak memory of building `kind` and taking a few steps."""
    device = torch.device(args.device)
    # first steps load kernels and thread pools (~100 MiB on CPU): pay that on a tiny model, outside the count
    tiny = argparse.Namespace(**{**vars(args), "preset": "tiny-gatorgpt", "batch": 1, "seq_len": 16, "rank": 2})
    model, opt, hf = build(kind, tiny, device)
    make_step(model, opt, *batch(tiny, device), DTYPES[dtype], hf=hf)()
    del model, opt
    x, y = batch(args, device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one: imports do not count
    rss0 = rss_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, opt, hf = build(kind, args, device)
    step = make_step(model, opt, x, y, DTYPES[dtype], hf=hf)
    for _ in range(3):
        step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (rss_kib("VmHWM") - rss0) * 1024
    return {"peak": peak, "optimizer_state": optimizer_state_bytes(opt)}


def memory_in_child(kind: str, dtype: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--memory-child", f"{kind}:{dtype}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gatorgpt", help="model shape (the GatorGPT preset by default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--dtypes", help="comma-separated: float32 and/or bfloat16 (default: float32, plus "
                    "bfloat16 where gator.runtime calls it fast on --device)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny model, batch and rounds: check that it runs")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.preset, args.batch, args.seq_len, args.rank, args.rounds, args.steps = "tiny-gatorgpt", 2, 32, 4, 1, 1
        args.no_compile = True
    if args.memory_child:
        kind, dtype = args.memory_child.split(":")
        print(json.dumps(measure_memory(kind, dtype, args)))
        return
    argv = sys.argv[1:]
    device = torch.device(args.device)
    bf16_fast = fast_dtype(device) == torch.bfloat16
    dtypes = args.dtypes.split(",") if args.dtypes else ["float32", *(["bfloat16"] if bf16_fast else [])]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        ap.error(f"unknown dtype(s) {unknown}; choose from {', '.join(DTYPES)}")

    print(machine_lines())
    if not bf16_fast:
        print("bf16 is not fast here by the policy (it would be emulated, slower than fp32): "
              + ("bf16 rows run because --dtypes asks for them" if "bfloat16" in dtypes
                 else "bf16 rows skipped (--dtypes float32,bfloat16 runs them anyway)"))
    x, y = batch(args, device)
    kinds = {"full": "gator full fine-tuning", "lora": "gator LoRA", "peft": "transformers + PEFT LoRA (reference)"}
    if not args.no_compile:
        kinds["lora-compiled"] = "gator LoRA + torch.compile"
    configs, info = {}, {}
    for dtype in dtypes:
        for kind, label in kinds.items():
            model, opt, hf = build(kind, args, device)
            name = f"{label}, {dtype}"
            configs[name] = make_step(model, opt, x, y, DTYPES[dtype], hf=hf)
            trainable, total = count_parameters(model)
            info[name] = {"kind": kind, "dtype": dtype, "trainable": trainable, "total": total}
    first = warm_up(configs)  # (and compilation)
    print("first-step loss (same weights, same batch, B = 0): "
          + ", ".join(f"{name}: {loss:.4f}" for name, loss in first.items()))
    times = time_rounds(configs, args.rounds, args.steps)
    for name in configs:
        info[name].update(memory_in_child(info[name]["kind"], info[name]["dtype"], argv))

    config = get_preset(args.preset)
    B, T = args.batch, args.seq_len
    print(f"\nmodel: preset {args.preset} (d_model {config.d_model}, {config.n_layers} layers, {config.n_heads}/"
          f"{config.n_kv_heads} heads, vocab {config.vocab_size}); batch {B} x {T} tokens; LoRA r={args.rank}, "
          f"alpha={args.alpha:g} on {args.targets}; device {device}\n")
    print(f"| {'configuration':<48} | {'trainable':>12} | {'tokens/s (median)':>17} | {'vs PEFT':>8} | "
          f"{'tokens/s (best)':>15} | {'vs PEFT (best)':>14} | {'peak memory':>11} | {'optimizer state':>15} |")
    print(f"|{'-' * 50}|{'-' * 14}|{'-' * 19}|{'-' * 10}|{'-' * 17}|{'-' * 16}|{'-' * 13}|{'-' * 17}|")
    for dtype in dtypes:
        ref = f"{kinds['peft']}, {dtype}"
        ref_med, ref_best = statistics.median(times[ref]), min(times[ref])
        for name, ts in times.items():
            if info[name]["dtype"] != dtype:
                continue
            med, best = statistics.median(ts), min(ts)
            share = f"{info[name]['trainable'] / info[name]['total']:.2%}"
            print(f"| {name:<48} | {share:>12} | {B * T / med:>17,.0f} | {ref_med / med:>7.2f}x | "
                  f"{B * T / best:>15,.0f} | {ref_best / best:>13.2f}x | {info[name]['peak'] / 2**20:>7.1f} MiB | "
                  f"{info[name]['optimizer_state'] / 2**20:>11.1f} MiB |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other programs on this machine make timings noisy)")


if __name__ == "__main__":
    main()
