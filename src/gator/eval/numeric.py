"""Accuracy on questions with a numeric answer (GSM8K and the like): prompt, generate, extract, compare.

Each problem is rendered with a `PromptTemplate` (zero-shot, few-shot, chain of thought, ...), the model
continues the prompt through any `generate(prompt) -> completion` function, and `extract_answer` reads the
number back; a problem counts as solved when that number equals the gold one (the number after "####" in
a GSM8K answer). Exact match on the final number is GSM8K's own metric (Cobbe et al., 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gator.prompting import Example, PromptTemplate, answers_match, extract_answer, gold_answer, normalize_number


@dataclass(frozen=True)
class NumericItem:
    question: str
    gold: str
    prompt: str
    completion: str
    predicted: str | None

    @property
    def correct(self) -> bool:
        return answers_match(self.predicted, self.gold)


@dataclass(frozen=True)
class NumericResult:
    items: list[NumericItem]

    @property
    def accuracy(self) -> float:
        return sum(item.correct for item in self.items) / len(self.items)


def evaluate_numeric(problems: Sequence[Example], generate: Callable[[str], str],
                     template: PromptTemplate | None = None) -> NumericResult:
    """Prompt with `template`, call `generate`, extract the number and compare it with the gold answer."""
    if not problems:
        raise ValueError("no problems to evaluate")
    template = template or PromptTemplate()
    items = []
    for problem in problems:
        gold = gold_answer(problem.answer) if "####" in problem.answer else normalize_number(problem.answer)
        prompt = template.render(problem.question)
        completion = generate(prompt)
        items.append(NumericItem(problem.question, gold, prompt, completion, extract_answer(completion)))
    return NumericResult(items)
