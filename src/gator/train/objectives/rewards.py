"""Reward functions for RL from verifiable rewards (GRPO): Python functions that score completions.

A reward function has the signature TRL's GRPOTrainer uses:

    f(prompts, completions, **columns) -> list[float]      one reward per completion

`prompts` and `completions` are lists of the same length (text, or message lists for chat data; a
completion message list is the assistant's reply); every other column of the dataset arrives as a keyword
argument holding one value per completion (for G samples per prompt, each prompt's row repeated G times).
The built-in ones read the gold answer from the `answer` column:

    exact_answer_reward     1 if the completion is exactly the answer ("122" for "What is 37 + 85?")
    number_format_reward    1 if the completion is a single number, whatever its value
    gsm8k_answer_reward     1 if the number a completion gives (GSM8K's "#### N", else "the answer is N",
                            else its last number) equals the number after "####" in the gold answer
    gsm8k_format_reward     1 if the completion states its answer as "#### N"
    reward_model_reward     a trained reward model (gator.model.heads.RewardModel) as a reward function

`score_completions` runs several reward functions, checks what they return, and sums them with weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gator.prompting import NUMBER, extract_answer, gold_answer, normalize_number

RewardFunction = Callable[..., list[float]]

_ONLY_NUMBER = re.compile(r"\s*" + NUMBER + r"\s*\.?\s*")
_HASHES_LINE = re.compile(r"####\s*" + NUMBER)


def completion_text(completion: str | list[dict[str, str]] | dict[str, str]) -> str:
    """The text of a completion: a string, one message, or a list of messages (their contents joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    raise ValueError(f"a completion must be text or messages, got {type(completion).__name__}")


def _gold(columns: dict[str, Any], n: int, reward: str) -> list[str]:
    answers = columns.get("answer")
    if answers is None:
        raise ValueError(f"{reward} needs an 'answer' column in the dataset (the gold answer of each prompt)")
    if isinstance(answers, str) or len(answers) != n:
        raise ValueError(f"{reward}: the 'answer' column must hold one answer per completion ({n}), "
                         f"got {1 if isinstance(answers, str) else len(answers)}")
    return [str(a) for a in answers]


def _same_number(text: str, gold: str) -> bool:
    try:
        return normalize_number(text) == normalize_number(gold)
    except ValueError:
        return False


def exact_answer_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the completion, without surrounding whitespace and a final period, is the gold answer
    (numbers compared by value after normalize_number: "1,200" = "1200"), else 0.0."""
    gold = _gold(columns, len(completions), "exact_answer_reward")
    rewards = []
    for completion, answer in zip(completions, gold):
        text = completion_text(completion).strip()
        text = text[:-1].rstrip() if text.endswith(".") else text
        if _ONLY_NUMBER.fullmatch(answer):
            same = bool(_ONLY_NUMBER.fullmatch(text)) and _same_number(text, answer)
        else:
            same = text == answer.strip()
        rewards.append(1.0 if same else 0.0)
    return rewards


def number_format_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the completion is one number and nothing else (surrounding whitespace and a final period
    allowed), else 0.0: the answer format of the arithmetic task, right or wrong."""
    return [1.0 if _ONLY_NUMBER.fullmatch(completion_text(c)) else 0.0 for c in completions]


def gsm8k_answer_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the number the completion gives equals the gold number (GSM8K's metric: exact match of the
    final number; the gold is the number after "####" in the answer column, or the column's number)."""
    gold = _gold(columns, len(completions), "gsm8k_answer_reward")
    rewards = []
    for completion, answer in zip(completions, gold):
        target = gold_answer(answer) if "####" in answer else normalize_number(answer)
        predicted = extract_answer(completion_text(completion))
        rewards.append(1.0 if predicted is not None and predicted == target else 0.0)
    return rewards


def gsm8k_format_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 when the completion states its final answer GSM8K's way, "#### N", else 0.0."""
    return [1.0 if _HASHES_LINE.search(completion_text(c)) else 0.0 for c in completions]


def reward_model_reward(model: torch.nn.Module, tokenizer: Any, eos_id: int | None = None, pad_id: int = 0,
                        batch_size: int = 16, max_length: int | None = None) -> RewardFunction:
    """A reward function that scores (prompt, completion) with a trained RewardModel. Encode the way the
    reward model was trained: plain text with the same eos_id, or messages through the chat template."""
    from gator.data.preference import encode_prompt_completion

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list) and isinstance(completion, str):
                completion = [{"role": "assistant", "content": completion}]
            p, c = encode_prompt_completion(tokenizer, prompt, completion, eos_id)
            row = p + c
            rows.append(row[-max_length:] if max_length else row)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i:i + batch_size]
                T = max(map(len, chunk))
                ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
                mask = torch.zeros(len(chunk), T, dtype=torch.long)
                for j, row in enumerate(chunk):
                    ids[j, :len(row)] = torch.tensor(row)
                    mask[j, :len(row)] = 1
                out.extend(model(ids.to(device), mask.to(device)).float().tolist())
        model.train(was_training)
        return out

    reward.__name__ = "reward_model_reward"
    return reward


def score_completions(reward_functions: Sequence[RewardFunction], prompts: Sequence[Any],
                      completions: Sequence[Any], weights: Sequence[float] | None = None,
                      **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """Run each reward function; return (weighted sum per completion, {function name: its rewards}).

    A function that returns the wrong number of rewards, or a reward that is not a finite number, raises
    ValueError naming the function.
    """
    if not reward_functions:
        raise ValueError("no reward functions given")
    weights = list(weights) if weights is not None else [1.0] * len(reward_functions)
    if len(weights) != len(reward_functions):
        raise ValueError(f"{len(weights)} weights for {len(reward_functions)} reward functions")
    total = [0.0] * len(completions)
    parts: dict[str, list[float]] = {}
    for fn, w in zip(reward_functions, weights):
        name = getattr(fn, "__name__", type(fn).__name__)
        values = fn(list(prompts), list(completions), **columns)
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            got = len(values) if hasattr(values, "__len__") else repr(values)
            raise ValueError(f"reward function {name} returned {got} values for {len(completions)} completions; "
                             "it must return one float per completion")
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"reward function {name} returned a NaN or infinite reward")
        parts[name] = values
        total = [t + w * v for t, v in zip(total, values)]
    return total, parts
