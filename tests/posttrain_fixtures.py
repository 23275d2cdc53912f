"""Helpers for the post-training tests: a byte-level chat tokenizer, a tiny model folder, arithmetic data,
and the settings that make a training run small and exact (fp32 on CPU, no progress bar)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gator.config import get_preset
from gator.model import Transformer
from gator.tokenizer import Tokenizer, add_chat_template

RUN = dict(model="tiny-gatorgpt", micro_batch=2, lr=3e-3, min_lr=3e-4, warmup_steps=0, schedule="constant",
           eval_every=1000, log_every=1, ckpt_every=1000, dtype="fp32", progress=False, peak_flops=1e12,
           grad_clip=0.0, weight_decay=0.0)


def byte_chat_tokenizer() -> Tokenizer:
    """256 byte tokens + <|endoftext|>, with the ChatML markers added: vocab 259."""
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens=["<|endoftext|>"])
    return add_chat_template(tok)


def tiny_model_dir(path: Path, tok: Tokenizer, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    fields = dict(vocab_size=tok.vocab_size, context_length=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                  ffn_dim=64, init_std=0.1)
    fields.update(overrides)
    Transformer(get_preset("tiny-gatorgpt", **fields)).save_pretrained(path, tok)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metrics(run_dir: Path, key: str = "loss") -> dict[int, dict]:
    """step -> the training record of that step (the records that hold `key`)."""
    rows = map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r for r in rows if key in r}
