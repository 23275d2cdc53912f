"""What the server does with a completion or chat request, from the parsed body to the response.

    body -> model (404 if unknown) -> prompt token ids (chat: the model's chat template; user text is
    always ordinary text, never control tokens) -> limits (400 with the numbers) -> one engine Request per
    prompt (n completions each; 429 when the queue is full) -> events -> one JSON response, or server-sent
    events: `data: {chunk}` per token and a final `data: [DONE]`.

Response shapes follow OpenAI: `text_completion` / `chat.completion` objects with `choices` and `usage`;
streamed `text_completion` / `chat.completion.chunk` chunks (the first chat delta carries the role, the
last chunk of each choice its finish_reason, and with stream_options.include_usage a final chunk with
empty choices carries the usage). Log-probabilities are the model's log-softmax at each step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request as HTTPRequest

from gator.generate.engine import Event, QueueFullError, Request, RequestHandle
from gator.generate.sampling import SamplingParams
from gator.serve.metrics import Metrics
from gator.serve.models import ServedModel
from gator.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, SamplingRequest


@dataclass
class Limits:
    max_prompt_tokens: int | None = None  # None: the context length - 1


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]] | None]] = field(default_factory=list)
    finish_reason: str | None = None


class Job:
    """One HTTP generation request: its engine requests, and the choices their events build."""

    def __init__(self, kind: str, served: ServedModel, body: SamplingRequest, prompts: list[list[int]],
                 requests: list[Request], echo: list[str] | None = None):
        self.kind, self.served, self.body = kind, served, body
        self.prompts, self.requests, self.echo = prompts, requests, echo
        self.n = body.n
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.choices = [_Choice() for _ in range(len(prompts) * self.n)]
        self.handles: list[RequestHandle] = []
        self.queue: asyncio.Queue = asyncio.Queue()

    # -- running ----------------------------------------------------------------------------------

    def submit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for r in self.requests:
                self.handles.append(self.served.engine.submit(r, loop=loop, sink=self.queue))
        except QueueFullError as err:
            self.cancel()
            raise APIError(429, str(err), type="rate_limit_error", code="rate_limit_exceeded") from None
        except ValueError as err:
            self.cancel()
            raise APIError(400, str(err)) from None

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    def index(self, handle: RequestHandle, event: Event) -> int:
        return self.handles.index(handle) * self.n + event.index

    async def events(self, http: HTTPRequest | None = None) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) until every choice finished. With `http`, a client that went away cancels."""
        remaining = len(self.choices)
        checked = time.monotonic()
        while remaining:
            if http is None:  # streaming: Starlette itself notices a client that went away
                handle, event = await self.queue.get()
            else:
                try:
                    handle, event = await asyncio.wait_for(self.queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    handle = event = None
            if http is not None and time.monotonic() - checked > 0.25:  # is the client still there?
                checked = time.monotonic()
                if await http.is_disconnected():
                    self.cancel()
                    return
            if event is None:
                continue
            i = self.index(handle, event)
            c = self.choices[i]
            if event.error:
                self.cancel()
                raise APIError(500, f"generation failed: {event.error}", type="server_error")
            if event.token is not None:
                c.tokens.append(event.token)
                if event.logprob is not None:
                    c.logprobs.append((event.token, event.logprob, event.top_logprobs))
            c.text.append(event.text)
            if event.finish_reason is not None:
                c.finish_reason = event.finish_reason
                remaining -= 1
            yield i, event

    def observe(self, metrics: Metrics) -> None:
        for h in self.handles:
            if h.first_token_time is not None:
                metrics.ttft.labels(self.served.name).observe(h.first_token_time)

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- log-probabilities in OpenAI's two formats --------------------------------------------------

    def _token_text(self, token: int) -> str:
        return self.served.tokenizer.decode([token]) if self.served.tokenizer is not None else str(token)

    def _token_bytes(self, token: int) -> list[int]:
        tok = self.served.tokenizer
        return list(tok.decode_bytes([token])) if tok is not None else []

    def completion_logprobs(self, entries: list[tuple[int, float | None, list[tuple[int, float]] | None]],
                            offset: int = 0) -> dict[str, Any]:
        """The legacy completions format: parallel lists of tokens, their logprobs, top alternatives, offsets."""
        tokens, lps, tops, offsets = [], [], [], []
        for token, lp, top in entries:
            text = self._token_text(token)
            tokens.append(text)
            lps.append(lp)
            tops.append(None if top is None else self._top_dict(top))
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def _top_dict(self, top: list[tuple[int, float]]) -> dict[str, float]:
        """{token text: logprob}, best first; two tokens that print alike keep the better one's value."""
        out: dict[str, float] = {}
        for t, v in top:
            out.setdefault(self._token_text(t), v)
        return out

    def chat_logprobs(self, entries: list[tuple[int, float, list[tuple[int, float]] | None]]) -> dict[str, Any]:
        def one(token: int, lp: float) -> dict[str, Any]:
            return {"token": self._token_text(token), "logprob": lp, "bytes": self._token_bytes(token)}

        return {"content": [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in (top or [])]}
                            for t, lp, top in entries], "refusal": None}

    def _echo_entries(self, p: int) -> list[tuple[int, float | None, list[tuple[int, float]] | None]]:
        h = self.handles[p]
        prompt = self.prompts[p]
        lps = h.prompt_logprobs or [None] * len(prompt)
        tops = h.prompt_top_logprobs or [None] * len(prompt)
        return list(zip(prompt, lps, [t if t else None for t in tops]))

    # -- responses --------------------------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        choices = []
        for i, c in enumerate(self.choices):
            text = "".join(c.text)
            if self.kind == "chat":
                lp = self.chat_logprobs(c.logprobs) if self.body.logprobs else None
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": lp, "finish_reason": c.finish_reason})
                continue
            lp = None
            if self.body.logprobs is not None:
                entries = list(c.logprobs)
                if self.echo is not None:
                    entries = self._echo_entries(i // self.n) + entries
                lp = self.completion_logprobs(entries)
            if self.echo is not None:
                text = self.echo[i // self.n] + text
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name,
                "choices": choices, "usage": self.usage()}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict | None = None) -> str:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        chunk: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.served.name,
                                 "choices": choices}
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def stream(self, metrics: Metrics) -> AsyncIterator[str]:
        """Server-sent events. A completion sends one chunk per generated token (as vLLM does), its text
        empty while the token's text is not yet certain (an incomplete UTF-8 character, a possible start of
        a stop string, or no tokenizer); a chat delta carries text, so it is sent when some is certain.
        Starlette cancels this generator when the client disconnects: the finally clause then frees the
        request's cache slots at once."""
        try:
            if self.kind == "chat":
                for i in range(len(self.choices)):
                    delta = {"role": "assistant", "content": ""}
                    yield self._chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            elif self.echo is not None:
                for i in range(len(self.choices)):
                    p = i // self.n
                    lp = (self.completion_logprobs(self._echo_entries(p)) if self.body.logprobs is not None
                          else None)
                    yield self._chunk([{"index": i, "text": self.echo[p], "logprobs": lp, "finish_reason": None}])
            async for i, ev in self.events():
                entry = [(ev.token, ev.logprob, ev.top_logprobs)] if ev.token is not None and ev.logprob is not None \
                    else []
                if ev.token is None and not ev.text and ev.finish_reason is None:
                    continue
                if self.kind == "chat":
                    if ev.text or entry:
                        lp = self.chat_logprobs(entry) if self.body.logprobs and entry else None
                        yield self._chunk([{"index": i, "delta": {"content": ev.text}, "logprobs": lp,
                                            "finish_reason": None}])
                    if ev.finish_reason is not None:
                        yield self._chunk([{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": ev.finish_reason}])
                else:
                    lp = self.completion_logprobs(entry) if self.body.logprobs is not None else None
                    yield self._chunk([{"index": i, "text": ev.text, "logprobs": lp,
                                        "finish_reason": ev.finish_reason}])
            self.observe(metrics)
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                yield self._chunk([], self.usage())
        except APIError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:
            self.cancel()
        yield "data: [DONE]\n\n"


# -- building jobs from requests ------------------------------------------------------------------------


def _sampling(body: SamplingRequest, served: ServedModel, prompt_len: int, max_tokens: int | None,
              default_max: int, stop_ids: list[int], limits: Limits) -> SamplingParams:
    C = served.context_length
    limit = limits.max_prompt_tokens or C - 1
    if prompt_len > limit:
        raise APIError(400, f"the prompt has {prompt_len} tokens; this server accepts at most {limit}",
                       param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if prompt_len >= C:
        raise APIError(400, f"this model's maximum context length is {C} tokens, and the prompt alone has "
                       f"{prompt_len}; shorten it", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(default_max, C - prompt_len)
    elif prompt_len + max_tokens > C:
        raise APIError(400, f"this model's maximum context length is {C} tokens, but {prompt_len + max_tokens} "
                       f"were requested ({prompt_len} in the prompt + {max_tokens} for the completion); reduce "
                       f"max_tokens to at most {C - prompt_len} or shorten the prompt",
                       param="max_tokens", code="context_length_exceeded")
    V = served.engine.config.vocab_size
    bad = [t for t in body.stop_token_ids or [] if not 0 <= t < V]
    if bad:
        raise APIError(400, f"stop_token_ids has ids outside the vocabulary [0, {V}): {bad[:5]}",
                       param="stop_token_ids")
    if body.stop and served.tokenizer is None:
        raise APIError(400, "stop strings need a tokenizer; this model has none", param="stop")
    return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature,
                          top_k=body.top_k if body.top_k > 0 else None, top_p=body.top_p if body.top_p < 1 else None,
                          repetition_penalty=body.repetition_penalty,
                          stop_tokens=sorted(set(() if body.ignore_eos else stop_ids) | set(body.stop_token_ids or ())),
                          stop_strings=list(body.stop), seed=body.seed)


def _check_n(body: SamplingRequest, served: ServedModel, prompts: int) -> None:
    slots = served.engine.n_slots
    if body.n > slots:
        raise APIError(400, f"n is {body.n}, but this server runs at most {slots} completions at once",
                       param="n")


def _encode(served: ServedModel, text: str, param: str) -> list[int]:
    """User text -> token ids, as ordinary text: "<|endoftext|>" typed by a user is those characters."""
    tok = served.tokenizer
    if tok is None:
        raise APIError(400, "this model has no tokenizer; send the prompt as token ids", param=param)
    ids = tok.encode_ordinary(text) if hasattr(tok, "encode_ordinary") else tok.encode(text)
    if not ids:
        eos = served.eos_ids()
        if not eos:
            raise APIError(400, "the prompt is empty; give some text", param=param)
        ids = eos[:1]  # an empty prompt starts a new document
    return ids


def completion_job(body: CompletionRequest, served: ServedModel, limits: Limits) -> Job:
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported by this server (omit it, or set it equal to n)",
                       param="best_of")
    V = served.engine.config.vocab_size
    prompts = []
    for p in body.prompt:
        if isinstance(p, str):
            prompts.append(_encode(served, p, "prompt"))
        else:
            if not p:
                raise APIError(400, "a token-id prompt is empty", param="prompt")
            if min(p) < 0 or max(p) >= V:
                raise APIError(400, f"the prompt has token ids outside the vocabulary [0, {V})", param="prompt")
            prompts.append(list(p))
    _check_n(body, served, len(prompts))
    requests = []
    for ids in prompts:
        sp = _sampling(body, served, len(ids), body.max_tokens, 16, served.eos_ids(), limits)
        requests.append(Request(ids, sp, n=body.n, presence_penalty=body.presence_penalty,
                                frequency_penalty=body.frequency_penalty, logprobs=body.logprobs,
                                prompt_logprobs=body.echo and body.logprobs is not None))
    echo = None
    if body.echo:
        echo = [p if isinstance(p, str) else (served.tokenizer.decode(p) if served.tokenizer is not None else "")
                for p in body.prompt]
    return Job("completion", served, body, prompts, requests, echo)


def chat_job(body: ChatCompletionRequest, served: ServedModel, limits: Limits) -> Job:
    from gator.tokenizer.chat import apply_chat_template, chat_stop_ids

    tok = served.tokenizer
    if tok is None or getattr(tok, "chat_template", None) is None:
        raise APIError(400, f"the model {served.name!r} has no chat template, so it cannot take chat messages; "
                       "use /v1/completions with a plain prompt, or serve a model whose tokenizer has a chat "
                       "template (gator.tokenizer.chat.add_chat_template, then fine-tune)",
                       param="messages", code="no_chat_template")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        ids = apply_chat_template(tok, messages, add_generation_prompt=True)
    except ValueError as err:
        raise APIError(400, str(err), param="messages") from None
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    _check_n(body, served, 1)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    sp = _sampling(body, served, len(ids), max_tokens, served.context_length, chat_stop_ids(tok) + served.eos_ids(),
                   limits)
    k = (body.top_logprobs or 0) if body.logprobs else None
    request = Request(ids, sp, n=body.n, presence_penalty=body.presence_penalty,
                      frequency_penalty=body.frequency_penalty, logprobs=k)
    return Job("chat", served, body, [ids], [request])
