"""The post-training demo (gator/posttrain_demo.py) end to end at toy size: one-digit addition, a tiny
model, a few steps per stage. The table's accuracies are recomputed from the saved answers and the
gold answers; the SFT model's answers are recomputed by greedy decoding written out here; the
preference pairs are checked to be (right, wrong) answers of the SFT model itself."""

import json

import torch

from gator import posttrain_demo
from gator.model import Transformer
from gator.tokenizer import Tokenizer
from gator.tokenizer.chat import apply_chat_template


def test_demo_runs_every_stage_and_its_table_is_right(tmp_path):
    out = tmp_path / "demo"
    args = posttrain_demo.parse_args([
        "--out", str(out), "--digits", "1", "--ops", "+", "--train-problems", "40", "--test-problems", "8",
        "--d-model", "32", "--layers", "1", "--steps", "3", "--pref-prompts", "40", "--samples", "8",
        "--min-pairs", "1", "--group-size", "4", "--prompts-per-step", "4", "--sft-lr", "1e-2", "--no-progress"])
    results = posttrain_demo.run(args)
    stages = [r["stage"] for r in results["rows"]]
    assert stages[:2] == ["base", "SFT"] and stages[-1] == "GRPO"
    for stage in ("sft", "grpo"):
        assert (out / stage / "best" / "model.safetensors").is_file() and (out / stage / "metrics.jsonl").is_file()
    saved = json.loads((out / "results.json").read_text())
    gold = [json.loads(line)["answer"] for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    for row in saved["rows"]:
        if row["accuracy"] is not None:
            answers = saved["answers"][row["stage"]]
            assert row["accuracy"] == sum(a.strip() == g for a, g in zip(answers, gold)) / len(gold)
    assert "| SFT |" in (out / "table.md").read_text()

    # the SFT model's held-out answers, decoded greedily by hand
    tok = Tokenizer.load(out / "sft" / "best")
    model = Transformer.from_pretrained(out / "sft" / "best").eval()
    stop = tok.special_ids["<|im_end|>"]
    test = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    for row, answer in zip(test[:3], saved["answers"]["SFT"]):
        ids, new = apply_chat_template(tok, row["prompt"]), []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(torch.tensor([ids + new]))[0][0, -1].argmax())
                if nxt == stop:
                    break
                new.append(nxt)
        assert tok.decode(new) == answer

    pairs = [json.loads(line) for line in (out / "data" / "preferences.jsonl").read_text().splitlines()]
    for p in pairs:
        a, b = (int(x) for x in p["prompt"][0]["content"].removeprefix("What is ").rstrip("?").split(" + "))
        assert p["chosen"][0]["content"] == str(a + b) and p["rejected"][0]["content"] != str(a + b)
    if pairs:
        assert "reward model" in stages and "DPO" in stages
