"""gator.prompting: exact prompt layouts, deterministic few-shot draws, numeric answer extraction on GSM8K."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from gator.eval.numeric import evaluate_numeric
from gator.prompting import (
    COT_CUE,
    Example,
    PromptTemplate,
    answers_match,
    extract_answer,
    few_shot,
    gold_answer,
    load_examples,
    normalize_number,
    sample_examples,
    zero_shot,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def gsm8k():
    test_path, train_path = DATA / "instruct" / "gsm8k_test.jsonl", DATA / "instruct" / "gsm8k_train.jsonl"
    if not test_path.exists():
        pytest.fail(f"GSM8K data not found at {test_path}")
    raw_test = [json.loads(line) for line in test_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return raw_test, load_examples(train_path), load_examples(test_path)


def test_zero_shot_layout():
    assert zero_shot("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:"
    assert zero_shot("What is 2 + 3?", chain_of_thought=True) == (
        "Question: What is 2 + 3?\nAnswer: Let's think step by step.")


def test_full_layout_combines_every_part():
    template = PromptTemplate(
        role="a careful math teacher",
        task="Solve the problem and end with '#### <number>'.",
        context="All prices are in dollars.",
        rules=["Show each step.", "Use whole numbers."],
        examples=[Example("1 + 1?", "1 + 1 = 2\n#### 2"), Example("2 * 3?", "2 * 3 = 6\n#### 6")],
        chain_of_thought=True,
    )
    assert template.render("4 - 1?") == (
        "You are a careful math teacher.\n\n"
        "Task: Solve the problem and end with '#### <number>'.\n\n"
        "Context:\nAll prices are in dollars.\n\n"
        "Rules:\n- Show each step.\n- Use whole numbers.\n\n"
        "Question: 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
        "Question: 2 * 3?\nAnswer: 2 * 3 = 6\n#### 6\n\n"
        "Question: 4 - 1?\nAnswer: Let's think step by step."
    )
    # parts combine and can be swapped out one at a time
    plain = dataclasses.replace(template, role=None, context=None, rules=(), examples=(), chain_of_thought=False,
                                question_prefix="Q: ", answer_prefix="A:")
    assert plain.render("4 - 1?") == "Task: Solve the problem and end with '#### <number>'.\n\nQ: 4 - 1?\nA:"
    assert COT_CUE == "Let's think step by step."


def test_few_shot_draws_are_deterministic_and_exclude_the_question(gsm8k):
    _, train, test = gsm8k
    first = sample_examples(train, 4, seed=0)
    assert first == sample_examples(train, 4, seed=0)
    assert first != sample_examples(train, 4, seed=1)
    assert len({ex.question for ex in first}) == 4 and all(ex in train for ex in first)
    pool = train[:5]
    for seed in range(20):  # with a pool of 5 and k=4, the excluded question is never drawn
        assert pool[2] not in sample_examples(pool, 4, seed=seed, exclude=pool[2].question)
    assert sorted(sample_examples(pool, 4, seed=3, exclude=pool[2].question), key=pool.index) == [
        pool[0], pool[1], pool[3], pool[4]]
    with pytest.raises(ValueError, match="cannot draw 5 examples from a pool of 4"):
        sample_examples(pool, 5, exclude=pool[0].question)

    question = test[0].question
    prompt = few_shot(question, train, k=3, seed=7, chain_of_thought=True)
    shots = sample_examples(train, 3, seed=7, exclude=question)
    expected = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in shots)
    assert prompt == expected + f"Question: {question}\nAnswer: Let's think step by step."
    assert prompt.count("Question: ") == 4 and "<<" not in prompt  # calculator notes are stripped


def test_load_examples_strips_calculator_notes(gsm8k):
    raw_test, _, test = gsm8k
    assert len(test) == len(raw_test) == 1319
    assert "<<16-3-4=9>>" in raw_test[0]["answer"]
    assert test[0].answer == re.sub(r"<<[^>]*>>", "", raw_test[0]["answer"])
    assert test[0].answer.endswith("#### 18")


def test_extraction_of_every_gold_answer(gsm8k):
    raw_test, _, test = gsm8k
    for row, ex in zip(raw_test, test):
        expected = row["answer"].split("####")[-1].strip().replace(",", "")
        assert re.fullmatch(r"-?\d+", expected)
        assert extract_answer(row["answer"]) == expected  # raw, with calculator notes
        assert extract_answer(ex.answer) == expected
        assert gold_answer(row["answer"]) == expected
        reasoning, number = ex.answer.rsplit("####", 1)
        number = number.strip()  # as written in the data, e.g. "1,600"
        # the same answer stated in words, with a dollar sign, then the last-number fallback
        assert extract_answer(f"{reasoning}The answer is ${number}.") == expected
        assert extract_answer(f"{reasoning}So the final answer is: {number}") == expected
        assert extract_answer(f"{reasoning}That gives {number}.\n\nQuestion: 7 + 1?") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("She has $1,200.50 left.", "1200.5"),
        ("The answer is -3.75.", "-3.75"),
        ("The answer is 18.00", "18"),
        ("It costs -$5 in total", "-5"),
        ("16-3-4=9", "9"),
        ("7 - 10 = -3", "-3"),
        ("the answer is 12 apples, not 13", "12"),
        ("#### 42\nThe answer is 7", "42"),
        ("Answer: 5, 6, 7", "7"),
        ("1,2,3", "3"),
        ("no digits here", None),
        ("12 eggs\n\nQuestion: how many is 99?", "12"),
    ],
)
def test_extract_answer_cases(text, expected):
    assert extract_answer(text) == expected


def test_normalize_and_match():
    assert normalize_number("$1,000") == "1000"
    assert normalize_number("-0.50") == "-0.5"
    assert normalize_number("-0") == "0"
    assert answers_match("18.0", "18") and not answers_match("18.5", "18") and not answers_match(None, "1")
    with pytest.raises(ValueError, match="not a number"):
        normalize_number("twelve")
    with pytest.raises(ValueError, match="no '####'"):
        gold_answer("42")


def test_evaluate_numeric_with_a_fake_model(gsm8k):
    _, train, test = gsm8k
    problems = test[:10]
    template = PromptTemplate(examples=sample_examples(train, 2, seed=0), chain_of_thought=True)
    seen = []

    def generate(prompt: str) -> str:  # right on even problems, off by one on odd ones
        seen.append(prompt)
        i = len(seen) - 1
        gold = int(problems[i].answer.rsplit("####", 1)[1].replace(",", ""))
        return f" Some steps.\nThe answer is {gold if i % 2 == 0 else gold + 1}.\n\nQuestion: next"

    result = evaluate_numeric(problems, generate, template)
    assert seen == [template.render(p.question) for p in problems]
    assert [item.correct for item in result.items] == [i % 2 == 0 for i in range(10)]
    assert result.accuracy == 0.5


def test_load_examples_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match="line 2: expected an object"):
        load_examples(path)
    path.write_text('{"question": "a", "answer": "#### 1"}\n\n{oops\n')
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        load_examples(path)
