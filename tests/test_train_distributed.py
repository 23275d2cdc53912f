"""More than one process: `torchrun --nproc-per-node 2 -m gator pretrain` on CPU (gloo) follows the same
loss trajectory as one process that reaches the same global batch by gradient accumulation, with DDP
and with FSDP (`fully_shard`); and an FSDP run resumes from its gathered checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gator.data import END_OF_TEXT, prepare
from gator.data.synthetic import write_corpus
from gator.tokenizer import train_bpe

ARGS = ["model=tiny-gatorgpt", "model_config={context_length: 32}", "seq_len=32", "micro_batch=4",
        "batch_tokens=256", "lr=3e-3", "warmup_steps=3", "eval_every=4", "eval_tokens=256", "log_every=1",
        "ckpt_every=100", "dtype=fp32", "progress=false", "peak_flops=1e12", "threads=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    corpus = write_corpus(d / "stories.jsonl", 300, seed=2)
    tok = train_bpe(str(corpus), 300, special_tokens=[END_OF_TEXT], progress=False)
    prepare(corpus, tok, d / "data", val_fraction=0.1, workers=0, progress=False)
    return d / "data"


def run(nproc, data, out, *extra):
    args = ["-m", "gator", "pretrain", f"data={data}", f"out_dir={out}", *ARGS, *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines)], proc.stdout


def losses(records, key="loss"):
    return np.array([r[key] for r in records if key in r])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_accumulation(data, tmp_path, parallel):
    one, _ = run(1, data, tmp_path / "one", "max_steps=8")
    two, out = run(2, data, tmp_path / "two", "max_steps=8", f"parallel={parallel}")
    assert "cpu x 2" in out and "(1 accumulation step)" in out  # 2 ranks x 1 micro-step each
    assert len(losses(one)) == 8
    np.testing.assert_allclose(losses(two), losses(one), rtol=0, atol=1e-5)
    np.testing.assert_allclose(losses(two, "val_loss"), losses(one, "val_loss"), rtol=0, atol=1e-5)
    assert not list((tmp_path / "two").glob("*.tmp"))  # only rank 0 wrote, and completely


@pytest.mark.slow
def test_fsdp_resumes_from_its_gathered_checkpoint(data, tmp_path):
    # a constant schedule, so that stopping at step 4 (max_steps=4) changes nothing but the stop
    straight, _ = run(1, data, tmp_path / "a", "max_steps=8", "schedule=constant")
    run(2, data, tmp_path / "b", "max_steps=4", "parallel=fsdp", "schedule=constant")
    resumed, _ = run(2, data, tmp_path / "b", "max_steps=8", "parallel=fsdp", "resume=true", "schedule=constant")
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=0, atol=1e-5)
