"""Small things the fine-tuning tests share: a tiny tokenizer, tiny base models, chat and text JSONL files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from gator.config import get_preset
from gator.model import Transformer
from gator.tokenizer import Tokenizer, add_chat_template
from gator.tokenizer.bpe import train_bpe

WORDS = ["red", "green", "blue", "yellow", "cat", "dog", "bird", "fish", "sun", "moon", "tree", "river"]
TRAIN_SETTINGS = dict(max_steps=12, micro_batch=4, batch_tokens=4 * 64 * 2, seq_len=64, eval_every=6, eval_tokens=512,
                      log_every=1, ckpt_every=6, warmup_steps=2, lr=3e-3, min_lr=3e-4, dtype="fp32", device="cpu",
                      progress=False, threads=1)


def tiny_tokenizer(chat: bool = False) -> Tokenizer:
    rng = random.Random(0)
    text = " ".join(f"{rng.choice(WORDS)} {rng.choice(['say', 'is', 'the', 'a'])}" for _ in range(3000))
    tok = train_bpe(text + " Say what?\n", 300, ["<|endoftext|>"], progress=False)
    return add_chat_template(tok) if chat else tok


def make_base(directory: Path, preset: str = "tiny-gatorgpt", chat: bool = False, seed: int = 0) -> Path:
    """A tiny untrained Gator model folder with a tokenizer (with a chat template when `chat`)."""
    tok = tiny_tokenizer(chat)
    torch.manual_seed(seed)
    Transformer(get_preset(preset, vocab_size=tok.vocab_size, context_length=64)).save_pretrained(directory, tok)
    return directory


def conversation(rng: random.Random) -> dict:
    w = rng.choice(WORDS)
    return {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w}"}]}


def write_chat(path: Path, n: int = 80, seed: int = 1) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(n)))
    return path


def write_text(path: Path, n: int = 40, seed: int = 2) -> Path:
    rng = random.Random(seed)
    lines = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))} for _ in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
