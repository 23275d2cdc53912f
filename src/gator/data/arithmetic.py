"""A verifiable task the project writes itself: arithmetic problems phrased as instructions.

    "What is 37 + 85?"  ->  "122"

Small enough for a model of a few million parameters to partly learn on a CPU, and checkable exactly,
so it is the post-training demo's task: SFT teaches the format, and RL with an exact-answer reward
(gator.train.objectives.rewards) can raise accuracy measurably. Problems are drawn with one
`random.Random(seed)`: the same arguments give the same problems on every machine.

The held-out split shares no problem with the training split, counting "a + b" and "b + a" (and
"a * b", "b * a") as the same problem, so a held-out score measures arithmetic, not recall.
Subtraction keeps a >= b unless negative answers are allowed.

Rows for the other datasets: `sft_records` (messages, or prompt/completion) and `prompt_records`
(prompt + gold "answer", the column the exact-answer reward reads).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPS = ("+", "-", "*")
ENUMERATE_UP_TO = 200_000  # tasks with at most this many distinct problems are listed, then sampled


@dataclass(frozen=True)
class ArithmeticProblem:
    a: int
    op: str
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def answer(self) -> str:
        if self.op == "+":
            return str(self.a + self.b)
        if self.op == "-":
            return str(self.a - self.b)
        return str(self.a * self.b)

    @property
    def key(self) -> tuple[str, int, int]:
        """The same key for problems that are the same fact (a + b and b + a)."""
        if self.op in "+*":
            return (self.op, min(self.a, self.b), max(self.a, self.b))
        return (self.op, self.a, self.b)


def _distinct_problems(op: str, n_values: int, negative: bool) -> int:
    return n_values * n_values if (op == "-" and negative) else n_values * (n_values + 1) // 2


def arithmetic_splits(n_train: int, n_test: int, digits: int = 2, ops: Sequence[str] = ("+", "-"), seed: int = 0,
                      negative: bool = False) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """(train, test) problems with operands of up to `digits` digits and no problem in both splits.

    Distinct problems are drawn without replacement; the first n_test form the test split. Raises
    ValueError if fewer distinct problems exist than asked for.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    bad = [op for op in ops if op not in OPS]
    if not ops or bad:
        raise ValueError(f"unknown operators {bad}; choose from {OPS}")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    n_values = 10 ** digits
    ops = sorted(set(ops), key=OPS.index)
    available = sum(_distinct_problems(op, n_values, negative) for op in ops)
    wanted = n_train + n_test
    if wanted > available:
        raise ValueError(f"asked for {wanted} problems but {digits}-digit {' '.join(ops)} has only {available} "
                         "distinct ones; ask for fewer or use more digits")
    rng = random.Random(seed)
    if available <= ENUMERATE_UP_TO:  # small task: draw without replacement from the whole list
        drawn = rng.sample(_all_problems(ops, n_values, negative), wanted)
        # the list holds a <= b for + and *: write half of them the other way round
        drawn = [ArithmeticProblem(p.b, p.op, p.a) if p.op in "+*" and rng.random() < 0.5 else p for p in drawn]
        return _split(drawn, n_test)
    if wanted > available // 2:
        raise ValueError(f"asked for {wanted} of the {available} distinct problems; ask for at most half")
    seen: set[tuple[str, int, int]] = set()
    problems = []
    while len(problems) < wanted:  # large task: draw at random, skip repeats
        op = rng.choice(ops)
        a, b = rng.randrange(n_values), rng.randrange(n_values)
        if op == "-" and not negative and a < b:
            a, b = b, a
        p = ArithmeticProblem(a, op, b)
        if p.key not in seen:
            seen.add(p.key)
            problems.append(p)
    return _split(problems, n_test)


def _split(problems: list[ArithmeticProblem], n_test: int) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    return problems[n_test:], problems[:n_test]


def _all_problems(ops: Sequence[str], n_values: int, negative: bool) -> list[ArithmeticProblem]:
    """Every distinct problem once (a <= b for + and *; a >= b for - unless negative)."""
    out = []
    for op in ops:
        for a in range(n_values):
            for b in range(n_values):
                if (op in "+*" and a > b) or (op == "-" and not negative and a < b):
                    continue
                out.append(ArithmeticProblem(a, op, b))
    return out


def sft_records(problems: Sequence[ArithmeticProblem], conversational: bool = True) -> list[dict[str, Any]]:
    """Supervised rows: {"messages": [user question, assistant answer]} or {"prompt", "completion"}."""
    if conversational:
        return [{"messages": [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer}]}
                for p in problems]
    return [{"prompt": p.question, "completion": p.answer} for p in problems]


def prompt_records(problems: Sequence[ArithmeticProblem], conversational: bool = True) -> list[dict[str, Any]]:
    """Prompts with their gold answers for RL and evaluation: {"prompt": question or [user turn], "answer"}."""
    return [{"prompt": [{"role": "user", "content": p.question}] if conversational else p.question,
             "answer": p.answer} for p in problems]


def write_jsonl(path: str | Path, records: Sequence[dict[str, Any]], overwrite: bool = False) -> Path:
    """Write records as JSONL (atomically); an existing file is replaced only with overwrite=True."""
    from gator.model.transformer import _atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another path or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    _atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return path
