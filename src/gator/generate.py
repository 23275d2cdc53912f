"""Text generation: prefill the prompt into a KV cache, then decode one token at a time.

    prefill:  run the whole prompt once, store every layer's keys/values, sample token 1 from the last logits
    decode:   feed only the newest token; attention reads the stored keys/values; sample the next token

Sampling turns the last position's logits into a choice, in this order (the order transformers uses):
repetition penalty (CTRL, Keskar et al., 2019: divide positive logits of already-seen tokens by the
penalty, multiply negative ones), temperature (0 means greedy argmax), top-k (keep the k best),
top-p / nucleus (Holtzman et al., 2019: keep the smallest set whose probability reaches p), then draw.

A batch of prompts of different lengths is left-padded, so every row's newest token sits in the same
column; the cache masks the padding and counts positions from each row's first real token, so a row
generates exactly what it would alone.

`generate` returns finished `Completion`s; `stream` yields one `StreamEvent` per token as it is made.
Stop tokens end a row and are not included in its output; stop strings end it and the text is cut just
before the stop string (the OpenAI convention).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gator.model.cache import KVCache


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_tokens: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: int | None = None

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop strings must be non-empty")


@dataclass
class Completion:
    tokens: list[int]  # generated tokens, prompt and stop token excluded
    finish_reason: str  # "stop" (stop token or string) or "length" (max_new_tokens or context full)
    prompt_tokens: int
    text: str | None = None  # decoded text when a tokenizer was given, cut before any stop string
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamEvent:
    token: int
    text: str  # new text since the previous event ("" while a multi-byte character is incomplete)
    finish_reason: str | None = None  # set on the last event


def process_logits(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to logits (B, V); removed tokens get -inf.

    With temperature 0 only the penalty is applied (greedy decoding takes the argmax of the result).
    """
    logits = logits.float()
    if p.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if p.temperature == 0:
        return logits
    logits = logits / p.temperature
    if p.top_k is not None and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the better tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= p.top_p, float("-inf"))  # keeps at least one
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose one token per row from logits (B, V). `seen` (B, V) bool marks tokens for the penalty."""
    logits = process_logits(logits, p, seen)
    if p.temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _as_batch(model: torch.nn.Module, prompt: Any, tokenizer: Any) -> tuple[list[list[int]], bool]:
    """Normalise str | list[int] | list[str] | list[list[int]] to a list of token lists."""
    single = isinstance(prompt, str) or (isinstance(prompt, Sequence) and len(prompt) > 0
                                         and isinstance(prompt[0], int))
    if isinstance(prompt, torch.Tensor):
        prompt, single = (prompt.tolist(), prompt.dim() == 1)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise ValueError("the prompt is empty; give at least one token or one prompt")
    batch = []
    for i, pr in enumerate(prompts):
        if isinstance(pr, str):
            if tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass tokenizer=... or token ids")
            pr = tokenizer.encode(pr)
        ids = [int(t) for t in pr]
        if not ids:
            raise ValueError(f"prompt {i} is empty; give at least one token (e.g. the end-of-text token)")
        V, C = model.config.vocab_size, model.config.context_length
        if min(ids) < 0 or max(ids) >= V:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {V})")
        if len(ids) >= C:
            raise ValueError(f"prompt {i} has {len(ids)} tokens but the model's context is {C}; "
                             f"shorten it to at most {C - 1} tokens so at least one can be generated")
        batch.append(ids)
    return batch, single


@torch.inference_mode()
def _decode(model: torch.nn.Module, batch: list[list[int]], p: SamplingParams,
            decode_text: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next_tokens (B,), alive (B,) bool before this step) once per step until every row stops."""
    p.validate()
    device = next(model.parameters()).device
    B = len(batch)
    lengths = torch.tensor([len(b) for b in batch])
    T0 = int(lengths.max())
    pad = T0 - lengths
    ids = torch.zeros(B, T0, dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, T0 - len(b):] = torch.tensor(b)
    ids = ids.to(device)
    steps = min(p.max_new_tokens, model.config.context_length - T0)
    cache = KVCache.for_model(model, B, max_len=T0 + steps, pad=pad)
    generator = None
    if p.seed is not None:
        generator = torch.Generator(device=device).manual_seed(p.seed)
    seen = None
    if p.repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, ids, True)
        for i in range(B):  # padding slots are not part of the text
            seen[i, 0] = 0 in batch[i]
    stop = torch.tensor(sorted(set(p.stop_tokens)), dtype=torch.long, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    logits, _ = model(ids, cache=cache, last_only=True)
    for step in range(steps):
        nxt = sample_next(logits[:, -1], p, seen, generator)
        yield nxt, alive.clone()
        if len(stop):
            alive &= ~torch.isin(nxt, stop)
        if not bool(alive.any()) or step == steps - 1:
            return
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        logits, _ = model(nxt[:, None], cache=cache)


def generate(model: torch.nn.Module, prompt: Any, *, tokenizer: Any = None, draft: str | None = None,
             **sampling: Any) -> Completion | list[Completion]:
    """Generate from one prompt (str or list of ids) or a batch (list of those).

    Keyword arguments are SamplingParams fields: max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, stop_tokens, stop_strings, seed. Generation also stops when the context is full.
    `draft="mtp"` decodes greedily with speculative drafts from the model's multi-token-prediction
    modules (gator/speculative.py): the same tokens, fewer main-model forwards; stats report the
    acceptance rate.
    """
    p = SamplingParams(**sampling)
    p.validate()
    if p.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the text")
    batch, single = _as_batch(model, prompt, tokenizer)
    if draft is not None:
        if draft != "mtp":
            raise ValueError(f"unknown draft {draft!r}; the supported drafter is 'mtp'")
        from gator.speculative import generate_with_mtp

        results = generate_with_mtp(model, batch, p, tokenizer)
        return results[0] if single else results
    out: list[list[int]] = [[] for _ in batch]
    reason = ["length"] * len(batch)
    done = [False] * len(batch)
    stop_tokens = set(p.stop_tokens)
    t0 = time.perf_counter()
    first_token_time = None
    for nxt, _alive in _decode(model, batch, p):
        first_token_time = first_token_time or time.perf_counter() - t0
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t in stop_tokens:
                done[i], reason[i] = True, "stop"
                continue
            out[i].append(t)
            if p.stop_strings and _find_stop(tokenizer.decode(out[i]), p.stop_strings) is not None:
                done[i], reason[i] = True, "stop"
        if all(done):
            break
    elapsed = time.perf_counter() - t0
    n_new = sum(len(o) for o in out)
    results = []
    for i, toks in enumerate(out):
        text = None
        if tokenizer is not None:
            text = tokenizer.decode(toks)
            cut = _find_stop(text, p.stop_strings)
            text = text if cut is None else text[:cut]
        stats = {"seconds": elapsed, "time_to_first_token": first_token_time,
                 "tokens_per_second": n_new / elapsed if elapsed > 0 else float("inf")}
        results.append(Completion(toks, reason[i], len(batch[i]), text, stats))
    return results[0] if single else results


def stream(model: torch.nn.Module, prompt: Any, *, tokenizer: Any = None, **sampling: Any) -> Iterator[StreamEvent]:
    """Yield a StreamEvent per generated token for one prompt. Text is emitted only once it is certain:
    complete UTF-8 characters, and never a piece that could still turn out to start a stop string."""
    p = SamplingParams(**sampling)
    p.validate()
    if p.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the text")
    batch, single = _as_batch(model, prompt, tokenizer)
    if not single:
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    toks: list[int] = []
    emitted = 0  # characters of text already sent
    stop_tokens = set(p.stop_tokens)
    pending: StreamEvent | None = None
    for nxt, _ in _decode(model, batch, p):
        t = int(nxt[0])
        if pending is not None:
            yield pending
        if t in stop_tokens:
            pending = None
            yield StreamEvent(t, _flush(tokenizer, toks, emitted, p), "stop")
            return
        toks.append(t)
        if tokenizer is None:
            pending = StreamEvent(t, "")
            continue
        text = tokenizer.decode(toks)
        cut = _find_stop(text, p.stop_strings)
        if cut is not None:
            pending = None
            yield StreamEvent(t, text[emitted:cut], "stop")
            return
        safe = len(text)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            safe = len(text.rstrip("\ufffd"))
        safe = min(safe, _stop_prefix_start(text, p.stop_strings))
        pending = StreamEvent(t, text[emitted:safe])
        emitted = max(emitted, safe)
    if pending is not None:
        tail = _flush(tokenizer, toks, emitted, p) if tokenizer is not None else ""
        yield StreamEvent(pending.token, pending.text + tail, "length")


def _flush(tokenizer: Any, toks: list[int], emitted: int, p: SamplingParams) -> str:
    return tokenizer.decode(toks)[emitted:] if tokenizer is not None else ""


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_start(text: str, stops: Sequence[str]) -> int:
    """Index where a suffix of text that is a proper prefix of some stop string begins (len(text) if none)."""
    start = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if s.startswith(text[-k:]):
                start = min(start, len(text) - k)
                break
    return start
