"""The batching engine: continuous batching over a slot KV cache, for serving many requests at once.

Static batching (decode.py) starts a batch together and waits for its slowest row. A server sees
requests arrive and finish at any time, so the engine batches *iterations* instead of requests (Yu et
al., 2022, "Orca"; vLLM): every step it

    1. drops requests whose client went away (their slots are free at once),
    2. admits waiting requests while cache slots are free: each is prefilled alone into its slot and
       samples its first token (n completions of one prompt prefill once; the slot is then copied),
    3. runs ONE batched decode step for every running request: the newest token of each, at its own
       position, attending to its own slot (model/slot_cache.py),
    4. samples each request's next token with its own settings, emits it, and retires finished requests.

Decoding is memory-bound: one step reads every weight once whether it serves 1 request or 32, so batching
multiplies throughput at little cost per request. A row attends only to its own keys, so each request's
tokens are exactly what it would get alone (greedy: identical tokens).

Beyond `SamplingParams` a request may ask for OpenAI's presence/frequency penalties (subtract
presence * [count > 0] + frequency * count from the logits of tokens already generated, before the
other sampling steps) and for log-probabilities: the sampled token's log-softmax of the model's logits at
that step, the top-k alternatives, and optionally the prompt tokens' own (for `echo`).

The waiting queue is bounded: `submit` raises `QueueFullError` when it is full (a server answers 429).
The engine runs in a background thread (`start()`); `step()` can also be driven by hand (tests, and
`generate_batched`, the static API run on the engine).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gator.generate.completions import Completion, certain_end, find_stop
from gator.generate.cpu_linear import fast_cpu_linears
from gator.generate.sampling import SamplingParams, draw, process_logits, sample_next
from gator.model.slot_cache import SlotCache

log = logging.getLogger("gator.engine")


class QueueFullError(RuntimeError):
    """The engine's waiting queue is full; retry later (HTTP 429)."""


@dataclass
class Request:
    """One generation request: a prompt (token ids) and how to sample n completions of it."""
    prompt: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no log-probabilities; k >= 0: the sampled token's, plus the top k
    prompt_logprobs: bool = False  # also the log-probability of every prompt token given the ones before


@dataclass
class Event:
    """One step of one completion: a generated token and the text it completes, or the end."""
    index: int  # which of the request's n completions
    token: int | None  # None on a final event that adds no token (a stop token, an error)
    text: str  # new text since the previous event of this completion
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop", "length", "error" or "cancelled" on the last event
    error: str | None = None


class _Outbox:
    """Events for asyncio consumers, handed over once per engine step: one wake-up of each consumer's event
    loop per step (`flush`), not one per token. The loop thread then puts each event on its handle's queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[RequestHandle, Any]] = []

    def put(self, handle: RequestHandle, item: Any) -> None:
        with self._lock:
            self._items.append((handle, item))

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Any]]] = {}
        for handle, item in items:
            by_loop.setdefault(handle.loop, []).append((handle, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the consumer's event loop is gone: nobody is listening
                for handle, _ in batch:
                    handle.cancelled = True


def _deliver(batch: list[tuple[RequestHandle, Any]]) -> None:
    """Runs in the consumer's event loop: put each event on its handle's queue."""
    for handle, item in batch:
        handle._async.put_nowait(item)


class RequestHandle:
    """What `Engine.submit` returns: iterate (sync or async) over its events; `cancel()` frees its slots."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop | None = None,
                 sink: asyncio.Queue | None = None, outbox: _Outbox | None = None):
        self.request, self.n = request, request.n
        self.loop = loop
        self._own_outbox = outbox is None  # a handle made outside an engine hands its events over at once
        self._outbox = outbox if outbox is not None else _Outbox()
        self._sync: queue.Queue[Event] = queue.Queue()
        self._async: asyncio.Queue | None = sink if sink is not None else asyncio.Queue() if loop is not None else None
        self._tagged = sink is not None  # a shared sink gets (handle, event) pairs
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token_time: float | None = None  # seconds from submit to the first token
        self.prompt_logprobs: list[float | None] | None = None  # set before the first event when asked for
        self.prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
        self.generated_tokens = 0

    def _emit(self, event: Event) -> None:
        if self.first_token_time is None and event.token is not None:
            self.first_token_time = time.perf_counter() - self.submitted
        if event.token is not None:
            self.generated_tokens += 1
        if self._async is None:
            self._sync.put(event)
            return
        self._outbox.put(self, (self, event) if self._tagged else event)
        if self._own_outbox:
            self._outbox.flush()

    def cancel(self) -> None:
        """Stop generating; the engine frees this request's slots before its next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator[Event]:
        if self._async is not None:
            raise RuntimeError("this handle was submitted with an event loop; iterate it with `async for`")
        finished = 0
        while finished < self.n:
            event = self._sync.get()
            finished += event.finish_reason is not None
            yield event

    async def events(self) -> AsyncIterator[Event]:
        if self._async is None or self._tagged:
            raise RuntimeError("submit with loop=asyncio.get_running_loop() to iterate with `async for`")
        finished = 0
        while finished < self.n:
            event = await self._async.get()
            finished += event.finish_reason is not None
            yield event


class _TextStream:
    """Incremental detokenisation: emit text only once it is certain (complete UTF-8 characters, and no
    tail that could still grow into a stop string); cut the text before the first stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.tokens: list[int] = []
        self.emitted = 0  # characters already sent

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (new certain text, whether a stop string was reached)."""
        self.tokens.append(token)
        if self.tokenizer is None:
            return "", False
        text = self.tokenizer.decode(self.tokens)
        cut = find_stop(text, self.stops)
        if cut is not None:
            delta = text[self.emitted:cut]
            self.emitted = max(self.emitted, cut)
            return delta, True
        end = certain_end(text, self.stops)  # the same rule as `stream` (see gator.generate.completions)
        delta = text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta, False

    def flush(self) -> str:
        """The held-back rest, at the end of generation (no stop string completed it)."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(self.tokens)
        delta, self.emitted = text[self.emitted:], len(text)
        return delta


class _Sequence:
    """One completion running in one cache slot."""

    def __init__(self, handle: RequestHandle, index: int, slot: int, max_new: int, tokenizer: Any,
                 vocab_size: int, device: torch.device):
        r = handle.request
        p = r.sampling
        self.handle, self.index, self.slot, self.max_new = handle, index, slot, max_new
        self.params = p
        self.tokens: list[int] = []
        self.stop_tokens = set(p.stop_tokens)
        self.text = _TextStream(tokenizer, p.stop_strings)
        seed = p.seed + index if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seen = None  # tokens of prompt and output, for the repetition penalty
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(r.prompt, device=device)] = True
        self.counts = None  # how often each token was generated, for presence/frequency penalties
        if r.presence_penalty or r.frequency_penalty:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.plain = self.seen is None and self.counts is None  # no penalty: rows sample as one batch
        # rows that sample alike (plain, same settings) share one batched logits pipeline; greedy ones: argmax
        self.group = (p.temperature, p.top_k, p.top_p) if self.plain else None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (V,), with this request's penalties and sampling."""
        r = self.handle.request
        x = logits.float()
        if self.counts is not None:
            x = x - r.presence_penalty * (self.counts > 0).float() - r.frequency_penalty * self.counts
        seen = self.seen[None] if self.seen is not None else None
        return int(sample_next(x[None], self.params, seen, self.generator)[0])

    def record(self, token: int) -> None:
        self.tokens.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1


class Engine:
    """Continuous batching for one model: `submit` requests from any thread, events come back per token.

    n_slots bounds how many completions run at once (and sizes the KV cache: n_slots x max_len tokens);
    max_waiting bounds the queue of requests waiting for slots.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, *, n_slots: int = 8, max_waiting: int = 64,
                 max_len: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_len = min(max_len or self.config.context_length, self.config.context_length)
        with torch.inference_mode():
            self.cache = SlotCache.for_model(model, n_slots, max_len=self.max_len)
        self.n_slots, self.max_waiting = n_slots, max_waiting
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._running: dict[int, _Sequence] = {}  # slot -> sequence
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # counters for /metrics
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        self.steps_total = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) per step
        self._outbox = _Outbox()  # events for asyncio consumers, handed over after each phase of a step

    # -- the public side -----------------------------------------------------------------------------

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None,
               sink: asyncio.Queue | None = None) -> RequestHandle:
        """Queue a request; raises ValueError for a request that can never run, QueueFullError when full.

        Events go to the handle (iterate it), or with `loop`, to an asyncio queue of that loop: the handle's
        own (`async for ev in handle.events()`) or `sink`, shared by several handles, as (handle, event)."""
        self.check(request)
        if sink is not None and loop is None:
            raise ValueError("a sink queue needs the event loop it belongs to (loop=...)")
        handle = RequestHandle(request, loop, sink, self._outbox)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"the server is busy: {len(self._waiting)} requests are already waiting "
                                     f"(the limit is {self.max_waiting}); retry shortly")
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def check(self, request: Request) -> None:
        r, C, V = request, self.max_len, self.config.vocab_size
        r.sampling.validate()
        if not r.prompt:
            raise ValueError("the prompt is empty; give at least one token")
        if min(r.prompt) < 0 or max(r.prompt) >= V:
            raise ValueError(f"the prompt has token ids outside the vocabulary [0, {V})")
        if len(r.prompt) >= C:
            raise ValueError(f"the prompt has {len(r.prompt)} tokens but the context holds {C}; "
                             f"shorten it to at most {C - 1} tokens")
        if not 1 <= r.n <= self.n_slots:
            raise ValueError(f"n must be between 1 and {self.n_slots} (the number of cache slots), got {r.n}")
        if r.logprobs is not None and not 0 <= r.logprobs <= V:
            raise ValueError(f"logprobs must be between 0 and the vocabulary size {V}, got {r.logprobs}")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def start(self) -> Engine:
        """Run the engine loop in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gator-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop the loop; every unfinished request ends with an error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for seq in list(self._running.values()):
            self._finish(seq, "error", error="the server is shutting down")
        while self._waiting:
            h = self._waiting.popleft()
            for i in range(h.n):
                h._emit(Event(i, None, "", finish_reason="error", error="the server is shutting down"))
        self._outbox.flush()

    def _loop(self) -> None:
        with fast_cpu_linears(self.model):  # faster small-batch CPU products while serving (cpu_linear.py)
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        return
                try:
                    self.step()
                except Exception:  # never let one bad step end the loop: fail what was running, go on
                    log.exception("engine step failed")
                    for seq in list(self._running.values()):
                        self._finish(seq, "error", error="internal error while generating")
                    self._outbox.flush()

    # -- one iteration -------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones (prefill), and run one decode step for all."""
        try:
            self._admit()
            self._outbox.flush()  # first tokens go out before the decode step
            if self._running:
                self._decode()
        finally:
            self._outbox.flush()

    def _admit(self) -> None:
        for seq in [s for s in self._running.values() if s.handle.cancelled]:
            self._finish(seq, "cancelled")
        admitted = []
        with self._cond:
            self._waiting = collections.deque(h for h in self._waiting if not h.cancelled)
            free = self.n_slots - len(self._running)
            while self._waiting and self._waiting[0].n <= free:
                h = self._waiting.popleft()
                free -= h.n
                admitted.append(h)
        for h in admitted:
            slots = self._allocate(h.n)
            try:
                self._prefill(h, slots)
            except Exception as err:
                log.exception("prefill failed")
                for i, slot in enumerate(slots):
                    seq = self._running.get(slot)
                    if seq is not None:
                        self._finish(seq, "error", error=f"prefill failed: {err}")
                    else:
                        self.cache.free(slot)
                        h._emit(Event(i, None, "", finish_reason="error", error=f"prefill failed: {err}"))

    def _allocate(self, n: int) -> list[int]:
        """The n lowest free slots (low slots keep the decode range [0, highest busy] short)."""
        free = [s for s in range(self.n_slots) if s not in self._running]
        return free[:n]

    def _prefill(self, h: RequestHandle, slots: list[int]) -> None:
        r = h.request
        ids = torch.tensor([r.prompt], device=self.device)
        self.cache.free(slots[0])
        logits, _ = self.model(ids, cache=self.cache.view(slots[0], slots[0] + 1), last_only=not r.prompt_logprobs)
        self.prompt_tokens_total += len(r.prompt)
        if r.prompt_logprobs:
            self._prompt_logprobs(h, logits[0])
        for slot in slots[1:]:  # n completions of one prompt: one prefill, then copies of its keys/values
            self.cache.copy_slot(slots[0], slot)
        max_new = min(r.sampling.max_new_tokens, self.max_len - len(r.prompt))
        last = logits[0, -1]
        for i, slot in enumerate(slots):
            seq = _Sequence(h, i, slot, max_new, self.tokenizer, self.config.vocab_size, self.device)
            self._running[slot] = seq
            self._advance(seq, last, seq.choose(last))

    def _prompt_logprobs(self, h: RequestHandle, logits: torch.Tensor) -> None:
        """log p(prompt[t] | prompt[:t]) for t >= 1 (None for the first token), and the top-k at each."""
        r = h.request
        lp = logits[:-1].float().log_softmax(dim=-1)  # (T-1, V): position t predicts token t+1
        nxt = torch.tensor(r.prompt[1:], device=lp.device)
        h.prompt_logprobs = [None] + lp.gather(1, nxt[:, None])[:, 0].tolist()
        k = r.logprobs or 0
        if k:
            values, ids = lp.topk(k, dim=-1)
            h.prompt_top_logprobs = [None] + [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        else:
            h.prompt_top_logprobs = [None] + [[] for _ in r.prompt[1:]]

    def _decode(self) -> None:
        seqs = sorted(self._running.values(), key=lambda s: s.slot)
        hi = seqs[-1].slot + 1
        ids = [0] * hi
        live = [False] * hi
        for s in seqs:
            ids[s.slot] = s.tokens[-1]
            live[s.slot] = True
        ids_t = torch.tensor(ids, device=self.device)[:, None]
        logits, _ = self.model(ids_t, cache=self.cache.view(0, hi, live))
        logits = logits[:, -1]  # (hi, V)
        tokens = self._choose(seqs, logits)
        for s in seqs:
            self._advance(s, logits[s.slot], tokens[s.slot])
        self.steps_total += 1
        now = time.perf_counter()
        self._recent.append((now, len(seqs)))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()

    def _choose(self, seqs: list[_Sequence], logits: torch.Tensor) -> dict[int, int]:
        """slot -> next token for each sequence, from the step's logits (rows = slots).

        Sequences that sample alike (the same temperature, top-k and top-p, no penalties) go through the
        logits pipeline as one batch; each then draws from its own generator, so it gets the token it would
        get alone. Greedy ones take one batched argmax; sequences with penalties are processed one by one."""
        tokens: dict[int, int] = {}
        groups: dict[tuple, list[_Sequence]] = {}
        for s in seqs:
            if s.group is None:
                tokens[s.slot] = s.choose(logits[s.slot])
            else:
                groups.setdefault(s.group, []).append(s)
        for group in groups.values():
            rows = logits[torch.tensor([s.slot for s in group], device=logits.device)]
            p = group[0].params
            if p.temperature == 0:
                chosen = rows.float().argmax(dim=-1).tolist()
            else:
                uniform = torch.cat([torch.rand(1, generator=s.generator, device=rows.device) for s in group])
                chosen = draw(process_logits(rows, p).softmax(dim=-1), uniform).tolist()
            tokens.update((s.slot, t) for s, t in zip(group, chosen))
        return tokens

    def _advance(self, seq: _Sequence, logits: torch.Tensor, token: int) -> None:
        """Emit seq's next token (chosen from its logits (V,)), and retire seq if it is done."""
        if seq.handle.cancelled:
            self._finish(seq, "cancelled")
            return
        logprob, top = None, None
        k = seq.handle.request.logprobs
        if k is not None:
            lp = logits.float().log_softmax(dim=-1)  # the model's own distribution at this step
            logprob = float(lp[token])
            if k:
                values, ids = lp.topk(k)
                top = list(zip(ids.tolist(), values.tolist()))
        if token in seq.stop_tokens:
            self._finish(seq, "stop")
            return
        seq.record(token)
        self.generated_tokens_total += 1
        text, hit_stop = seq.text.push(token)
        finish = "stop" if hit_stop else "length" if len(seq.tokens) >= seq.max_new else None
        if finish == "length":
            text += seq.text.flush()
        seq.handle._emit(Event(seq.index, token, text, logprob, top, finish))
        if finish is not None:
            self._release(seq)

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        """End seq without a new token (stop token, cancel, error): emit its last event, free its slot."""
        text = seq.text.flush() if reason == "stop" else ""
        seq.handle._emit(Event(seq.index, None, text, finish_reason=reason, error=error))
        self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        self._running.pop(seq.slot, None)
        self.cache.free(seq.slot)


def generate_batched(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, tokenizer: Any = None,
                     n_slots: int = 8, **sampling: Any) -> list[Completion]:
    """The static `generate` run on the engine: every prompt (token ids) in one continuously batched run.
    Keyword arguments are SamplingParams fields; returns one Completion per prompt, in order."""
    engine = Engine(model, tokenizer, n_slots=n_slots, max_waiting=max(1, len(prompts)))
    handles = [engine.submit(Request([int(t) for t in p], SamplingParams(**sampling))) for p in prompts]
    while engine.running or engine.waiting:
        engine.step()
    results = []
    for p, h in zip(prompts, handles):
        tokens, text, reason = [], "", "length"
        for ev in h:
            if ev.token is not None:
                tokens.append(ev.token)
            text += ev.text
            reason = ev.finish_reason or reason
        results.append(Completion(tokens, reason, len(p), text if tokenizer is not None else None))
    return results
