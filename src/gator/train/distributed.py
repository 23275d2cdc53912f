"""More than one process: the same training entry point under `torchrun`.

torchrun starts N copies of the program and tells each its RANK, LOCAL_RANK and WORLD_SIZE in the
environment. `setup` reads them, joins the process group (NCCL between GPUs, gloo on CPU) and picks the
device (GPU number LOCAL_RANK). Without torchrun it is a one-process group of its own and nothing here
communicates.

- DistributedDataParallel (DDP) keeps a full copy of the model in every process; after backward, the
  gradients are averaged across processes, so every copy takes the same step. Each process reads its
  own slice of every global batch (the loop does the slicing), so N processes with A/N accumulation
  steps compute the same update as one process with A steps.
- FSDP (`fully_shard`, PyTorch's FSDP2) shards parameters, gradients and optimizer state across the
  processes: each transformer block is gathered just before it runs and freed after, so a model N
  times larger than one device's memory still trains. Checkpoints gather the full state on rank 0.

Multi-node: run the same command on every machine with `--nnodes M --node-rank I
--rdzv-endpoint HOST:PORT` (see docs/04-training.md); nothing in the code changes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Env:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this PyTorch sees no GPU; use --device cpu "
                         "(device=cpu in a recipe)")
    return device


def setup(device: str = "auto") -> Env:
    """Join the torchrun process group if there is one; return rank, world size and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    base = pick_device(device)
    if world == 1:
        return Env(device=base)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if base.type == "cuda" else "gloo")
    return Env(rank=rank, local_rank=local_rank, world=world, device=base)


def teardown(env: Env, together: bool = True) -> None:
    """Leave the process group; after a normal end, all ranks together (a rank that tears down while
    another still talks to it can make gloo abort the other process at exit). After an error on one rank
    the others may never arrive, so there is no barrier then."""
    if env.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, env: Env, parallel: str) -> nn.Module:
    """The model as the training step calls it: DDP- or FSDP-wrapped under torchrun, else as it is."""
    if not env.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps; only the last one communicates."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_sum(t: torch.Tensor, env: Env) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None, env: Env, parallel: str
                     ) -> tuple[dict, dict | None]:
    """Model and optimizer state as full (unsharded) tensors; under FSDP every rank must call this."""
    if env.distributed and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
        return msd, osd
    raw = model.module if hasattr(model, "module") else model
    return raw.state_dict(), optimizer.state_dict() if optimizer is not None else None


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, env: Env,
                         parallel: str) -> None:
    """Load a full optimizer state dict (as `full_state_dicts` made it) into a possibly sharded optimizer."""
    if env.distributed and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
