"""Prompts as token lists: what `generate` and `stream` accept, checked against the model.

One prompt is a string (needs a tokenizer) or a sequence of token ids: a list of ints, a list of numpy
ints, a 1-D numpy array or torch tensor. A batch is a list of prompts or a 2-D array/tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

EXPECTED = ("a prompt is a string, a sequence of token ids (ints, numpy ints, a 1-D array or tensor), "
            "or a batch: a list of those or a 2-D array/tensor")


def _is_array(x: Any) -> bool:
    """A torch tensor or numpy array (anything with ndim and tolist)."""
    return hasattr(x, "ndim") and hasattr(x, "tolist") and not isinstance(x, (str, bytes))


def _is_token(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def as_batch(prompt: Any, config: Any, tokenizer: Any = None) -> tuple[list[list[int]], bool]:
    """Normalise a prompt or a batch of prompts to lists of ints; also say whether it was a single prompt.

    Every prompt must be non-empty, use ids of the vocabulary, and leave room for at least one new token
    in the model's context (`config.vocab_size`, `config.context_length`).
    """
    if _is_array(prompt):
        if prompt.ndim not in (1, 2):
            raise ValueError(f"a prompt array must be 1-D (one prompt) or 2-D (a batch), got {prompt.ndim}-D")
        single, prompts = prompt.ndim == 1, prompt.tolist()
        prompts = [prompts] if single else prompts
    elif isinstance(prompt, str):
        single, prompts = True, [prompt]
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
        single = len(prompt) > 0 and _is_token(prompt[0])
        prompts = [prompt] if single else list(prompt)
    else:
        raise ValueError(f"cannot use a {type(prompt).__name__} as a prompt; {EXPECTED}")
    if not prompts:
        raise ValueError("the prompt is empty; give at least one token or one prompt")
    V, C = config.vocab_size, config.context_length
    batch = []
    for i, pr in enumerate(prompts):
        if isinstance(pr, str):
            if tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass tokenizer=... or token ids")
            pr = tokenizer.encode_ordinary(pr)  # user text: never control tokens
        elif _is_array(pr):
            pr = pr.tolist()
        if isinstance(pr, (bytes, dict)) or not isinstance(pr, Sequence) or not all(_is_token(t) for t in pr):
            raise ValueError(f"prompt {i} is not a sequence of integer token ids ({type(pr).__name__}); {EXPECTED}")
        ids = [int(t) for t in pr]
        if not ids:
            raise ValueError(f"prompt {i} is empty; give at least one token (e.g. the end-of-text token)")
        if min(ids) < 0 or max(ids) >= V:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {V})")
        if len(ids) >= C:
            raise ValueError(f"prompt {i} has {len(ids)} tokens but the model's context is {C}; "
                             f"shorten it to at most {C - 1} tokens so at least one can be generated")
        batch.append(ids)
    return batch, single


def budgets(batch: list[list[int]], max_new_tokens: int, context_length: int) -> list[int]:
    """How many tokens each prompt may generate: max_new_tokens, or what fits in its own context."""
    return [min(max_new_tokens, context_length - len(ids)) for ids in batch]

