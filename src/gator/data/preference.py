"""Preference data: pairs of responses to one prompt, one preferred ("chosen") over the other ("rejected").

The JSONL shapes that reward-model and DPO datasets use (TRL's preference format):

    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}                       plain text
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],                      conversational
     "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5"}]}
    {"chosen": [user turn, assistant "4"], "rejected": [user turn, assistant "5"]}   implicit prompt:
                                                                                     the shared first turns

A malformed line raises ValueError naming the file, the line and what is wrong, unless the caller asks
to skip bad lines (they are then counted and listed in `PreferenceData.skipped`).

Encoding. A pair becomes token ids: prompt, chosen response, rejected response. Plain text is encoded as
ordinary text (a control token written in the text is never turned into the control token) and each
response may end with an end-of-text id; the conversational form goes through the tokenizer's chat
template (gator.tokenizer.chat.apply_chat_template), the prompt with the generation prompt, each response
the template's continuation of that prompt. `collate_preferences` pads pairs into one batch whose first
half holds the chosen rows and second half the rejected rows, with the attention and response masks
that `gator.train.objectives.losses` and `gator.model.heads.RewardModel` take.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gator.jsonl import jsonl_objects

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PreferencePair:
    """One prompt and two responses, `chosen` preferred to `rejected`: all strings, or all message lists."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


@dataclass
class PreferenceData:
    """The pairs read from a file, and the lines skipped when skipping was asked for ("line N: why")."""

    pairs: list[PreferencePair]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------

def read_preferences(path: str | Path, skip_bad_lines: bool = False) -> PreferenceData:
    """Preference pairs from a JSONL file (plain-text or conversational rows, see the module docstring)."""
    pairs, skipped = [], []
    for lineno, row in _rows(path, skip_bad_lines, skipped):
        try:
            pairs.append(parse_preference(row))
        except ValueError as err:
            if not skip_bad_lines:
                raise ValueError(f"{path}, line {lineno}: {err}") from None
            skipped.append(f"line {lineno}: {err}")
    if not pairs:
        raise ValueError(f"{path} holds no preference pairs" + (f" ({len(skipped)} bad lines skipped)"
                                                                 if skipped else ""))
    return PreferenceData(pairs, skipped)


def _rows(path: str | Path, skip_bad_lines: bool, skipped: list[str]) -> Iterator[tuple[int, dict]]:
    """jsonl_objects, but a line that is not a JSON object is recorded and skipped when asked."""
    rows = jsonl_objects(path)
    while True:
        try:
            yield next(rows)
        except StopIteration:
            return
        except ValueError as err:
            if not skip_bad_lines:
                raise
            skipped.append(str(err).split(", ", 1)[-1])


def parse_preference(row: dict[str, Any]) -> PreferencePair:
    """A PreferencePair from one JSON object; ValueError says what is wrong with it."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ValueError(f'missing "{key}"; a preference row needs "chosen" and "rejected" '
                             '(and "prompt", unless they are conversations that share their first turns)')
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise ValueError('"chosen" and "rejected" are text, so "prompt" must be text too, got '
                             f"{type(prompt).__name__}")
        if not chosen or not rejected:
            raise ValueError('"chosen" and "rejected" must not be empty')
        return PreferencePair(prompt, chosen, rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt is None:  # implicit prompt: the turns both conversations share
            n = 0
            while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        else:
            prompt = _messages(prompt, "prompt") if isinstance(prompt, list) else None
            if prompt is None:
                raise ValueError('"chosen" and "rejected" are message lists, so "prompt" must be one too')
        if not prompt:
            raise ValueError("the conversation has no prompt turns before the responses")
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if not turns or any(t["role"] != "assistant" for t in turns):
                raise ValueError(f'the "{name}" response must be one or more assistant turns after the prompt')
        return PreferencePair(prompt, chosen, rejected)
    raise ValueError('"chosen" and "rejected" must both be strings or both be lists of messages, got '
                     f"{type(chosen).__name__} and {type(rejected).__name__}")


def _messages(value: Any, name: str) -> Messages:
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f'"{name}" message {i} must be an object with string "role" and "content"')
        if m["role"] not in ROLES:
            raise ValueError(f'"{name}" message {i} has role {m["role"]!r}; expected one of {", ".join(ROLES)}')
        out.append({"role": m["role"], "content": m["content"]})
    return out


# ---------------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ordinary text -> ids: a control token written in the text stays text (or is refused, with a
    tokenizer that has no ordinary encoding)."""
    ordinary = getattr(tokenizer, "encode_ordinary", None)
    if ordinary is not None:
        return list(ordinary(text))
    for token in getattr(tokenizer, "special_tokens", ()):
        if token in text:
            raise ValueError(f"the text contains the control token {token!r}; remove it from the data "
                             "(user text is never turned into control tokens)")
    return list(tokenizer.encode(text))


def encode_prompt_completion(tokenizer: Any, prompt: str | Messages, completion: str | Messages,
                             eos_id: int | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids). Plain text: each encoded on its own, eos_id appended to the completion
    when given. Messages: the chat template, prompt with the generation prompt, completion = the rest."""
    if isinstance(prompt, str) and isinstance(completion, str):
        p = encode_text(tokenizer, prompt)
        c = encode_text(tokenizer, completion) + ([eos_id] if eos_id is not None else [])
    elif isinstance(prompt, list) and isinstance(completion, list):
        try:
            from gator.tokenizer.chat import apply_chat_template
        except ImportError:
            raise ValueError("conversational data needs a chat template (gator.tokenizer.chat), which this "
                             "installation lacks; use the plain-text form") from None
        p = list(apply_chat_template(tokenizer, prompt, add_generation_prompt=True))
        full = list(apply_chat_template(tokenizer, prompt + completion, add_generation_prompt=False))
        if full[:len(p)] != p:
            raise ValueError("the chat template renders the prompt differently when a response follows it, "
                             "so the response tokens cannot be told apart")
        c = full[len(p):]
    else:
        raise ValueError("prompt and completion must both be text or both be message lists")
    if not p:
        raise ValueError("the prompt encodes to no tokens; a response needs at least one token before it "
                         "(give a non-empty prompt or start it with a begin-of-text token)")
    if not c:
        raise ValueError("the completion encodes to no tokens")
    return p, c


def encode_preference(pair: PreferencePair, tokenizer: Any, eos_id: int | None = None,
                      max_length: int | None = None) -> EncodedPair:
    """Token ids of a pair. With max_length, each response is cut so that prompt + response fits; a
    prompt that leaves no room for a response token raises ValueError."""
    prompt, chosen = encode_prompt_completion(tokenizer, pair.prompt, pair.chosen, eos_id)
    prompt2, rejected = encode_prompt_completion(tokenizer, pair.prompt, pair.rejected, eos_id)
    if prompt2 != prompt:
        raise ValueError("the prompt encodes differently before the chosen and the rejected response")
    if max_length is not None:
        room = max_length - len(prompt)
        if room < 1:
            raise ValueError(f"the prompt has {len(prompt)} tokens, leaving no room for a response within "
                             f"max_length {max_length}")
        chosen, rejected = chosen[:room], rejected[:room]
    return EncodedPair(prompt, chosen, rejected)


@dataclass
class PreferenceBatch:
    """2N padded rows: rows 0..N-1 are prompt + chosen, rows N..2N-1 prompt + rejected (same order).

    ids (2N, T); attention_mask (2N, T) 1 on real tokens; response_mask (2N, T) 1 on response tokens."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return self.ids.shape[0] // 2


def collate_preferences(pairs: Sequence[EncodedPair], pad_id: int = 0, padding_side: str = "right") -> PreferenceBatch:
    """Pad encoded pairs into one PreferenceBatch (padding on the right or the left)."""
    if not pairs:
        raise ValueError("no pairs to collate")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    T = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), T, dtype=torch.long)
    response = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (prompt, completion) in enumerate(rows):
        n = len(prompt) + len(completion)
        start = T - n if padding_side == "left" else 0
        ids[i, start:start + n] = torch.tensor(prompt + completion)
        attention[i, start:start + n] = 1
        response[i, start + len(prompt):start + n] = 1
    return PreferenceBatch(ids, attention, response)
