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
