"""Perplexity and bits per byte of a language model over a text, with a strided sliding window.

A model assigns each token x_t a probability p(x_t | x_<t). Over N scored tokens the mean negative log
likelihood (in nats) is NLL = -(1/N) sum_t log p(x_t | x_<t), and

    perplexity    = exp(NLL)                        (the "effective number of choices" per token)
    bits per byte = N * NLL / (ln 2 * B)            (B = UTF-8 bytes of the scored text)

Perplexity depends on the tokenizer (bigger tokens, fewer and harder predictions); bits per byte does not,
so it compares models with different vocabularies. A model sees at most `context_length` tokens, so a long
text is scored in windows: each window scores `stride` new tokens and conditions them on up to
context_length - stride earlier tokens (stride = context_length: disjoint chunks, fastest, least context;
stride = 1: every token gets a full window, slowest). This is the strided evaluation described in Hugging
Face's "Perplexity of fixed-length models" guide. The first token has nothing before it and is not scored
unless a `bos_id` is given to put in front.

The model is anything with `logits, loss = model(ids)` for LongTensor ids of shape (B, T), logits (B, T, V),
and `model.config.context_length`; the tokenizer anything with encode(str) -> list[int] and decode.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class TokenizerLike(Protocol):
    """What evaluation needs from a tokenizer (gator.tokenizer.Tokenizer is one)."""

    def encode_ordinary(self, text: str) -> list[int]: ...  # text is data: never control tokens

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float  # total negative log likelihood in nats over the scored tokens
    n_tokens: int  # tokens scored
    n_bytes: int  # UTF-8 bytes of the text those tokens cover

    @property
    def nll(self) -> float:
        """Mean negative log likelihood per token, in nats (the usual cross-entropy loss)."""
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / (math.log(2) * self.n_bytes)


def context_length_of(model: torch.nn.Module, context_length: int | None = None) -> int:
    """The longest input the model takes: the argument if given, else model.config.context_length."""
    if context_length is None:
        context_length = getattr(getattr(model, "config", None), "context_length", None)
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError("pass context_length=... or give the model a config.context_length")
    return context_length


def windows(n_ids: int, context_length: int, stride: int, first_target: int = 1) -> list[tuple[int, int, int]]:
    """(input start, input end, new targets) for each window over ids[0:n_ids].

    A window feeds ids[start:end] (at most context_length tokens) and predicts ids[start+1:end+1]; only its
    last `n_new` predictions are new, and together the windows score positions first_target..n_ids-1
    exactly once each.
    """
    if not 1 <= stride <= context_length:
        raise ValueError(f"stride must be between 1 and the context length {context_length}, got {stride}")
    out = []
    target = first_target  # the next position to score
    while target < n_ids:
        target_end = min(target + stride, n_ids)  # this window scores positions target..target_end-1
        end = target_end - 1  # the input stops one before the last scored position
        start = max(0, end - context_length)
        out.append((start, end, target_end - target))
        target = target_end
    return out


@torch.no_grad()
def token_nll(model: torch.nn.Module, ids: list[int], context_length: int | None = None,
              stride: int | None = None, batch_size: int = 8,
              device: str | torch.device | None = None, progress: bool = False) -> tuple[float, int]:
    """Sum of -log p(ids[t] | earlier ids in its window) over t = 1..len(ids)-1, and the count of those t.

    Windows of the same shape (all but the first few and the last) run `batch_size` at a time; `progress`
    shows a bar over the scored tokens."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    length = context_length_of(model, context_length)
    stride = stride or max(1, length // 2)
    device = device or next(model.parameters()).device
    total, count = 0.0, 0
    pending = deque(windows(len(ids), length, stride))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(ids) - 1, desc="perplexity", unit="tok", disable=not progress, leave=False,
               dynamic_ncols=True)
    while pending:
        start, end, n_new = pending[0]
        shape = (end - start, n_new)
        batch = []
        while pending and len(batch) < batch_size and (pending[0][1] - pending[0][0], pending[0][2]) == shape:
            batch.append(pending.popleft())
        x = torch.tensor([ids[s:e] for s, e, _ in batch], dtype=torch.long, device=device)
        y = torch.tensor([ids[e + 1 - n_new:e + 1] for _, e, _ in batch], dtype=torch.long, device=device)
        logits = model(x)[0][:, -n_new:, :].float()  # only the predictions of the new targets
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += n_new * len(batch)
        bar.update(n_new * len(batch))
    bar.close()
    return total, count


def token_bytes(tokenizer: TokenizerLike, ids: list[int]) -> int:
    """How many bytes of text some tokens stand for: exact with a byte-level tokenizer's decode_bytes."""
    if hasattr(tokenizer, "decode_bytes"):
        return len(tokenizer.decode_bytes(ids))
    return len(tokenizer.decode(ids).encode("utf-8"))


def perplexity(model: torch.nn.Module, tokenizer: TokenizerLike, text: str, context_length: int | None = None,
               stride: int | None = None, bos_id: int | None = None, batch_size: int = 8,
               device: str | torch.device | None = None, progress: bool = False) -> PerplexityResult:
    """Perplexity and bits per byte of `model` on `text` (see the module docstring for the windows)."""
    ids = list(tokenizer.encode_ordinary(text))
    n_bytes = len(text.encode("utf-8"))
    if bos_id is not None:
        ids = [bos_id, *ids]  # every token of the text now has something before it
    elif ids:
        n_bytes -= token_bytes(tokenizer, ids[:1])  # the first token is not scored
    if len(ids) < 2:
        raise ValueError("the text is too short to score: it needs at least two tokens (or a bos_id)")
    was_training = model.training
    model.eval()
    try:
        nll_sum, n_tokens = token_nll(model, ids, context_length, stride, batch_size, device, progress)
    finally:
        model.train(was_training)
    return PerplexityResult(nll_sum, n_tokens, max(1, n_bytes))
