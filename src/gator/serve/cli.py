"""`gator serve --model DIR`: serve a model directory (and LoRA adapters on it) over the OpenAI API, with a chat page.

    gator serve --model runs/demo/best --port 8000
    gator serve --model runs/sft/best --lora poet=runs/lora-poet --api-key "$(openssl rand -hex 16)"

It binds 127.0.0.1 (this machine only) unless --host says otherwise; serving to a network without an API
key prints a warning. The key can also come from the GATOR_API_KEY environment variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from gator.cli_args import add_model, pick, positive_int
from gator.errors import GatorError

API_KEY_ENV = "GATOR_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI API (with a chat page at /)")
    add_model(p, "model folder (config.json + model.safetensors + tokenizer), or a run folder", positional=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the model's name in the API (default: the folder's name)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=DIR",
                   help="also serve a LoRA adapter (PEFT layout) on the base model as NAME (repeatable)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="completions decoded at once (KV-cache slots)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="requests that may wait for a slot; more get 429")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=None, help="default: the context length - 1")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.set_defaults(func=cmd_serve)


def parse_loras(items: list[str]) -> dict[str, str]:
    loras: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise GatorError(f"--lora takes NAME=DIR, got {item!r}")
        if name in loras:
            raise GatorError(f"--lora name {name!r} is given twice")
        loras[name] = path
    return loras


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from gator.serve import ServeConfig, create_app, load_served_models

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this port can use the "
              f"model. Pass --api-key KEY (or set {API_KEY_ENV}).", file=sys.stderr)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    models = load_served_models(pick(args, "model"), parse_loras(args.lora), name=args.name, n_slots=args.max_batch,
                                max_waiting=args.max_queue, device=args.device, dtype=dtype)
    config = ServeConfig(api_key=api_key, max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens)
    names = ", ".join(m.name for m in models)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {names} on http://{shown}:{args.port} (chat page at /, API at /v1)", file=sys.stderr)
    uvicorn.run(create_app(models, config), host=args.host, port=args.port, log_level="warning")
    return 0
