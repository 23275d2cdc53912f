"""Chat and instruction datasets: read JSONL in the shapes users have, and turn each sample into
(input_ids, labels) for supervised fine-tuning with the loss on the assistant's tokens only.

One JSON object per line, in any of three shapes (detected per line):

- conversational (OpenAI, TRL): {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
- prompt-completion (TRL): {"prompt": "...", "completion": "..."}; the prompt is a user turn and the
  completion the assistant's reply (both may also be lists of messages, as in TRL's conversational form)
- Alpaca: {"instruction": "...", "input": "...", "output": "..."}; the user turn is the instruction,
  followed by a blank line and the input when there is one; the output is the assistant's reply

A conversation is rendered with the tokenizer's chat template (gator.tokenizer.chat), and the labels are
-100 (ignored by the loss) everywhere except on what the assistant says: the tokens of each assistant
message's content and its end-of-turn token, so the model learns to stop. This is "assistant-only loss"
(TRL's `assistant_only_loss` / `completion_only_loss`). A line that is malformed is an error that names the
file, the line and what is wrong; with `skip_bad_lines=True` it is counted and reported instead.
Truncation to `max_length` keeps the start of a sample; a sample left with no trained token is dropped,
and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gator.jsonl import jsonl_objects
from gator.tokenizer.chat import chat_pieces, check_messages

IGNORE = -100  # label of a token the loss skips (torch's cross_entropy ignore_index)
SHAPES = ('{"messages": [{"role", "content"}, ...]}, {"prompt", "completion"} or '
          '{"instruction", "input", "output"} (Alpaca)')


def to_messages(record: dict) -> list[dict[str, str]]:
    """One JSONL record, in any of the three shapes, as a checked list of messages with at least one
    assistant message. ValueError says what is wrong."""
    if "messages" in record:
        messages = check_messages(record["messages"])
    elif "prompt" in record and "completion" in record:
        messages = check_messages(_turns(record["prompt"], "user", "prompt") +
                                  _turns(record["completion"], "assistant", "completion"))
    elif "instruction" in record and "output" in record:
        instruction, extra, output = record["instruction"], record.get("input") or "", record["output"]
        for name, value in (("instruction", instruction), ("input", extra), ("output", output)):
            if not isinstance(value, str):
                raise ValueError(f"field {name!r} is a {type(value).__name__}, not a string")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    else:
        raise ValueError(f"unknown record shape with fields {sorted(record)}; expected {SHAPES}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant message, so there is nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _turns(value: Any, role: str, name: str) -> list:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise ValueError(f"field {name!r} is a {type(value).__name__}; give a string or a list of messages")


@dataclass
class ChatData:
    """The conversations read from a file, and the lines skipped (with why) when skipping was asked for."""

    conversations: list[list[dict[str, str]]]
    skipped: list[str] = field(default_factory=list)


def read_chat_jsonl(path: str | Path, skip_bad_lines: bool = False) -> ChatData:
    """Every conversation in a JSONL file. A malformed line raises ValueError naming the file, the line and
    the problem, unless `skip_bad_lines`: then it is left out and listed in `ChatData.skipped`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}; give a JSONL file with one conversation per line")
    skipped: list[str] = []
    conversations = []
    for lineno, record in jsonl_objects(path, skipped if skip_bad_lines else None):
        try:
            conversations.append(to_messages(record))
        except ValueError as err:
            message = f"{path}, line {lineno}: {err}"
            if not skip_bad_lines:
                raise ValueError(f"{message} (or skip such lines with skip_bad_lines=True / --skip-bad-lines)"
                                 ) from None
            skipped.append(message)
    if not conversations:
        raise ValueError(f"{path} has no usable conversations" + (f" ({len(skipped)} bad lines skipped)"
                                                                  if skipped else " (the file is empty)"))
    return ChatData(conversations, skipped)


def tokenize_conversation(tokenizer: Any, messages: list[dict], max_length: int | None = None
                          ) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) of one conversation: labels equal the ids on the assistant's content and
    end-of-turn tokens and are -100 elsewhere. Truncated to `max_length` tokens; None when nothing trained
    is left (the caller drops the sample)."""
    ids: list[int] = []
    labels: list[int] = []
    for piece, role, header_bytes in chat_pieces(tokenizer, messages, add_generation_prompt=False):
        ids.extend(piece)
        if role != "assistant":
            labels.extend([IGNORE] * len(piece))
            continue
        # piece = [start, *tokens of "assistant\n" + content, end]: train on every token that holds a byte of
        # the content (a token can straddle the header when the content starts with whitespace), and on end.
        labels.append(IGNORE)
        seen = 0
        for i in piece[1:-1]:
            seen += len(tokenizer.vocab[i])
            labels.append(i if seen > header_bytes else IGNORE)
        labels.append(piece[-1])
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return ids, labels


@dataclass
class TokenizedChat:
    """Tokenized samples, and how many were dropped for having no trained token within max_length."""

    samples: list[tuple[list[int], list[int]]]
    dropped: int


def tokenize_conversations(tokenizer: Any, conversations: Iterable[list[dict]], max_length: int | None = None
                           ) -> TokenizedChat:
    """`tokenize_conversation` over many conversations, counting the ones dropped."""
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    samples, dropped = [], 0
    for messages in conversations:
        sample = tokenize_conversation(tokenizer, messages, max_length)
        if sample is None:
            dropped += 1
        else:
            samples.append(sample)
    return TokenizedChat(samples, dropped)
