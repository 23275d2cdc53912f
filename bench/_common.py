"""What the training-step benchmarks share (bench/train_throughput.py, bench/lora.py): the machine and
dtype-policy lines a table is quoted with, one training step as a closure, and the interleaved timing
rounds (a burst of load from other programs hits every configuration alike, so ratios stay fair).

Import it after `gator.runtime.choose_omp_wait_policy()` has run, like torch itself (see gator/runtime.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from gator.runtime import describe_cpu, describe_dtype_policy

Step = Callable[[], float]


def machine_lines() -> str:
    """Two lines for the top of a benchmark's output: the CPU and gator.runtime's dtype policy."""
    return (f"machine: {describe_cpu()}\ndtype policy: {describe_dtype_policy()}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average at start: {os.getloadavg()[0]:.2f}")


def make_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None,
              hf: bool) -> Step:
    """One training step (forward, loss, backward, optimizer step) as a closure returning the loss.
    transformers shifts labels itself, so it gets labels=x: position t predicts x[t+1], which is y[t];
    gator's last target is -100 to score exactly the same T-1 positions. `autocast_dtype` None: plain fp32."""
    def step() -> float:
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(input_ids=x, labels=x).loss if hf else model(x, y, return_logits=False)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def warm_up(configs: dict[str, Step]) -> dict[str, float]:
    """Two untimed steps per configuration (kernels, thread pools, torch.compile); the first-step losses."""
    first = {name: step() for name, step in configs.items()}
    for step in configs.values():
        step()
    return first


def time_rounds(configs: dict[str, Step], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step: `rounds` rounds, each running every configuration for `steps` steps in turn."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, step in configs.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    return times
