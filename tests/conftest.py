"""Shared test helpers: where the shared data lives, and deterministic torch settings."""

from pathlib import Path

from gator.runtime import choose_omp_wait_policy

choose_omp_wait_policy()  # before torch is imported: spin on a quiet machine, sleep on a busy one

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; the repository must sit beside shared/")
    return DATA


@pytest.fixture
def one_thread():
    """Tiny models: one thread is as fast, and does not collapse when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gpt2_tiktoken(special_tokens: dict[str, int]):
    """An independent reference for the tokenizer: tiktoken built straight from GPT-2's vocab.json (as
    ../shared/data/README.md describes), with GPT-2's byte -> printable-character table written out here."""
    import json

    import tiktoken

    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    shifted = [b for b in range(256) if b not in keep]
    char = {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(shifted)}
    byte = {c: b for b, c in char.items()}
    encoder = json.loads((DATA / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(byte[c] for c in token): i for token, i in encoder.items() if token != "<|endoftext|>"}
    from gator.tokenizer import GPT2_PATTERN

    return tiktoken.Encoding(name="gpt2-reference", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


@pytest.fixture(scope="session")
def gpt2_tiktoken():
    """gpt2_tiktoken({"<|endoftext|>": 50256, ...}) -> a tiktoken.Encoding for GPT-2 with those special tokens."""
    return _gpt2_tiktoken


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """An empty folder on a simulated read-only filesystem: creating any file or folder under it fails with
    EROFS at the system call (os.open, os.mkdir), as it does on a read-only mount."""
    import errno
    import os

    ro = tmp_path / "ro"
    ro.mkdir()

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", refuse(os.open))
    monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
    return ro
