"""Decode speed at batch 1: Gator's cached generation vs llama.cpp (llama-cpp-python), same weights, one run.

A GatorGPT-shaped model (random init, the `gatorgpt` preset unless --preset) is exported with
`export_gguf`; llama.cpp runs the GGUF file, Gator runs the model in memory. Both decode greedily from
the same prompt for the same number of new tokens (no stop token). The table reports decode tokens/s
(new tokens / wall time, prefill included), best of --repeats after one warm-up run, and where the
tokens first differ from Gator fp32's (a random-init model's logits are nearly flat, so a different
summation order can flip a near-tie). Rows: F32 weights with an f32 KV cache (like for like with Gator
fp32), F32 and Q8_0 weights with llama.cpp's default f16 KV cache, and Gator in bf16 for reference.

Needs llama-cpp-python: run it with the deploy venv that `make test-deploy` builds:

    .venv-deploy/bin/python bench/decode_llamacpp.py [--preset gatorgpt] [--new-tokens 128] [--threads 2]
"""

from __future__ import annotations

from gator.runtime import choose_omp_wait_policy

choose_omp_wait_policy()  # before torch is imported: see gator/runtime.py

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gator.config import get_preset  # noqa: E402
from gator.generate import generate  # noqa: E402
from gator.interop.gguf import export_gguf  # noqa: E402
from gator.model import Transformer  # noqa: E402
from gator.tokenizer import train_bpe  # noqa: E402

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "the_verdict.txt"


def best_of(fn, repeats: int) -> tuple[float, list[int]]:
    """The shortest of `repeats` timed runs, after one untimed warm-up run (llama.cpp allocates its compute
    graph on first use; Gator picks its matmul formulations on first use)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def llamacpp_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens: evaluate the prompt, then one token per step (argmax of the last position's logits,
    read straight from llama.cpp: without logits_all, llama-cpp-python keeps no copy of them)."""
    import llama_cpp

    vocab = llm.n_vocab()
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        token = int(np.argmax(logits))
        out.append(token)
        llm.eval([token])
    return out


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gatorgpt")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    torch.manual_seed(0)
    model = Transformer(get_preset(args.preset)).eval()
    tok = train_bpe(TEXT, 512, special_tokens=["<|endoftext|>"], progress=False)  # the file needs a vocabulary
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    n = args.new_tokens
    ctx = args.prompt_len + n + 1
    print(f"machine: {platform.machine()}, {threads} threads, torch {torch.__version__}, llama-cpp-python "
          f"{llama_cpp.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average at start: "
          f"{os.getloadavg()[0]:.2f}; model: {args.preset} ({model.num_params() / 1e6:.1f}M params)")
    print(f"batch 1, greedy, prompt {args.prompt_len} tokens, {n} new tokens, decode tokens/s, "
          f"best of {args.repeats}\n")

    gator32_s, gator32 = best_of(lambda: generate(model, prompt, max_new_tokens=n, temperature=0).tokens, args.repeats)
    model16 = Transformer(model.config).eval().to(torch.bfloat16)
    model16.load_state_dict(model.state_dict())
    gator16_s, _ = best_of(lambda: generate(model16, prompt, max_new_tokens=n, temperature=0).tokens, args.repeats)

    rows = [("gator fp32", gator32_s, gator32), ("gator bf16", gator16_s, None)]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, f32_cache in (("f32", True), ("f32", False), ("q8_0", False)):
            path = export_gguf(model, Path(tmp) / f"m-{kind}.gguf", tok, type=kind, force=True)
            kw = dict(type_k=0, type_v=0) if f32_cache else {}
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_threads=threads,
                                  n_threads_batch=threads, verbose=False, **kw)
            s, out = best_of(lambda llm=llm: llamacpp_greedy(llm, prompt, n), args.repeats)
            rows.append((f"llama.cpp {kind.upper()}, {'f32' if f32_cache else 'f16'} KV", s, out))
            del llm

    print(f"{'engine':<26} | {'tokens/s':>9} | {'vs gator fp32':>13} | same tokens as gator fp32")
    print("-" * 80)
    for name, seconds, out in rows:
        same = "-" if out is None else ("yes" if out == gator32 else
                                        f"first {next((i for i, (a, b) in enumerate(zip(out, gator32)) if a != b), n)}")
        print(f"{name:<26} | {n / seconds:>9.1f} | {gator32_s / seconds:>12.2f}x | {same}")


if __name__ == "__main__":
    main()
