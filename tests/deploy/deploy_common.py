"""Helpers shared by the deployment checks (tests/deploy/): the text, the tokenizer, Gator's greedy output,
a free loopback port, and the list of measured numbers printed at the end of the run."""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = ROOT.parent / "shared" / "data" / "text" / "the_verdict.txt"
REPORT: list[str] = []

VARIED_TEXTS = [
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough",
    "Numbers: 0 7 42 1234567 3.14159 1,000,000 and 2024-11-25.",
    "Whitespace:  two  spaces,   three,\ttab,\t\ttwo tabs,\n\nnew lines\n \n   trailing   ",
    "Unicode: café naïve Zürich résumé — 日本語のテキスト, Ελληνικά, русский, emoji 🐊🦎🎉, ﬁ ligature",
    "Contractions: don't, I'M, you'll, we've, they'd, it's, O'Neil's",
    "special<|endoftext|>tokens<|im_start|>user\nhi<|im_end|>\n",
    "",
    " ",
    "\n",
    "punctuation!!! ??? ... ;;; (((brackets))) {\"json\": [1, 2]}",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_tokenizer(pattern: str = "gpt2", vocab_size: int = 512):
    from gator.tokenizer import train_bpe
    from gator.tokenizer.chat import add_chat_template

    tok = train_bpe(TEXT, vocab_size, special_tokens=["<|endoftext|>"], pattern=pattern, progress=False)
    return add_chat_template(tok)


def gator_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """Gator's own greedy continuation, exactly n tokens (no stop token)."""
    from gator.generate import generate

    return list(generate(model, prompt_ids, max_new_tokens=n, temperature=0).tokens)
