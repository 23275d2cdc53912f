"""Prompt templates (zero-shot, few-shot, chain of thought, persona, task-context-rules) and answer extraction.

A language model continues text, so a prompt is a document whose natural continuation is the answer.
`PromptTemplate` builds that document from parts a user can combine:

    You are {role}.                  role / persona
    Task: {task}                     task-context-rules layout
    Context:\\n{context}
    Rules:\\n- {rule} ...
    Question: {q1}\\nAnswer: {a1}      k worked examples (few-shot; Brown et al., 2020)
    Question: {question}\\nAnswer:     the question; "Answer: Let's think step by step." with a
                                     chain-of-thought cue (Kojima et al., 2022)

with one blank line between parts and every part optional. Few-shot examples are drawn from a pool by a
seeded random generator, so an evaluation is reproducible. `extract_answer` reads a numeric answer back
out of a completion: GSM8K's "#### N" (Cobbe et al., 2021) first, then "the answer is N", then the last
number, with "$" and thousands separators removed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from gator.jsonl import jsonl_objects

COT_CUE = "Let's think step by step."


@dataclass(frozen=True)
class Example:
    """One question with its answer: a few-shot example, or a test problem with its gold answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class PromptTemplate:
    """The parts of a prompt; `render(question)` lays them out. Combine parts with dataclasses.replace."""

    role: str | None = None
    task: str | None = None
    context: str | None = None
    rules: Sequence[str] = ()
    examples: Sequence[Example] = ()
    chain_of_thought: bool = False
    question_prefix: str = "Question: "
    answer_prefix: str = "Answer:"
    separator: str = "\n\n"
    cue: str = COT_CUE

    def render(self, question: str) -> str:
        parts = []
        if self.role:
            parts.append(f"You are {self.role}.")
        if self.task:
            parts.append(f"Task: {self.task}")
        if self.context:
            parts.append(f"Context:\n{self.context}")
        if self.rules:
            parts.append("Rules:\n" + "\n".join(f"- {rule}" for rule in self.rules))
        parts.extend(f"{self.question_prefix}{ex.question}\n{self.answer_prefix} {ex.answer}"
                     for ex in self.examples)
        final = f"{self.question_prefix}{question}\n{self.answer_prefix}"
        if self.chain_of_thought:
            final += f" {self.cue}"
        parts.append(final)
        return self.separator.join(parts)


def sample_examples(pool: Sequence[Example], k: int, seed: int = 0, exclude: str | None = None) -> list[Example]:
    """k distinct examples drawn from `pool` by `seed` (the same seed always gives the same list, in the same
    order); an example whose question equals `exclude` is never drawn, so a problem is not its own example."""
    candidates = [ex for ex in pool if ex.question != exclude]
    if not 0 <= k <= len(candidates):
        raise ValueError(f"cannot draw {k} examples from a pool of {len(candidates)}")
    return random.Random(seed).sample(candidates, k)


def zero_shot(question: str, **parts) -> str:
    """The question on its own (plus any role/task/context/rules/chain_of_thought given as keywords)."""
    return PromptTemplate(**parts).render(question)


def few_shot(question: str, pool: Sequence[Example], k: int, seed: int = 0, **parts) -> str:
    """k worked examples from `pool` (drawn by `seed`, never the question itself), then the question."""
    return PromptTemplate(examples=sample_examples(pool, k, seed, exclude=question), **parts).render(question)


# -- GSM8K ------------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def load_examples(path: str | Path, question_key: str = "question", answer_key: str = "answer",
                  strip_calculator: bool = True) -> list[Example]:
    """Read a JSONL file of {"question", "answer"} (the GSM8K layout). GSM8K's calculator annotations
    like <<16-3-4=9>> are removed unless strip_calculator=False."""
    examples = []
    for lineno, row in jsonl_objects(path):
        if not isinstance(row.get(question_key), str) or not isinstance(row.get(answer_key), str):
            raise ValueError(f"{path}, line {lineno}: expected an object with string fields "
                             f"{question_key!r} and {answer_key!r}")
        answer = _CALCULATOR.sub("", row[answer_key]) if strip_calculator else row[answer_key]
        examples.append(Example(row[question_key], answer))
    return examples


# -- answer extraction -------------------------------------------------------------------------------

# A number: an optional minus sign that is not a subtraction (not right after a word or a closing bracket),
# an optional dollar sign, digits with or without thousands separators, an optional decimal part.
NUMBER = r"(?:(?<![\w)\]])-)?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER = re.compile(NUMBER)
_HASHES = re.compile(r"####\s*(" + NUMBER + ")")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*(" + NUMBER + ")", re.IGNORECASE)


def normalize_number(text: str) -> str:
    """'$1,200.50' -> '1200.5', '18.00' -> '18', '-0' -> '0': one spelling per value, for comparison."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str, stop: Sequence[str] = ("\n\nQuestion:",)) -> str | None:
    """The numeric answer in a completion, normalized, or None if it has no number.

    The text is first cut at any `stop` string (a model that goes on to invent the next question), then
    the first "#### N" wins, then the first "the answer is N", then the last number.
    """
    for s in stop:
        text = text.split(s, 1)[0]
    for pattern in (_HASHES, _ANSWER_IS):
        match = pattern.search(text)
        if match:
            return normalize_number(match.group(1))
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(answer: str) -> str:
    """The normalized number after '####' in a GSM8K answer."""
    if "####" not in answer:
        raise ValueError(f"no '####' in answer: {answer[-60:]!r}")
    return normalize_number(answer.rsplit("####", 1)[1])


def answers_match(predicted: str | None, gold: str) -> bool:
    """True when the predicted number equals the gold number (after normalization)."""
    return predicted is not None and normalize_number(predicted) == normalize_number(gold)
