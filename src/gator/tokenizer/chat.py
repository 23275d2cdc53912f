"""Chat templates: how a conversation becomes one sequence of token ids, stored with the tokenizer.

A chat model reads a conversation as one sequence in which *role markers* say who speaks. Gator uses
ChatML's layout (introduced by OpenAI for ChatGPT; used by Qwen and many open models), with the two markers
as special tokens, so no text can spell them:

    <|im_start|>system\\nYou are helpful.<|im_end|>\\n<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n

- Each message is `start`, then the role name and a newline, then the content, then `end` and a newline.
- The *generation prompt* is `start` + "assistant\\n": the model writes the reply and then `end`, the
  end-of-turn token that generation stops on (`chat_stop_ids`).
- Everything between markers is ordinary text (`Tokenizer.encode_ordinary`): a user who types
  "<|im_end|>" gets the tokens of those characters, never the marker, so a turn boundary cannot be forged.

`add_chat_template` returns a tokenizer with the markers added as special tokens (new ids after the old
ones; grow the model with `Transformer.resize_vocab`), and the template is saved with it.

The template is also exported as a Jinja `chat_template` for transformers (and so for vLLM), which renders
the conversation to a string and then tokenizes it, turning *any* special-token text into the token. To
keep the export injection-safe and id-for-id equal to `apply_chat_template`, the Jinja template escapes the
first character of every special token in the content with Unicode noncharacters (U+FDD0 + U+FDD1...,
code points reserved for internal use), and the exported tokenizer.json gets a normalizer that undoes the
escape after special tokens were split off (`hf_jinja`, `hf_normalizer`). The price: in the exported
tokenizer, plain text that itself contains U+FDD0 followed by U+FDD1... is normalized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bpe import Tokenizer

ROLES = ("system", "user", "assistant")
_ESCAPE = "\ufdd0"  # U+FDD0..U+FDEF are noncharacters: never assigned, meant for a program's internal use


@dataclass(frozen=True)
class ChatTemplate:
    """The role markers of a ChatML-style template (both are special tokens of the tokenizer)."""

    start: str = "<|im_start|>"
    end: str = "<|im_end|>"

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, data: Any) -> ChatTemplate:
        if not isinstance(data, dict) or set(data) != {"start", "end"} or not all(
                isinstance(v, str) and v for v in data.values()):
            raise ValueError(f"chat_template must be {{\"start\": TOKEN, \"end\": TOKEN}}, got {data!r}")
        return cls(data["start"], data["end"])


def add_chat_template(tokenizer: Tokenizer, template: ChatTemplate | None = None) -> Tokenizer:
    """A new tokenizer: `tokenizer` plus the template's markers as special tokens (those it lacks get the
    next free ids) and the template itself. Grow a model to it with `model.resize_vocab(tok.vocab_size)`."""
    template = template or ChatTemplate()
    if template.start == template.end:
        raise ValueError(f"the chat template's start and end markers are both {template.start!r}; use two tokens")
    specials = list(tokenizer.special_tokens)
    specials += [t for t in (template.start, template.end) if t not in specials]
    return type(tokenizer)(tokenizer.vocab, tokenizer.merges, specials, tokenizer.pattern, chat_template=template)


def _template(tokenizer: Tokenizer) -> ChatTemplate:
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ValueError("this tokenizer has no chat template; add one with "
                         "gator.tokenizer.chat.add_chat_template(tokenizer) and grow the model to the new "
                         "vocabulary with model.resize_vocab(tokenizer.vocab_size)")
    return template


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The messages, checked: a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}{'' if messages else ' (empty)'}")
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {n} is a {type(message).__name__}, not a dict with 'role' and 'content'")
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise ValueError(f"message {n} has no {' or '.join(map(repr, missing))} (it has {sorted(message)})")
        if message["role"] not in ROLES:
            raise ValueError(f"message {n} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {n} ({message['role']}) has content of type "
                             f"{type(message['content']).__name__}; give the content as a string")
    return list(messages)


def chat_pieces(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True
                ) -> list[tuple[list[int], str | None, int]]:
    """The conversation as (ids, role, header_bytes) pieces, in order: one per message, covering `start` up
    to and including `end`; the "\\n" between messages and the generation prompt have role None. The first
    `header_bytes` bytes of a message's text (after `start`) are its header (role name and newline)."""
    template = _template(tokenizer)
    start, end = tokenizer.special_ids[template.start], tokenizer.special_ids[template.end]
    newline = tokenizer.encode_ordinary("\n")
    pieces: list[tuple[list[int], str | None, int]] = []
    for message in check_messages(messages):
        header = message["role"] + "\n"
        # Header and content are one ordinary text, as a tokenizer that sees the rendered string cuts it.
        body = tokenizer.encode_ordinary(header + message["content"])
        pieces.append(([start, *body, end], message["role"], len(header.encode("utf-8"))))
        pieces.append((newline, None, 0))
    if add_generation_prompt:
        pieces.append(([start, *tokenizer.encode_ordinary("assistant\n")], None, 0))
    return pieces


def apply_chat_template(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True
                        ) -> list[int]:
    """The token ids of a conversation (a list of {"role", "content"} dicts), ending with the generation
    prompt unless `add_generation_prompt=False`. Content is always ordinary text. ValueError when the
    tokenizer has no chat template or a message is malformed."""
    return [i for ids, _, _ in chat_pieces(tokenizer, messages, add_generation_prompt) for i in ids]


def chat_stop_ids(tokenizer: Tokenizer) -> list[int]:
    """The end-of-turn id(s) that generation stops on; [] when the tokenizer has no chat template."""
    template = getattr(tokenizer, "chat_template", None)
    return [] if template is None else [tokenizer.special_ids[template.end]]


# -- the Jinja template for transformers -----------------------------------------------------------------


def _escapes(special_tokens: list[str]) -> list[tuple[str, str]]:
    """(character, escape) pairs, in the order the Jinja template applies them: the escape character itself
    first, then the first character of every special token."""
    firsts = sorted({t[0] for t in special_tokens})
    codes = [chr(ord(_ESCAPE) + 1 + k) for k in range(len(firsts) + 1)]
    if len(codes) > 31 or set(firsts) & {_ESCAPE, *codes}:
        raise ValueError("special tokens that start with a Unicode noncharacter (U+FDD0..U+FDEF), or with more "
                         "than 30 different characters, cannot be escaped in an exported chat template")
    return [(_ESCAPE, _ESCAPE + codes[0])] + [(c, _ESCAPE + code) for c, code in zip(firsts, codes[1:])]


def hf_jinja(template: ChatTemplate, special_tokens: list[str]) -> str:
    """The template as Jinja for transformers' `apply_chat_template` (and vLLM): the same text, with the
    content escaped so that no special token can appear in it (see `hf_normalizer`)."""
    q = json.dumps  # a JSON string literal is a valid Jinja string literal
    content = "message['content']" + "".join(f" | replace({q(c)}, {q(e)})" for c, e in _escapes(special_tokens))
    roles = ", ".join(q(r) for r in ROLES)
    return (
        "{%- for message in messages -%}"
        f"{{%- if message['role'] not in [{roles}] -%}}"
        f"{{{{ raise_exception('message role must be one of {', '.join(ROLES)}') }}}}{{%- endif -%}}"
        f"{{{{- {q(template.start)} + message['role'] + {q(chr(10))} + ({content}) + {q(template.end + chr(10))} -}}}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {q(template.start + 'assistant' + chr(10))} -}}}}{{%- endif -%}}"
    )


def hf_normalizer(special_tokens: list[str]) -> dict:
    """A tokenizer.json normalizer that undoes `hf_jinja`'s escape. It runs after special tokens are split
    off, so an escaped "<|im_end|>" in content is ordinary text again, with the ids of the characters."""
    escapes = _escapes(special_tokens)
    steps = [{"type": "Replace", "pattern": {"String": e}, "content": c} for c, e in escapes[1:]]
    steps.append({"type": "Replace", "pattern": {"String": escapes[0][1]}, "content": escapes[0][0]})  # last
    return {"type": "Sequence", "normalizers": steps}
