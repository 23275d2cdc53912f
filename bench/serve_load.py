"""Serving under load: `gator serve`'s continuous batching, measured over HTTP on the loopback interface.

Starts the server in this process (127.0.0.1, a free port; nothing leaves the machine) on a model folder, or
on a randomly initialised preset (the speed of a forward pass does not depend on the weights' values) with
GPT-2's tokenizer (--tokenizer; its 50,257 ids padded with unused special tokens to the preset's vocabulary),
so the server detokenises every answer as it would for a real model, then:

1. Scaling table: 1, 4, 16, 64 concurrent streaming clients (--clients), each sending --requests requests of
   --max-tokens tokens (ignore_eos, so every answer has the same length). Reports aggregate decode tokens/s,
   p50/p99 time to first token, and throughput relative to one client (the issue's target: >= 5x at 16).
2. Load test: --load-clients (100) concurrent streaming clients plus --malformed broken requests (bad JSON,
   wrong types, out-of-range values, unknown models, oversized bodies) sent alongside. Every well-formed
   request must finish with valid chunks, exactly --max-tokens tokens and `data: [DONE]`; every malformed one
   must get a 4xx in OpenAI's error shape (never a 5xx); the server must still answer /health afterwards.

Everything is bounded: a fixed number of requests and a wall-clock limit (--time-limit) for each phase.

    .venv/bin/python bench/serve_load.py                       # gatorgpt preset, 64 slots
    .venv/bin/python bench/serve_load.py --model runs/demo/best
    .venv/bin/python bench/serve_load.py --quick               # a tiny model and small settings (a smoke run)
"""

from __future__ import annotations

import os

# Before torch is imported. A server runs Python threads (the engine, uvicorn's event loop; here also the
# clients) beside torch's OpenMP workers. Spinning workers (ACTIVE) take the cores those threads need: on the
# 2-core dev machine 1 client got 33.7 tokens/s with ACTIVE and 47.1 with PASSIVE, 16 clients 183 and 290.
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402


def start_server(model_dir: Path, slots: int, queue: int):
    """uvicorn in a daemon thread on 127.0.0.1:<free port>; returns (server, base url)."""
    import uvicorn

    from gator.serve import ServeConfig, create_app, load_served_models

    models = load_served_models(model_dir, name="bench", n_slots=slots, max_waiting=queue)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(models, ServeConfig()), log_level="error"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def random_model_dir(preset: str, directory: Path, tokenizer_dir: Path | None) -> Path:
    """A randomly initialised preset, with GPT-2's tokenizer when `tokenizer_dir` holds its vocab.json and
    merges.txt (otherwise none: the server then streams tokens without text)."""
    from gator.config import get_preset
    from gator.model import Transformer
    from gator.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = Transformer(get_preset(preset))
    model.save_pretrained(directory)
    if tokenizer_dir is not None:
        ids = len(json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8")))
        extra = model.config.vocab_size - ids
        if extra < 0:
            raise SystemExit(f"the tokenizer in {tokenizer_dir} has {ids} ids, more than the preset's vocabulary "
                             f"of {model.config.vocab_size}; pick another --preset or --tokenizer")
        # every id the model can sample must decode: fill the ids past GPT-2's with unused special tokens
        specials = ["<|endoftext|>"] + [f"<|unused_{i}|>" for i in range(extra)]
        Tokenizer.from_gpt2_files(tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt", specials).save(directory)
    return directory


async def one_stream(client: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int) -> dict:
    """One streamed completion; returns its TTFT, token count and whether every chunk was valid."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, done, valid = None, None, False, True
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code, "ttft": None, "tokens": 0}
        async for line in r.aiter_lines():
            if not line:
                continue
            if not line.startswith("data: "):
                valid = False
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                valid = False
            elif chunk["choices"] and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ok": valid and done and tokens == max_tokens, "status": 200, "ttft": ttft, "tokens": tokens or 0}


MALFORMED = [
    b"{not json", b"", b"[]", b'{"model": "bench"}', b'{"model": "bench", "prompt": [1], "temperature": "hot"}',
    b'{"model": "bench", "prompt": [1], "max_tokens": -5}', b'{"model": "bench", "prompt": [1], "n": 10000}',
    b'{"model": "nope", "prompt": [1]}', b'{"model": "bench", "prompt": [1], "max_tokens": 100000000}',
    b'{"model": "bench", "prompt": [-1]}', b'{"model": "bench", "prompt": [1], "top_p": 7}',
    b'{"model": "bench", "prompt": [1], "stream": true, "stream_options": 3}', b"[" * 5000,
    b'{"model": "bench", "prompt": "' + b"x" * (2 << 20) + b'"}',
]


async def malformed(client: httpx.AsyncClient, url: str, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        body = MALFORMED[i % len(MALFORMED)]
        r = await client.post(url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
        shaped = r.status_code < 500 and set(r.json().get("error", {})) == {"message", "type", "param", "code"}
        statuses.append(r.status_code if shaped else 500 + r.status_code)
    return statuses


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


async def run_clients(url: str, clients: int, requests: int, prompt_len: int, max_tokens: int, vocab: int,
                      malformed_count: int = 0) -> dict:
    rng = random.Random(clients)
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker() -> list[dict]:
            return [await one_stream(client, url, [rng.randrange(vocab) for _ in range(prompt_len)], max_tokens)
                    for _ in range(requests)]

        t0 = time.perf_counter()
        jobs = [worker() for _ in range(clients)]
        if malformed_count:
            jobs.append(malformed(client, url, malformed_count))
        results = await asyncio.gather(*jobs)
        wall = time.perf_counter() - t0
    bad_statuses = results.pop() if malformed_count else []
    runs = [r for worker_runs in results for r in worker_runs]
    ttfts = [r["ttft"] for r in runs if r["ttft"] is not None]
    return {"clients": clients, "requests": len(runs), "ok": sum(r["ok"] for r in runs),
            "tokens": sum(r["tokens"] for r in runs), "wall": wall,
            "tps": sum(r["tokens"] for r in runs) / wall, "p50": percentile(ttfts, 0.5), "p99": percentile(ttfts, 0.99),
            "malformed": bad_statuses}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a randomly initialised --preset)")
    p.add_argument("--preset", default="gatorgpt")
    p.add_argument("--tokenizer", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/gpt2",
                   help="GPT-2 vocab.json + merges.txt for the random preset (default: ../shared/data/gpt2; "
                        "'none': serve without a tokenizer)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--requests", type=int, default=2, help="requests per client in the scaling table")
    p.add_argument("--load-clients", type=int, default=100)
    p.add_argument("--malformed", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=600, help="seconds each phase may take")
    p.add_argument("--quick", action="store_true", help="tiny model, small settings: checks that the bench runs")
    args = p.parse_args()
    if args.quick:
        args.preset, args.clients, args.requests, args.tokenizer = "tiny-gatorgpt", [1, 4], 1, Path("none")
        args.load_clients, args.malformed, args.max_tokens, args.prompt_len = 12, 20, 8, 8
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = args.tokenizer if args.tokenizer.name != "none" and args.tokenizer.is_dir() else None
        model_dir = (Path(args.model) if args.model else
                     random_model_dir(args.preset, Path(tmp) / args.preset, tokenizer_dir))
        slots = max(max(args.clients), 1)
        server, url = start_server(model_dir, slots, queue=max(args.load_clients, max(args.clients)) + 16)
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        tokenizer = "its own" if args.model else f"GPT-2's from {tokenizer_dir}" if tokenizer_dir else "none"
        print(f"model: {args.model or args.preset + ' (random weights)'}, tokenizer: {tokenizer}, {slots} slots, "
              f"{args.max_tokens} tokens per answer, prompts of {args.prompt_len} tokens, torch threads "
              f"{torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        failures = 0
        print("\n| clients | requests | aggregate tokens/s | vs 1 client | p50 TTFT (s) | p99 TTFT (s) |")
        print("|---:|---:|---:|---:|---:|---:|")
        base = None
        for c in args.clients:
            r = asyncio.run(asyncio.wait_for(run_clients(url, c, args.requests, args.prompt_len, args.max_tokens,
                                                         vocab), args.time_limit))
            base = base or r["tps"]
            failures += r["requests"] - r["ok"]
            print(f"| {c} | {r['requests']} | {r['tps']:.1f} | {r['tps'] / base:.2f}x | {r['p50']:.3f} | "
                  f"{r['p99']:.3f} |", flush=True)
        r = asyncio.run(asyncio.wait_for(run_clients(url, args.load_clients, 1, args.prompt_len, args.max_tokens,
                                                     vocab, malformed_count=args.malformed), args.time_limit))
        server_errors = [s for s in r["malformed"] if s >= 500]
        alive = httpx.get(url + "/health").status_code == 200
        print(f"\nload test: {args.load_clients} streaming clients + "
              f"{len(r['malformed'])} malformed requests in {r['wall']:.1f} s")
        print(f"  well-formed: {r['ok']}/{r['requests']} complete and valid; aggregate {r['tps']:.1f} tokens/s; "
              f"TTFT p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s")
        print(f"  malformed: {len(r['malformed']) - len(server_errors)}/{len(r['malformed'])} answered with a 4xx "
              f"OpenAI error; server {'still up' if alive else 'DOWN'}")
        server.should_exit = True
        failures += r["requests"] - r["ok"] + len(server_errors) + (not alive)
    if failures:
        print(f"FAILED: {failures} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
