"""The `gator` command as a new user meets it: the README path works end to end, flags mean one thing
everywhere, bad numbers are refused when the command line is read, and help answers without torch.

Each test goes through the real entry point (`gator.cli.main`) and checks the result against something
independent of the code under test: the files on disk, `train_bpe` called directly, transformers'
own loss, the parser itself for the README table."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gator.cli import build_parser, main
from gator.data.synthetic import write_corpus
from gator.model import Transformer
from gator.tokenizer import Tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EOT = "<|endoftext|>"
TINY = ["--recipe", "tiny", "max_steps=4", "progress=false", "peak_flops=1e12", "seq_len=32",
        "model_config.context_length=32", "eval_every=2", "ckpt_every=2", "eval_tokens=256"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The README path, as commands: tokenizer train (on JSONL), prepare, pretrain."""
    d = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(d / "stories.jsonl", 400, seed=0)
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "320", "--special", EOT,
                 "--out", str(d / "tok"), "--no-progress"]) == 0
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(d / "tok"), "--out", str(d / "data"),
                 "--val-fraction", "0.1", "--workers", "0", "--no-progress"]) == 0
    assert main(["pretrain", "--data", str(d / "data"), "--out", str(d / "run"), *TINY]) == 0
    return d


def prog_of(argv: list[str]) -> str:
    """The command's name as the error line starts it: 'gator' and the words before the first flag."""
    words = []
    for a in argv:
        if a.startswith("-"):
            break
        words.append(a)
    return "gator " + " ".join(words)


def one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


# --- the README path -----------------------------------------------------------------------------------

def test_tokenizer_train_reads_the_text_field_of_jsonl_like_prepare(work):
    texts = [json.loads(line)["text"] for line in (work / "stories.jsonl").read_text().splitlines()]
    direct = train_bpe(texts, 320, special_tokens=[EOT], progress=False)  # what prepare and the demo read
    trained = Tokenizer.load(work / "tok")
    assert trained.merges == direct.merges
    assert not any(b'{"' in t or b'":' in t or b'\\n' in t for t in trained.vocab.values())  # no JSON syntax


def test_pretrain_alone_writes_a_summary_with_the_last_train_loss(work):
    summary = json.loads((work / "run" / "summary.json").read_text())
    logged = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in logged if "loss" in r][-1]
    assert summary["steps"] == 4 and summary["train_loss"] == last_train["loss"]
    assert summary["val_loss"] == [r for r in logged if "val_loss" in r][-1]["val_loss"]


def test_a_run_folder_works_with_every_command_that_takes_a_model(work, tmp_path, capsys):
    run, best = work / "run", work / "run" / "best"
    capsys.readouterr()
    assert main(["info", "--model", str(run)]) == 0
    assert f"{Transformer.from_pretrained(best).num_params():,}" in capsys.readouterr().out
    assert main(["sample", "--model", str(run), "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert f"(model: {best}" in capsys.readouterr().out
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a cat.")
    assert main(["eval", "ppl", "--model", str(run), "--input", str(text), "--no-progress"]) == 0
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "Once upon", "choices": [" a time", " xyz"], "label": 0}) + "\n")
    assert main(["eval", "mc", "--model", str(run), "--input", str(mc), "--out", str(tmp_path / "s.jsonl"),
                 "--no-progress"]) == 0
    assert main(["viz", "attention", "--model", str(run), "--text", "Once upon", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["export", "hf", "--model", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", "gguf", "--model", str(run), "--out", str(tmp_path / "m.gguf")]) == 0
    # the old spellings still work: positional model and output, --checkpoint
    assert main(["export", "hf", str(run), str(tmp_path / "hf2")]) == 0
    assert main(["sample", "--checkpoint", str(run), "--max-new-tokens", "2", "--seed", "1"]) == 0


def test_an_imported_hf_model_finds_its_tokenizer_and_eval_matches_transformers(work, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = Tokenizer.load(work / "tok")
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save_hf(tmp_path / "hf")  # tokenizer.json + tokenizer_config.json, as a transformers folder holds them
    assert main(["import", "hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "g")]) == 0
    assert main(["sample", "--model", str(tmp_path / "g"), "--max-new-tokens", "3", "--seed", "0"]) == 0
    text = "Once upon a time there was a little dog."
    (tmp_path / "t.txt").write_text(text)
    capsys.readouterr()
    assert main(["eval", "ppl", "--model", str(tmp_path / "g"), "--input", str(tmp_path / "t.txt"),
                 "--no-progress"]) == 0
    ppl = float(re.search(r"perplexity ([0-9.]+)", capsys.readouterr().out).group(1))
    ids = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode(text).ids
    with torch.no_grad():
        loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert ppl == pytest.approx(float(torch.tensor(loss).exp()), rel=1e-3)


def test_sample_without_seed_varies_and_says_when_the_context_is_the_limit(work, capsys):
    capsys.readouterr()
    args = ["sample", "--model", str(work / "run"), "--max-new-tokens", "25", "--temperature", "1.0"]
    outputs = []
    for _ in range(2):
        assert main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] != outputs[1]
    seed = re.search(r"seed (\d+)", outputs[0]).group(1)
    assert main([*args, "--seed", seed]) == 0 and capsys.readouterr().out == outputs[0]
    assert main(["sample", "--model", str(work / "run"), "--max-new-tokens", "1000", "--seed", "0"]) == 0
    assert "the context is 32 tokens" in capsys.readouterr().err


def test_eval_ppl_shows_progress_and_reads_any_jsonl_field(work, tmp_path, capsys):
    (tmp_path / "s.jsonl").write_text(json.dumps({"story": "Once upon a time there was a cat. " * 4}) + "\n")
    capsys.readouterr()
    argv = ["eval", "ppl", "--model", str(work / "run"), "--input", str(tmp_path / "s.jsonl")]
    assert main([*argv, "--field", "story"]) == 0
    assert "perplexity" in capsys.readouterr().err  # the bar
    assert main([*argv, "--field", "story", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv) == 1
    assert "has no field 'text'" in one_error_line(capsys, "gator eval ppl")


# --- one output-path policy ---------------------------------------------------------------------------

def test_outputs_with_earlier_work_are_refused_then_forced(work, tmp_path, capsys):
    corpus = str(work / "stories.jsonl")
    tok = ["tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--special", EOT, "--no-progress"]
    assert main([*tok, "--out", str(tmp_path / "tok"), "--hf"]) == 0
    capsys.readouterr()
    assert main([*tok, "--out", str(tmp_path / "tok")]) == 1
    assert "already holds a tokenizer" in one_error_line(capsys, "gator tokenizer train")
    assert main([*tok, "--vocab-size", "290", "--out", str(tmp_path / "tok"), "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.gator.json"]  # no stale HF file
    assert len(Tokenizer.load(tmp_path / "tok")) == 290

    prep = ["prepare", "--input", corpus, "--tokenizer", str(work / "tok"), "--workers", "0", "--no-progress"]
    assert main([*prep, "--out", str(work / "data")]) == 1
    assert "already holds token shards" in one_error_line(capsys, "gator prepare")
    manifest = (work / "data" / "manifest.json").read_text()
    assert main([*prep, "--out", str(tmp_path / "data")]) == 0
    assert main([*prep, "--out", str(tmp_path / "data"), "--force"]) == 0
    assert (work / "data" / "manifest.json").read_text() == manifest

    before = (work / "run" / "checkpoint" / "model.safetensors").read_bytes()
    assert main(["pretrain", "--data", str(work / "data"), "--out", str(work / "run"), *TINY]) == 1
    line = one_error_line(capsys, "gator pretrain")
    assert "already holds a training run" in line and "--resume" in line and "--force" in line
    assert (work / "run" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_export_hf_into_an_older_export_leaves_no_stale_tokenizer(work, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import dataclasses

    other = Transformer(dataclasses.replace(Transformer.from_pretrained(work / "run" / "best").config, vocab_size=400))
    other.save_pretrained(tmp_path / "other")  # another vocabulary and no tokenizer
    assert main(["export", "hf", "--model", str(work / "run"), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert main(["export", "hf", "--model", str(tmp_path / "other"), "--out", str(tmp_path / "hf")]) == 1
    assert "already holds an earlier export" in one_error_line(capsys, "gator export hf")
    assert main(["export", "hf", "--model", str(tmp_path / "other"), "--out", str(tmp_path / "hf"), "--force"]) == 0
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").vocab_size == 400
    (tmp_path / "hf" / "notes.txt").write_text("mine")  # a folder with other files is never replaced
    assert main(["export", "hf", "--model", str(work / "run"), "--out", str(tmp_path / "hf"), "--force"]) == 1
    assert "notes.txt" in one_error_line(capsys, "gator export hf") and (tmp_path / "hf" / "notes.txt").exists()


def test_model_files_get_the_umask_mode_not_0600(work, tmp_path):
    reference = tmp_path / "plain"
    reference.write_text("")  # what open() gives under this umask: the reference
    mode = reference.stat().st_mode & 0o777
    assert mode != 0o600 or pytest.fail("the test needs a umask under which open() does not give 0600")
    main(["export", "hf", "--model", str(work / "run"), "--out", str(tmp_path / "hf")])
    files = [*(work / "run" / "best").iterdir(), *(work / "run" / "checkpoint").iterdir(),
             *(work / "tok").iterdir(), *(tmp_path / "hf").iterdir(), work / "run" / "summary.json"]
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: mode for f in files}


@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "--input", "{corpus}", "--vocab-size", "300", "--out", "{file}"],
    ["prepare", "--input", "{corpus}", "--tokenizer", "{tok}", "--out", "{file}"],
    ["pretrain", "--data", "{data}", "--out", "{file}", *TINY],
    ["export", "hf", "--model", "{run}", "--out", "{file}"],
    ["import", "hf", "--model", "{run}", "--out", "{file}/sub"],
])
def test_an_output_path_that_is_an_existing_file_is_refused(work, tmp_path, capsys, argv):
    names = dict(corpus=work / "stories.jsonl", tok=work / "tok", data=work / "data", run=work / "run",
                 file=tmp_path / "taken")
    (tmp_path / "taken").write_text("a file")
    assert main([a.format(**names) for a in argv]) == 1
    assert "taken" in one_error_line(capsys, prog_of(argv))
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_read_only_output_fails_before_the_long_work(work, read_only_dir, monkeypatch, capsys):
    """A read-only filesystem, simulated at the system call (conftest.py's read_only_dir). Training must
    never start (train_bpe / the model would be built first)."""
    import gator.tokenizer.cli
    import gator.train.setup

    ro = read_only_dir
    started = []
    monkeypatch.setattr(gator.tokenizer.cli, "train_bpe", lambda *a, **k: started.append("tokenizer"))
    monkeypatch.setattr(gator.train.setup, "initial_model", lambda *a, **k: started.append("model"))
    corpus, out = str(work / "stories.jsonl"), str(ro / "out")
    for argv in (["tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", out],
                 ["prepare", "--input", corpus, "--tokenizer", str(work / "tok"), "--out", out, "--workers", "0"],
                 ["pretrain", "--data", str(work / "data"), "--out", out, *TINY],
                 ["export", "hf", "--model", str(work / "run"), "--out", out],
                 ["viz", "attention", "--model", str(work / "run"), "--text", "Once", "--out", out + ".png"],
                 ["eval", "mc", "--model", str(work / "run"), "--input", corpus, "--out", out + ".jsonl"]):
        assert main(argv) == 1, argv
        assert "read-only file system" in one_error_line(capsys, prog_of(argv))
    assert started == [] and list(ro.iterdir()) == []


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_files(work, tmp_path, monkeypatch,
                                                                                  capsys):
    import shutil

    import safetensors.torch
    from safetensors import SafetensorError

    run = tmp_path / "run"
    shutil.copytree(work / "run", run)

    def full_disk(tensors, filename, metadata=None):  # what safetensors raises when the disk fills up
        Path(filename).write_bytes(b"\0" * 64)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    capsys.readouterr()
    assert main(["pretrain", "--data", str(work / "data"), "--out", str(run), "--resume", *TINY, "max_steps=6"]) == 1
    assert "No space left on device" in one_error_line(capsys, "gator pretrain")
    assert [p.name for p in run.rglob("*") if "tmp" in p.name] == []
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == \
        (work / "run" / "checkpoint" / "model.safetensors").read_bytes()


def test_resume_with_shards_of_another_tokenizer_of_the_same_size_is_refused(work, tmp_path, capsys):
    """Issue 12: the vocabulary size alone matches, so only the tokenizer check tells the two data sets apart."""
    import shutil

    from gator.data.shards import tokenizer_info

    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    other_corpus = write_corpus(tmp_path / "other.jsonl", 60, seed=1)
    assert main(["tokenizer", "train", "--input", str(other_corpus), "--vocab-size", "320", "--special", EOT,
                 "--out", str(tmp_path / "tok"), "--no-progress"]) == 0
    assert main(["prepare", "--input", str(work / "stories.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "data"), "--val-fraction", "0.1", "--workers", "0", "--no-progress"]) == 0
    old, new = (tokenizer_info(Tokenizer.load(d)) for d in (work / "tok", tmp_path / "tok"))
    assert old["vocab_size"] == new["vocab_size"] and old["fingerprint"] != new["fingerprint"]  # the premise

    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["pretrain", "--data", str(tmp_path / "data"), "--out", str(run), "--resume", *TINY,
                 "max_steps=6"]) == 1
    line = one_error_line(capsys, "gator pretrain")
    assert "--resume" in line and old["fingerprint"] in line and new["fingerprint"] in line, line
    assert str(run / "checkpoint") in line and str((tmp_path / "tok").resolve()) in line  # where each one lives
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched


# --- one error path -----------------------------------------------------------------------------------

@pytest.mark.parametrize("error, message", [
    (PermissionError(13, "Permission denied", "/data/x"), "/data/x: permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data/d"), "/data/d: is a folder, not a file"),
    (NotADirectoryError(20, "Not a directory", "/data/f/x"), "/data/f/x: a part of this path is a file"),
    (OSError(28, "No space left on device", "/data/big"), "/data/big: no space left on device"),
    (ValueError("bad value; fix it"), "bad value; fix it"),
])
def test_user_errors_are_one_line_with_the_full_subcommand(monkeypatch, capsys, tmp_path, error, message):
    import gator.eval.cli

    def fail(args):
        raise error

    monkeypatch.setattr(gator.eval.cli, "run_bleu", fail)
    assert main(["eval", "bleu", "--hypotheses", "h", "--references", "r"]) == 1
    assert one_error_line(capsys, "gator eval bleu").startswith(f"gator eval bleu: error: {message}")


def test_inputs_that_used_to_give_tracebacks(work, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.yaml").write_text("lr: [1e-3\nmax_steps: 2\n")
    assert main(["pretrain", "--recipe", str(tmp_path / "bad.yaml"), "--data", str(work / "data")]) == 1
    assert "bad.yaml is not valid YAML at line" in one_error_line(capsys, "gator pretrain")

    assert main(["eval", "ppl", "--model", str(work / "run"), "--input", str(tmp_path)]) == 1
    assert "is a folder" in one_error_line(capsys, "gator eval ppl")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    assert main(["eval", "ppl", "--model", str(work / "run"), "--input", str(tmp_path / "blob.bin")]) == 1
    assert "blob.bin is not UTF-8 text" in one_error_line(capsys, "gator eval ppl")

    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "manifest.json").write_text((work / "data" / "manifest.json").read_text()[:40])
    assert main(["pretrain", "--data", str(broken), "--out", str(tmp_path / "r"), *TINY]) == 1
    assert f"{broken / 'manifest.json'} is not valid JSON" in one_error_line(capsys, "gator pretrain")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    for argv in (["sample", "--model", str(work / "run")], ["eval", "ppl", "--model", str(work / "run"),
                                                             "--input", str(work / "stories.jsonl")]):
        assert main([*argv, "--device", "cuda"]) == 1
        assert "use --device cpu" in one_error_line(capsys, prog_of(argv))


def test_an_error_never_shares_a_line_with_a_progress_bar(work, tmp_path, monkeypatch, capsys):
    import gator.model.transformer as transformer

    original = transformer.linear_cross_entropy  # the training step's loss (the head and cross-entropy)
    calls = []

    def nan_after_two(*args, **kwargs):  # the loss becomes NaN while the bar is on screen
        calls.append(1)
        return original(*args, **kwargs) * (float("nan") if len(calls) > 2 else 1.0)

    monkeypatch.setattr(transformer, "linear_cross_entropy", nan_after_two)
    argv = [a for a in TINY if a != "progress=false"]
    assert main(["pretrain", "--data", str(work / "data"), "--out", str(tmp_path / "r"), *argv]) == 1
    err = capsys.readouterr().err
    assert "train lm" in err  # the bar was drawn
    assert "\ngator pretrain: error: the loss became nan" in err


# --- one vocabulary of flags, checked numbers, help without torch ---------------------------------------

@pytest.mark.parametrize("argv, flag, problem", [
    (["eval", "ppl", "--max-chars", "-100"], "--max-chars", "positive integer"),
    (["eval", "ppl", "--batch-size", "0"], "--batch-size", "positive integer"),
    (["eval", "ppl", "--stride", "0"], "--stride", "positive integer"),
    (["eval", "mc", "--limit", "-1"], "--limit", "positive integer"),
    (["eval", "mc", "--limit", "0"], "--limit", "positive integer"),
    (["prepare", "--limit", "0"], "--limit", "positive integer"),
    (["prepare", "--workers", "-1"], "--workers", "0 or more"),
    (["prepare", "--val-fraction", "0"], "--val-fraction", "between 0 and 1"),
    (["tokenizer", "train", "--workers", "-1"], "--workers", "0 or more"),
    (["sample", "--max-new-tokens", "-5"], "--max-new-tokens", "positive integer"),
    (["sample", "--num-samples", "0"], "--num-samples", "positive integer"),
    (["sample", "--top-p", "0"], "--top-p", "in (0, 1]"),
    (["viz", "attention", "--max-heads", "0"], "--max-heads", "positive integer"),
    (["pretrain", "--max-time", "-5s"], "--max-time", "positive duration"),
    (["pretrain", "--max-steps", "0"], "--max-steps", "positive integer"),
])
def test_bad_numbers_are_refused_with_the_flag_named(capsys, argv, flag, problem):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    prog = prog_of(argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: argument {flag}") and problem in line, line


def test_overrides_on_both_sides_of_a_flag(monkeypatch, capsys):
    import gator.train

    seen = {}
    monkeypatch.setattr(gator.train, "pretrain", lambda cfg: seen.update(cfg=cfg) or {"stopped": "max_steps"})
    assert main(["pretrain", "max_steps=3", "--recipe", "tiny", "lr=0.5", "--data", "d"]) == 0
    assert seen["cfg"].max_steps == 3 and seen["cfg"].lr == 0.5
    with pytest.raises(SystemExit):
        main(["pretrain", "--recipe", "tiny", "--bogus"])
    assert "gator pretrain: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_one_name_per_idea_across_commands():
    """Every command that takes a model calls it --model, every output is --out, progress is --no-progress;
    the older spellings are accepted but hidden from --help."""
    parser = build_parser()
    leaves = {}

    def walk(p, name):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[name] = p
        for a in subs:
            for sub_name, sub in a.choices.items():
                walk(sub, f"{name} {sub_name}".strip())

    walk(parser, "")
    for name, p in leaves.items():
        visible = {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        hidden = {s for a in p._actions if a.help == argparse.SUPPRESS for s in a.option_strings}
        assert not visible & {"--checkpoint", "--output", "--quiet"}, name
        assert "--out" not in hidden and "--model" not in hidden, name
    for name in ("sample", "eval ppl", "eval mc", "viz attention", "info", "export hf", "export gguf", "serve"):
        assert "--model" in leaves[name]._option_string_actions, name
        assert "--checkpoint" in leaves[name]._option_string_actions, name
    for name in ("sample", "eval ppl", "eval mc", "viz attention", "pretrain"):
        assert "--device" in leaves[name]._option_string_actions, name
    for name in ("tokenizer train", "prepare", "pretrain", "eval ppl", "eval mc"):
        assert "--no-progress" in leaves[name]._option_string_actions, name


def test_help_answers_without_importing_torch():
    code = """
import argparse, contextlib, io, sys
from gator.cli import build_parser, main
paths = []
def walk(p, prefix):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                paths.append(prefix + [name])
                walk(sub, prefix + [name])
walk(build_parser(), [])
for argv in [[]] + paths:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv + ["--help"])
print(len(paths), sorted(m for m in ("torch", "numpy", "transformers", "fastapi") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 20 and out[1:] == ["[]"]


def test_readme_cli_table_lists_exactly_the_commands_of_gator_help():
    table = [line for line in README.splitlines() if line.startswith("| `gator ")]
    listed = set()
    for row in table:
        for top, subs in re.findall(r"`gator ([a-z]+)(?: ([a-z|\\]+))?", row.split(" | ")[0]):
            listed |= {(top, s) for s in subs.split("\\|")} if subs else {(top, "")}
    parser = build_parser()
    commands = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for top, p in action.choices.items():
                subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
                commands |= {(top, s) for s in subs[0].choices} if subs else {(top, "")}
    assert listed == commands


def test_readme_transcripts_and_lists_match_the_commands(work, capsys):
    block = README.split("$ gator info --model gatorgpt\n", 1)[1].split("```", 1)[0]
    capsys.readouterr()
    assert main(["info", "--model", "gatorgpt"]) == 0
    assert capsys.readouterr().out == block
    recipes = README.split("Recipes (`recipes/`):", 1)[1].split("\n\n", 1)[0]
    for path in (ROOT / "recipes").glob("*.yaml"):
        assert f"`{path.stem}`" in recipes, path.stem
    listing = README.split("Everything lands in one run folder", 1)[1].split("\n\n", 1)[0]
    for entry in (work / "run").iterdir():
        shown = f"`{entry.name}/`" if entry.is_dir() else f"`{entry.name}`"
        assert shown in listing, entry.name
