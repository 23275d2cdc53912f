"""`make demo` end to end, offline and in seconds: it must fall back to the synthetic corpus and say so,
and leave a complete run folder whose checkpoint samples, with a summary that matches the metrics log."""

import json

from gator.demo import main
from gator.model import Transformer


def test_demo_falls_back_to_synthetic_stories_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub path must fail fast, then fall back
    run = tmp_path / "demo"
    assert main(["--out", str(run), "--max-steps", "4", "--vocab-size", "400", "--synthetic-stories", "1500",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "not reachable" in out and "synthetic story corpus" in out
    for name in ("corpus.jsonl", "tokenizer/tokenizer.gator.json", "data/manifest.json", "checkpoint/model.safetensors",
                 "best/config.json", "metrics.jsonl", "loss.png", "samples.txt", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["steps"] == 4 and summary["val_loss"] == final["val_loss"]
    assert f"{summary['parameters']:,}" in out and f"{summary['val_bpb']:.3f}" in out
    assert Transformer.from_pretrained(run / "best").num_params() == summary["parameters"]
    assert (run / "samples.txt").read_text().count("Once upon a time") >= 1


def test_demo_says_what_is_wrong_with_data(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
