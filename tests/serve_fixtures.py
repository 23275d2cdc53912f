"""Helpers for the serving tests: a tiny model directory with a tokenizer (and chat template), and a real
uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

from gator.config import get_preset
from gator.model import Transformer
from gator.tokenizer import add_chat_template, train_bpe

CORPUS = ("The quick brown fox jumps over the lazy dog. A gator swims in the river and basks in the sun. "
          "Language models read tokens and predict the next one. Hello world, hello gator! ") * 20


def tiny_tokenizer(chat: bool = True):
    tok = train_bpe(CORPUS, vocab_size=300, special_tokens=["<|endoftext|>"], progress=False, workers=1)
    return add_chat_template(tok) if chat else tok


def tiny_model(tok, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    # A larger init spread makes a random model's greedy output varied rather than one repeated token.
    fields = dict(vocab_size=tok.vocab_size, context_length=128, init_std=0.3)
    fields.update(overrides)
    return Transformer(get_preset("tiny-gatorgpt", **fields)).eval()


def make_model_dir(directory: Path, chat: bool = True, seed: int = 0, never_stop: bool = False, **overrides) -> Path:
    """A model folder; `never_stop` zeroes the (tied) output rows of the special tokens, so their logit is 0
    while the best of the other ~300 is far above it: greedy decoding then never ends a turn by itself."""
    tok = tiny_tokenizer(chat)
    model = tiny_model(tok, seed, **overrides)
    if never_stop:
        with torch.no_grad():
            for i in tok.special_ids.values():
                model.lm_head.weight[i] = 0
    model.save_pretrained(directory, tokenizer=tok)
    return directory


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a daemon thread; `stop()` shuts it down."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
