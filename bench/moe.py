"""MoE layer forward+backward: Gator's sorted dispatch vs a naive per-token loop vs a dense SwiGLU.

One DeepSeekMoE layer (shared + routed SwiGLU experts, sigmoid top-k routing) trained for one step on a
batch of tokens, in the same run:

- gator dispatch: assignments sorted by expert, one grouped matmul per projection (`grouped_mm`);
- gator, one matmul per expert: the fallback used where grouped_mm has no kernel;
- naive per-token loop: for each token, for each chosen expert, a SwiGLU (what the definition says);
- dense SwiGLU with the same active parameters: hidden width (shared + top_k) * moe_ffn_dim, i.e. what
  one token multiplies in the MoE layer, without routing.

All MoE rows compute the same function (outputs checked equal). The naive loop is timed on fewer tokens
(it is per-token work, so tokens/s does not depend on how many). Ratios are relative to gator dispatch.

    .venv/bin/python bench/moe.py [--tokens 2048] [--d-model 512] [--experts 64] [--top-k 6] [--ffn 256] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.model import moe as moe_mod
from gator.model.layers import SwiGLU
from gator.model.moe import MoE


def naive_forward(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Route and run every token on its own: a Python loop over tokens and their chosen experts."""
    flat = x.reshape(-1, x.shape[-1])
    weights, idx, _ = layer.router(flat)
    gate_up, down = layer.experts.gate_up.unbind(0), layer.experts.down.unbind(0)  # per-expert matrices
    rows = []
    for t in range(flat.shape[0]):
        y = layer.shared(flat[t])
        for w, e in zip(weights[t], idx[t].tolist()):
            gate, up = (gate_up[e] @ flat[t]).chunk(2)
            y = y + w * (down[e] @ (F.silu(gate) * up))
        rows.append(y)
    return torch.stack(rows).view_as(x)


def time_step(fn, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """Best wall time of forward + backward."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        (fn(x) * grad).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--naive-tokens", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--shared", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = get_preset("deepseek-tiny", d_model=args.d_model, moe_routed_experts=args.experts, moe_top_k=args.top_k,
                     moe_shared_experts=args.shared, moe_ffn_dim=args.ffn, moe_groups=1, moe_top_groups=1)
    layer = MoE(cfg).to(device, dtype)
    dense = SwiGLU(cfg, ffn_dim=(args.shared + args.top_k) * args.ffn).to(device, dtype)
    x = torch.randn(1, args.tokens, args.d_model, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    xs, gs = x[:, :args.naive_tokens].detach().requires_grad_(), g[:, :args.naive_tokens]

    def per_expert(inp):
        saved = set(moe_mod._GROUPED_MM_FAILED)
        moe_mod._GROUPED_MM_FAILED.add((inp.device.type, inp.dtype))  # force the one-matmul-per-expert path
        try:
            return layer(inp)
        finally:
            moe_mod._GROUPED_MM_FAILED.clear()
            moe_mod._GROUPED_MM_FAILED.update(saved)

    with torch.no_grad():
        ref = naive_forward(layer, xs)
        for fn in (layer, per_expert):
            err = (fn(xs) - ref).abs().max().item()
            assert err < (1e-4 if dtype == torch.float32 else 5e-2), f"dispatch differs from the naive loop: {err}"
    grouped = (moe_mod._GROUPED_MM_FAILED.isdisjoint({(device.type, dtype)}) and hasattr(F, "grouped_mm"))
    rows = [("gator dispatch" + (" (grouped_mm)" if grouped else " (no grouped_mm kernel)"),
             args.tokens / time_step(layer, x, g, args.repeats)),
            ("gator, one matmul per expert", args.tokens / time_step(per_expert, x, g, args.repeats)),
            ("naive per-token loop", args.naive_tokens / time_step(lambda t: naive_forward(layer, t), xs, gs, 1)),
            (f"dense SwiGLU, same active params (ffn {(args.shared + args.top_k) * args.ffn})",
             args.tokens / time_step(dense, x, g, args.repeats))]
    active = 3 * args.d_model * args.ffn * (args.shared + args.top_k)
    total = 3 * args.d_model * args.ffn * (args.shared + args.experts)
    print(f"machine: {platform.processor() or platform.machine()}, {args.device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.dtype}")
    print(f"MoE layer: d_model {args.d_model}, {args.experts} routed experts (top-{args.top_k}) + "
          f"{args.shared} shared, expert ffn {args.ffn}; {total / 1e6:.1f}M expert params, "
          f"{active / 1e6:.2f}M active per token")
    print(f"forward + backward, {args.tokens} tokens (naive loop: {args.naive_tokens}), best of {args.repeats}\n")
    base = rows[0][1]
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}} | {'tokens/s':>10} | {'vs gator dispatch':>17}")
    print("-" * (width + 33))
    for name, tps in rows:
        print(f"{name:<{width}} | {tps:>10.0f} | {tps / base:>16.2f}x")


if __name__ == "__main__":
    main()
