"""Byte-level BPE tokenizer: train one on a corpus, encode and decode text, read and write common formats.

    from gator.tokenizer import train_bpe, Tokenizer
    tok = train_bpe("../shared/data/text/the_verdict.txt", vocab_size=512, special_tokens=["<|endoftext|>"])
    tok.decode(tok.encode("Hello<|endoftext|>")) == "Hello<|endoftext|>"

See docs/01-tokenizer.md for the chapter that explains it step by step.
"""

from .bpe import Tokenizer, train_bpe
from .patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN, PATTERNS

__all__ = ["Tokenizer", "train_bpe", "GPT2_PATTERN", "GPT4_PATTERN", "O200K_PATTERN", "PATTERNS"]
