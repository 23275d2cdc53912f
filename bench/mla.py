"""Decoding with multi-head latent attention vs grouped-query attention at equal model width.

Models with the same width, depth, heads and MLP differ only in attention:
- MHA and GQA (n_kv_heads 2): keys and values per KV head in the cache;
- MLA: a latent of kv_lora_rank numbers plus one shared RoPE key per token per layer, decoded with the
  absorbed weights (the default), and once more with the explicit path (the latent cache up-projected to
  every head's keys and values at every step) to show what the absorption buys.

Each model prefills the same prompts into its KV cache, then decodes greedily; the table reports decode
tokens/s (new tokens / decode wall time, batch included), the cache bytes per token (bf16) computed by
the config and checked against the real cache tensors, and ratios to GQA. Weights are random: speed and
memory do not depend on them.

    .venv/bin/python bench/mla.py [--batch 8] [--prompt-len 512] [--new-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gator.config import ModelConfig
from gator.model import KVCache, Transformer


def configs(d_model: int, n_layers: int, n_heads: int, context: int) -> dict[str, ModelConfig]:
    head_dim = d_model // n_heads
    common = dict(vocab_size=1024, context_length=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                  ffn_dim=int(8 * d_model / 3) // 32 * 32, norm="rmsnorm", mlp="swiglu", positions="rope", bias=False,
                  tie_embeddings=False)
    mla = dict(attention="mla", kv_lora_rank=4 * head_dim, qk_rope_head_dim=head_dim // 2, qk_nope_head_dim=head_dim,
               v_head_dim=head_dim)  # DeepSeek-V2's proportions: latent = 4 head dims, RoPE key = half a head
    return {"MHA": ModelConfig(**common), "GQA (2 KV heads)": ModelConfig(**common, n_kv_heads=2),
            "MLA, absorbed": ModelConfig(**common, **mla), "MLA, explicit": ModelConfig(**common, **mla)}


@torch.inference_mode()
def decode_speed(model: Transformer, prompts: torch.Tensor, new_tokens: int, repeats: int) -> tuple[float, int]:
    """(decode tokens/s, real cache bytes per token)."""
    B, P = prompts.shape
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        cache = KVCache.for_model(model, B, max_len=P + new_tokens)
        logits, _ = model(prompts, cache=cache, last_only=True)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits, _ = model(nxt, cache=cache)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
        best = min(best, time.perf_counter() - t0)
    per_token = cache.nbytes() // (B * cache.max_len)
    return B * new_tokens / best, per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32",
                    choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfgs = configs(args.d_model, args.layers, args.heads, args.prompt_len + args.new_tokens)
    prompts = torch.randint(0, 1024, (args.batch, args.prompt_len), device=device)
    rows = []
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = Transformer(cfg).eval().to(device, dtype)
        if name == "MLA, explicit":
            for block in model.blocks:
                block.attn.absorb = False
        tps, real = decode_speed(model, prompts, args.new_tokens, args.repeats)
        nbytes = cfg.kv_cache_bytes_per_token(torch.tensor([], dtype=dtype).element_size())
        assert real == nbytes, f"{name}: config says {nbytes} bytes per token, the cache holds {real}"
        rows.append((name, cfg.kv_cache_bytes_per_token(2), tps, model.num_params()))
    print(f"machine: {platform.processor() or platform.machine()}, {args.device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.dtype}")
    c = cfgs["MLA, absorbed"]
    print(f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads of {args.d_model // args.heads}; "
          f"MLA: kv_lora_rank {c.kv_lora_rank}, RoPE key {c.qk_rope_head_dim}")
    print(f"batch {args.batch}, prompt {args.prompt_len} tokens prefilled, {args.new_tokens} tokens decoded greedily, "
          f"best of {args.repeats}\n")
    gqa = rows[1]
    print(f"{'attention':<17} | {'KV bytes/token (bf16)':>21} | {'vs GQA':>6} | {'decode tok/s':>12} | {'vs GQA':>6} "
          f"| {'params':>7}")
    print("-" * 86)
    for name, nbytes, tps, params in rows:
        print(f"{name:<17} | {nbytes:>21,} | {nbytes / gqa[1]:>5.2f}x | {tps:>12.0f} | {tps / gqa[2]:>5.2f}x "
              f"| {params / 1e6:>6.1f}M")


if __name__ == "__main__":
    main()
