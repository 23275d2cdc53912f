"""`gator tokenizer train|encode|decode|show|stats` through the real `gator` entry point, and its errors."""

from pathlib import Path

import pytest

from gator.cli import main
from gator.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VERDICT = DATA / "text" / "the_verdict.txt"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    code = main(["tokenizer", "train", "--input", str(VERDICT), "--vocab-size", "600", "--special", "<|endoftext|>",
                 "--out", str(out), "--hf", "--quiet"])
    assert code == 0
    return out


def test_train_saves_a_tokenizer_and_reports_time_and_compression(tmp_path, capsys):
    code = main(["tokenizer", "train", "--input", str(VERDICT), str(DATA / "text" / "alice_in_wonderland.txt"),
                 "--vocab-size", "400", "--special", "<|endoftext|>", "<pad>", "--pattern", "gpt4",
                 "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    tok = Tokenizer.load(tmp_path)
    assert len(tok) == 400 and tok.special_tokens == ["<|endoftext|>", "<pad>"]
    assert "trained 400 tokens (142 merges, 2 special)" in out and " s\n" in out
    text = VERDICT.read_text(encoding="utf-8") + (DATA / "text" / "alice_in_wonderland.txt").read_text("utf-8")
    ratio = len(text.encode()) / len(tok.encode(text))
    assert f"compression: {ratio:.2f} bytes per token" in out


def test_encode_decode_round_trip(saved, capsys):
    tok = Tokenizer.load(saved)
    assert main(["tokenizer", "encode", "-t", str(saved), "Hello there<|endoftext|>"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("Hello there<|endoftext|>", allowed_special="all")
    assert main(["tokenizer", "decode", "-t", str(saved), *ids]) == 0
    assert capsys.readouterr().out == "Hello there<|endoftext|>\n"
    assert main(["tokenizer", "encode", "-t", str(saved), "--input", str(VERDICT)]) == 0
    assert [int(i) for i in capsys.readouterr().out.split()] == tok.encode(VERDICT.read_text(encoding="utf-8"))


def test_encode_with_gpt2_and_hf_files(saved, capsys):
    assert main(["tokenizer", "encode", "-t", str(DATA / "gpt2"), "Hello world"]) == 0
    assert capsys.readouterr().out.split() == ["15496", "995"]  # GPT-2's well-known ids
    assert main(["tokenizer", "encode", "-t", str(saved / "tokenizer.json"), "Hello world"]) == 0
    assert [int(i) for i in capsys.readouterr().out.split()] == Tokenizer.load(saved).encode("Hello world")


def test_show_marks_token_boundaries(saved, capsys):
    assert main(["tokenizer", "show", "-t", str(DATA / "gpt2"), "Hello world!\n🦎", "--color", "never", "--ids"]) == 0
    out = capsys.readouterr().out  # a lizard is 4 bytes, 3 GPT-2 tokens: shown in hex, as they are no text
    assert out == "Hello| world|!|\u21b5\n|\u27e8f0 9f\u27e9|\u27e8a6\u27e9|\u27e88e\u27e9|\n7 tokens\n" + \
        " ".join(map(str, Tokenizer.from_gpt2_files(DATA / "gpt2" / "vocab.json", DATA / "gpt2" / "merges.txt")
                     .encode("Hello world!\n🦎"))) + "\n"
    assert main(["tokenizer", "show", "-t", str(saved), "Hello world", "--color", "always"]) == 0
    coloured = capsys.readouterr().out
    assert coloured.count("\x1b[48;5;") == len(Tokenizer.load(saved).encode("Hello world"))


def test_stats_reports_bytes_per_token_and_vocabulary_usage(saved, capsys):
    assert main(["tokenizer", "stats", "-t", str(saved), "--input", str(VERDICT)]) == 0
    out = capsys.readouterr().out
    tok = Tokenizer.load(saved)
    ids = tok.encode(VERDICT.read_text(encoding="utf-8"))
    assert f"tokens:      {len(ids):,}" in out
    assert f"{VERDICT.stat().st_size / len(ids):.3f} bytes per token" in out
    assert f"{len(set(ids)):,} of {len(tok):,} tokens used" in out


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe oops")
    cases = [
        (["train", "--input", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "o"), "--quiet"],
         "bad.txt is not UTF-8 text: byte 0xff at line 2, column 1"),
        (["train", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "300", "--out", str(tmp_path)],
         "no such file"),
        (["train", "--input", str(VERDICT), "--vocab-size", "100", "--out", str(tmp_path), "--quiet"],
         "vocab_size 100 is too small"),
        (["train", "--input", str(VERDICT), "--vocab-size", "300", "--special", "<s>", "<s>", "--out", str(tmp_path)],
         "given more than once"),
        (["encode", "-t", str(tmp_path / "nothing"), "hi"], "no tokenizer at"),
        (["decode", "-t", str(DATA / "gpt2"), "1", "99999999"], "unknown token id 99999999"),
        (["decode", "-t", str(DATA / "gpt2"), "one"], "token ids must be integers"),
    ]
    for argv, message in cases:
        assert main(["tokenizer", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
