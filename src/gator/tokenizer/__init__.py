"""Byte-level BPE tokenizer: train one on a corpus, encode and decode text, read and write common formats,
and turn conversations into token ids with a chat template.

    from gator.tokenizer import train_bpe, Tokenizer
    tok = train_bpe("../shared/data/text/the_verdict.txt", vocab_size=512, special_tokens=["<|endoftext|>"])
    tok.decode(tok.encode("Hello<|endoftext|>", allowed_special="all")) == "Hello<|endoftext|>"
    tok.encode_ordinary("<|endoftext|>")  # text from users: special-token text stays ordinary text

See docs/01-tokenizer.md for the chapter that explains it step by step.
"""

from .bpe import Tokenizer, train_bpe
from .chat import ChatTemplate, add_chat_template, apply_chat_template, chat_stop_ids
from .patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN, PATTERNS

__all__ = ["Tokenizer", "train_bpe", "ChatTemplate", "add_chat_template", "apply_chat_template", "chat_stop_ids",
           "GPT2_PATTERN", "GPT4_PATTERN", "O200K_PATTERN", "PATTERNS"]
