"""Checkpoints that survive crashes: write everything into a temporary folder, then swap it in.

A run folder holds two model folders, each written by `Transformer.save_pretrained` (config.json,
model.safetensors, tokenizer files), so `gator sample` and `Transformer.from_pretrained` read them:

    checkpoint/   the latest state, plus training_state.pt (optimizer, step, data position, RNG states)
    best/         the weights with the lowest validation loss so far

Writing `checkpoint/` goes to `.checkpoint.tmp/` first (the model files through `save_pretrained`, which
writes each file atomically); only when every file is complete and flushed is the old folder renamed
away and the new one renamed into place. A full disk or a crash while
writing therefore leaves the previous checkpoint as it was. (Between the two renames the previous one
is briefly `.checkpoint.old/`; `checkpoint_dir` finds it there if a crash hit exactly then.)

The training state is loaded with `torch.load(weights_only=True)`: tensors, numbers and strings only.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gator.config import ModelConfig
from gator.errors import CheckpointError
from gator.model.transformer import CONFIG_NAME

STATE_NAME = "training_state.pt"


def checkpoint_dir(run_dir: str | Path, name: str = "checkpoint") -> Path | None:
    """The folder of checkpoint `name` in a run folder, or None if there is none."""
    run_dir = Path(run_dir)
    for candidate in (run_dir / name, run_dir / f".{name}.old"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def save_checkpoint(run_dir: str | Path, name: str, model: Any, model_state: dict[str, torch.Tensor],
                    tokenizer: Any = None, training_state: dict[str, Any] | None = None) -> Path:
    """Atomically (re)place run_dir/name with `model.save_pretrained(..., state_dict=model_state)` (the full
    state, which a sharded FSDP model gathers on rank 0) and, if given, the training state."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, tokenizer, state_dict=model_state)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_NAME)
        for f in tmp.iterdir():  # the tokenizer's and the training state's files too, before the swap
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as err:  # an OSError, or safetensors' SafetensorError wrapping one (a full disk)
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or str(err)
        if "No space left" in reason or "StorageFull" in reason:
            reason = "No space left on device"
        raise CheckpointError(getattr(err, "errno", None) or errno.EIO,
                              f"could not write the checkpoint to {final} ({reason}); the previous "
                              "checkpoint there is unchanged. Free some disk space and resume with --resume"
                              ) from err
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {STATE_NAME}; it holds weights only (e.g. best/), "
                                "so training cannot resume from it")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_same_shape(saved: ModelConfig, built: ModelConfig, where: Path) -> None:
    """Refuse to resume a checkpoint whose model differs from the one the recipe builds, naming fields."""
    a, b = saved.to_dict(), built.to_dict()
    diff = [f"{k}: checkpoint {a[k]!r} vs now {b.get(k)!r}" for k in a if k != "extra" and a[k] != b.get(k)]
    if diff:
        raise ValueError(f"the checkpoint in {where} is from a model of another shape ({'; '.join(diff)}); "
                         "train with the same model settings, or use a new --out folder")


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder from a model folder or a run folder (its best/, else its checkpoint/)."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    for name in ("best", "checkpoint"):
        found = checkpoint_dir(path, name)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} holds no model: expected config.json + model.safetensors, or a run folder "
                            "with best/ or checkpoint/")
