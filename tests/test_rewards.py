"""Reward functions (gator.train.objectives.rewards) on hand-written completions, the arithmetic task
(gator.data.arithmetic) against Python's own arithmetic, and the GSM8K reward on the real GSM8K answers."""

import json
import re

import pytest
import torch

from gator.config import get_preset
from gator.data.arithmetic import arithmetic_splits, prompt_records, sft_records, write_jsonl
from gator.model.heads import RewardModel
from gator.prompting import load_examples
from gator.tokenizer import train_bpe
from gator.train.objectives.rewards import (
    exact_answer_reward,
    gsm8k_answer_reward,
    gsm8k_format_reward,
    number_format_reward,
    reward_model_reward,
    score_completions,
)

PROMPTS = ["What is 37 + 85?"] * 8
COMPLETIONS = ["122", " 122\n", "122.", "The answer is 122", "123", "", "1,22", "-122"]


def test_exact_answer_and_format_rewards_on_hand_written_completions():
    gold = ["122"] * 8
    assert exact_answer_reward(PROMPTS, COMPLETIONS, answer=gold) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert number_format_reward(PROMPTS, COMPLETIONS, answer=gold) == [1, 1, 1, 0, 1, 0, 0, 1]
    assert exact_answer_reward(["q"] * 3, ["1,200", "1200.0", "-7"], answer=["1200", "1200", "-7"]) == [1, 1, 1]
    # chat completions (a list with the assistant message) and text answers
    assert exact_answer_reward(["q"], [[{"role": "assistant", "content": " 42 "}]], answer=["42"]) == [1.0]
    assert exact_answer_reward(["q", "q"], ["Paris", "paris"], answer=["Paris", "Paris"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        exact_answer_reward(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="one answer per completion"):
        exact_answer_reward(PROMPTS, COMPLETIONS, answer=["122"])


def test_gsm8k_rewards_on_hand_written_completions():
    gold = ["She has 3 + 4 = 7 apples.\n#### 7"] * 5
    completions = ["3 + 4 = 7\n#### 7", "The answer is 7.", "3 + 4 = 7, so 8 is wrong... #### 8", "no idea",
                   "I count 7 then 7 again: 7"]
    assert gsm8k_answer_reward(["q"] * 5, completions, answer=gold) == [1, 1, 0, 0, 1]
    assert gsm8k_format_reward(["q"] * 5, completions, answer=gold) == [1, 0, 1, 0, 0]
    assert gsm8k_answer_reward(["q"], ["#### 1,200"], answer=["1200"]) == [1.0]


def test_gsm8k_reward_gives_one_to_every_gold_solution_and_zero_to_a_wrong_number(data_dir):
    examples = load_examples(data_dir / "instruct" / "gsm8k_test.jsonl")[:300]
    answers = [ex.answer for ex in examples]
    assert gsm8k_answer_reward([ex.question for ex in examples], answers, answer=answers) == [1.0] * len(examples)
    wrong = [re.sub(r"####\s*(\S+)", lambda m: f"#### {m.group(1).replace(',', '')}1", a) for a in answers]
    assert gsm8k_answer_reward([""] * len(wrong), wrong, answer=answers) == [0.0] * len(examples)
    assert gsm8k_format_reward([""] * len(answers), answers) == [1.0] * len(examples)


def test_score_completions_sums_with_weights_and_names_a_broken_function():
    total, parts = score_completions([exact_answer_reward, number_format_reward], PROMPTS[:4], COMPLETIONS[:4],
                                     weights=[1.0, 0.5], answer=["122"] * 4)
    assert parts == {"exact_answer_reward": [1, 1, 1, 0], "number_format_reward": [1, 1, 1, 0]}
    assert total == [1.5, 1.5, 1.5, 0.0]

    def too_few(prompts, completions, **columns):
        return [1.0]

    def nan(prompts, completions, **columns):
        return [float("nan")] * len(completions)

    with pytest.raises(ValueError, match="too_few returned 1 values for 4"):
        score_completions([too_few], PROMPTS[:4], COMPLETIONS[:4])
    with pytest.raises(ValueError, match="nan returned a NaN"):
        score_completions([nan], PROMPTS[:4], COMPLETIONS[:4])


def test_reward_model_as_a_reward_function_scores_prompt_plus_completion(one_thread):
    tok = train_bpe("What is 37 + 85? 122 123 " * 10, vocab_size=270, special_tokens=["<|endoftext|>"],
                    progress=False)
    eot = tok.special_ids["<|endoftext|>"]
    torch.manual_seed(0)
    rm = RewardModel(get_preset("tiny-gatorgpt", vocab_size=len(tok), context_length=64, init_std=0.3))
    fn = reward_model_reward(rm, tok, eos_id=eot, batch_size=2)
    got = fn(PROMPTS[:3], ["122", "123", "1"])
    with torch.no_grad():
        expected = [rm(torch.tensor([tok.encode(PROMPTS[0]) + tok.encode(c) + [eot]]))[0].item()
                    for c in ["122", "123", "1"]]
    assert got == pytest.approx(expected, abs=1e-5)


# -- the arithmetic task ------------------------------------------------------------------------------

def solve(question: str) -> int:
    a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question).groups()
    return {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}[op](int(a), int(b))


def test_arithmetic_problems_are_right_distinct_and_held_out():
    train, test = arithmetic_splits(2000, 300, digits=2, ops=("+", "-", "*"), seed=3)
    assert len(train) == 2000 and len(test) == 300
    for p in train + test:
        assert p.answer == str(solve(p.question))
        assert 0 <= p.a < 100 and 0 <= p.b < 100 and int(p.answer) >= 0
    facts = lambda ps: {(p.op, *sorted((p.a, p.b))) if p.op != "-" else (p.op, p.a, p.b) for p in ps}  # noqa: E731
    assert len(facts(train)) == 2000 and len(facts(test)) == 300  # distinct, counting a + b = b + a
    assert not facts(train) & facts(test)
    assert any(p.a > p.b for p in train if p.op == "+") and any(p.a < p.b for p in train if p.op == "+")
    assert arithmetic_splits(50, 10, seed=3) == arithmetic_splits(50, 10, seed=3)
    assert arithmetic_splits(50, 10, seed=3) != arithmetic_splits(50, 10, seed=4)
    big_train, big_test = arithmetic_splits(500, 100, digits=4, seed=0)  # drawn at random, not listed
    assert not facts(big_train) & facts(big_test) and len(facts(big_train)) == 500
    everything, none = arithmetic_splits(55, 0, digits=1, ops=("+",))
    assert len(facts(everything)) == 55 and none == []
    with pytest.raises(ValueError, match="only 55 distinct"):
        arithmetic_splits(50, 6, digits=1, ops=("+",))
    with pytest.raises(ValueError, match="unknown operators"):
        arithmetic_splits(5, 5, ops=("/",))


def test_arithmetic_records_feed_the_exact_answer_reward(tmp_path):
    _, test = arithmetic_splits(20, 5, seed=1)
    rows = prompt_records(test)
    assert rows[0]["prompt"] == [{"role": "user", "content": test[0].question}]
    answers = [r["answer"] for r in rows]
    assert exact_answer_reward([r["prompt"] for r in rows], answers, answer=answers) == [1.0] * 5
    sft = sft_records(test, conversational=False)
    assert sft[0] == {"prompt": test[0].question, "completion": test[0].answer}
    assert sft_records(test)[0]["messages"][1] == {"role": "assistant", "content": test[0].answer}
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_jsonl(path, rows)
