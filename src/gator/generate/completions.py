"""`generate` and `stream`: run a token source and turn its tokens into completions.

A token source yields (row, token) pairs: `decode.decode` (batched KV-cached sampling) or
`speculative.mtp_decode` (greedy with multi-token-prediction drafts). This file is the one place that
decides when a row is finished and what its text is:

- a stop token ends a row and is not part of its output;
- a stop string ends it, and the text is cut just before the stop string (the OpenAI convention);
- otherwise a row ends after its own budget: max_new_tokens, or what fits in its context
  (context_length - its prompt length), whatever the other rows of the batch do.

`generate` returns finished `Completion`s. `stream` yields one `StreamEvent` per token as it is made; its
text is released only once it is certain: complete UTF-8 characters, never a piece that could still
turn out to start a stop string. So the streamed pieces add up to exactly the text `generate` returns.
Generation runs inside `fast_cpu_linears` (gator/generate/cpu_linear.py): faster small-batch products on
CPU, for this call only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import torch

from gator.generate.cpu_linear import fast_cpu_linears
from gator.generate.decode import decode
from gator.generate.prompts import as_batch, budgets
from gator.generate.sampling import SamplingParams
from gator.generate.speculative import check_mtp_drafts, mtp_decode


@dataclass
class Completion:
    tokens: list[int]  # generated tokens, prompt and stop token excluded
    finish_reason: str  # "stop" (stop token or string) or "length" (max_new_tokens or context full)
    prompt_tokens: int
    text: str | None = None  # decoded text when a tokenizer was given, cut before any stop string
    stats: dict[str, Any] = field(default_factory=dict)  # the call's seconds and tokens/s; this row's
    # time_to_first_token; draft counts with draft="mtp"


@dataclass
class StreamEvent:
    token: int
    text: str  # new text since the previous event ("" while a multi-byte character is incomplete)
    finish_reason: str | None = None  # set on the last event


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def certain_end(text: str, stops: Sequence[str]) -> int:
    """How much of text (decoded so far) can be released: not a trailing incomplete UTF-8 character
    (decoded as U+FFFD until its last byte arrives), and not a suffix that could start a stop string."""
    end = len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):  # the longest suffix that is a proper prefix of s
            if s.startswith(text[end - k:end]):
                end -= k
                break
    return end


class Row:
    """One prompt's progress: its tokens, why it finished, and how much of its text was streamed."""

    def __init__(self, prompt_tokens: int, budget: int, p: SamplingParams, tokenizer: Any, streaming: bool):
        self.prompt_tokens, self.budget, self.p, self.tokenizer = prompt_tokens, budget, p, tokenizer
        self.stop_tokens = set(p.stop_tokens)
        self.track_text = tokenizer is not None and (streaming or bool(p.stop_strings))
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.emitted = 0  # characters of text already streamed
        self.time_to_first_token: float | None = None

    def add(self, token: int) -> StreamEvent:
        """Take the next token; return what a stream sends for it (the finish reason on the last one)."""
        if token in self.stop_tokens:
            self.finish_reason = "stop"
            if not self.track_text:
                return StreamEvent(token, "", "stop")
            text = self._decoded()
            return StreamEvent(token, self._release(len(text), text), "stop")
        self.tokens.append(token)
        if not self.track_text:
            if len(self.tokens) == self.budget:
                self.finish_reason = "length"
            return StreamEvent(token, "", self.finish_reason)
        text = self._decoded()
        cut = find_stop(text, self.p.stop_strings)
        if cut is not None:
            self.finish_reason = "stop"
            return StreamEvent(token, self._release(cut, text), "stop")
        if len(self.tokens) == self.budget:
            self.finish_reason = "length"
            return StreamEvent(token, self._release(len(text), text), "length")
        return StreamEvent(token, self._release(certain_end(text, self.p.stop_strings), text))

    def text(self) -> str | None:
        """The completion's text: all tokens decoded, cut before the first stop string."""
        if self.tokenizer is None:
            return None
        text = self._decoded()
        cut = find_stop(text, self.p.stop_strings)
        return text if cut is None else text[:cut]

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.tokens)

    def _release(self, end: int, text: str) -> str:
        """The part of text between what was already streamed and `end`."""
        piece = text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return piece


class _Call:
    """One call of generate or stream: the checked prompts, each row's progress, the token source."""

    def __init__(self, model: torch.nn.Module, prompt: Any, tokenizer: Any, draft: str | None,
                 sampling: dict[str, Any], streaming: bool):
        self.p = p = SamplingParams(**sampling)
        p.validate()
        if p.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the text")
        if draft not in (None, "mtp"):
            raise ValueError(f"unknown draft {draft!r}; the supported drafter is 'mtp'")
        if draft == "mtp":
            check_mtp_drafts(model, p)
        self.model, self.draft = model, draft
        self.batch, self.single = as_batch(prompt, model.config, tokenizer)
        self.budgets = budgets(self.batch, p.max_new_tokens, model.config.context_length)
        self.rows = [Row(len(ids), n, p, tokenizer, streaming) for ids, n in zip(self.batch, self.budgets)]
        self.source_stats: list[dict[str, Any]] = [{} for _ in self.batch]
        self.seconds = 0.0

    def events(self) -> Iterator[tuple[int, StreamEvent]]:
        """Run the token source; yield (row, event) for every token a row takes, until every row is finished."""
        done = [False] * len(self.rows)  # the token source reads this between steps
        if self.draft == "mtp":
            source = mtp_decode(self.model, self.batch, self.budgets, done, self.source_stats)
        else:
            source = decode(self.model, self.batch, self.p, self.budgets, done)
        t0 = time.perf_counter()
        with fast_cpu_linears(self.model), closing(source):
            for i, token in source:
                row = self.rows[i]
                if row.finish_reason is not None:  # a drafted token after the row's end
                    continue
                if row.time_to_first_token is None:
                    row.time_to_first_token = time.perf_counter() - t0
                event = row.add(token)
                done[i] = row.finish_reason is not None
                self.seconds = time.perf_counter() - t0
                yield i, event
        if not all(done):
            raise RuntimeError("the token source ended before every row was finished")

    def completions(self) -> list[Completion]:
        n_new = sum(len(row.tokens) for row in self.rows)
        tps = n_new / self.seconds if self.seconds > 0 else float("inf")
        return [Completion(row.tokens, row.finish_reason or "length", row.prompt_tokens, row.text(),
                           {"seconds": self.seconds, "time_to_first_token": row.time_to_first_token,
                            "tokens_per_second": tps, **stats})
                for row, stats in zip(self.rows, self.source_stats)]


def generate(model: torch.nn.Module, prompt: Any, *, tokenizer: Any = None, draft: str | None = None,
             **sampling: Any) -> Completion | list[Completion]:
    """Generate from one prompt (str or token ids) or a batch (a list of those, or a 2-D array).

    Keyword arguments are SamplingParams fields: max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, stop_tokens, stop_strings, seed. Each row also stops when its context is full.
    `draft="mtp"` decodes greedily with speculative drafts from the model's multi-token-prediction
    modules (gator/generate/speculative.py): the same tokens, fewer main-model forwards; stats report
    the acceptance rate.
    """
    call = _Call(model, prompt, tokenizer, draft, sampling, streaming=False)
    for _ in call.events():
        pass
    results = call.completions()
    return results[0] if call.single else results


def stream(model: torch.nn.Module, prompt: Any, *, tokenizer: Any = None, draft: str | None = None,
           **sampling: Any) -> Iterator[StreamEvent]:
    """Yield a StreamEvent per generated token for one prompt (arguments as for `generate`).

    The texts of the events add up to the text `generate` returns; a piece is released only when it is
    certain (complete UTF-8 characters, not a possible start of a stop string)."""
    call = _Call(model, prompt, tokenizer, draft, sampling, streaming=True)
    if not call.single:
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    return (event for _, event in call.events())
