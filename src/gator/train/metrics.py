"""What a training run reports: a metrics log, a loss plot, and the numbers behind the progress bar.

- `metrics.jsonl`: one JSON object per line, `{"step", "tokens", "loss", "lr", ...}` for training steps
  and `{"step", "val_loss", "val_ppl", "val_bpb"}` for evaluations; appended as training goes, so it
  survives an interruption and a resumed run continues it.
- `loss.png`: train and validation loss against tokens seen, redrawn after every evaluation.
- MFU (model FLOPs utilisation, PaLM appendix B): FLOPs the model needs per token x tokens per second,
  divided by what the hardware can do. Training costs about 6 FLOPs per weight per token (2 forward,
  4 backward) plus attention, 12 * layers * seq_len * q_dim. The peak comes from a table for known GPUs,
  or on a CPU is measured: a large matmul in the training dtype, timed for a moment.
- Bits per byte: the validation loss in nats per token, times tokens per byte of the validation text,
  divided by ln 2. Unlike loss per token it does not depend on the tokenizer, so runs with different
  vocabularies compare.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
                 "L4": 121e12, "4090": 165e12, "3090": 71e12}


def training_flops_per_token(config, n_matmul_params: int, seq_len: int) -> float:
    return 6 * n_matmul_params + 12 * config.n_layers * seq_len * config.q_dim


def peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s the device reaches on a large matmul in `dtype` (a table for known GPUs)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value if dtype != torch.float32 else value / 2
    return measure_matmul_flops(device, dtype, seconds=seconds)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 0.5) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bits_per_byte(loss_nats: float, tokens_per_byte: float) -> float:
    return loss_nats * tokens_per_byte / math.log(2)


class MetricsLog:
    """Append-only JSONL log; `read()` returns every record so far."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run replays the steps after its checkpoint)."""
        records = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Train and validation loss against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val", linewidth=1.5)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"
