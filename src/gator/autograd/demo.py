"""Train a small MLP made of scalar `Value`s to separate two interleaved half-moons, and plot what it learned.

The data are the classic "two moons" (two noisy half circles, labels -1 and +1), generated here with numpy.
The loss is the mean hinge loss max(0, 1 - y * score) plus a little L2 weight decay, the same choice as
micrograd's demo; plain gradient descent with a decaying learning rate trains it in a few seconds.
`gator autograd demo --out DIR` writes DIR/autograd_demo.png: the decision boundary and the loss curve.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gator.autograd.engine import Value, value_sum
from gator.autograd.nn import MLP


def make_moons(n: int = 100, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` points in 2-D on two interleaving half circles, with Gaussian noise; labels are -1 and +1."""
    rng = np.random.default_rng(seed)
    n_top = n // 2
    t_top = np.linspace(0, np.pi, n_top)
    t_bottom = np.linspace(0, np.pi, n - n_top)
    top = np.stack([np.cos(t_top), np.sin(t_top)], axis=1)
    bottom = np.stack([1 - np.cos(t_bottom), 0.5 - np.sin(t_bottom)], axis=1)
    x = np.concatenate([top, bottom]) + rng.normal(scale=noise, size=(n, 2))
    y = np.concatenate([-np.ones(n_top), np.ones(n - n_top)])
    order = rng.permutation(n)
    return x[order], y[order]


def hinge_loss(model: MLP, x: np.ndarray, y: np.ndarray, alpha: float = 1e-4) -> tuple[Value, float]:
    """Mean hinge loss over the batch plus alpha * sum(w^2); also returns the batch accuracy."""
    scores = [model([float(a), float(b)]) for a, b in x]
    margins = [(1 - float(yi) * s).relu() for yi, s in zip(y, scores)]
    data_loss = value_sum(margins) / len(margins)
    reg = alpha * value_sum(p * p for p in model.parameters())
    accuracy = float(np.mean([(s.data > 0) == (yi > 0) for yi, s in zip(y, scores)]))
    return data_loss + reg, accuracy


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector. A Value graph has no reference cycles (reference counting frees
    it), but the collector still walks its ~10^5 live nodes again and again while a step builds them;
    pausing it makes a training step about twice as fast."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class TrainResult:
    model: MLP
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


def train_moons(
    x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...] = (16, 16), steps: int = 60, lr: float = 1.0,
    seed: int = 0, log_every: int = 0,
) -> TrainResult:
    """Full-batch gradient descent on the hinge loss; lr decays linearly to 10% of its start."""
    model = MLP(2, [*hidden, 1], activation="relu", seed=seed)
    result = TrainResult(model)
    for step in range(steps):
        with cycle_collector_paused():
            loss, acc = hinge_loss(model, x, y)
            model.zero_grad()
            loss.backward()
        step_lr = lr * (1.0 - 0.9 * step / max(1, steps))
        for p in model.parameters():
            p.data -= step_lr * p.grad
        result.losses.append(loss.data)
        result.accuracies.append(acc)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.data:.4f}  accuracy {acc:.0%}")
    return result


def plot_decision_boundary(result: TrainResult, x: np.ndarray, y: np.ndarray, path: str | Path,
                           grid: int = 40) -> Path:
    """Two panels: the model's sign over a grid with the data on top, and the loss curve."""
    from matplotlib.figure import Figure

    pad = 0.5
    gx = np.linspace(x[:, 0].min() - pad, x[:, 0].max() + pad, grid)
    gy = np.linspace(x[:, 1].min() - pad, x[:, 1].max() + pad, grid)
    with cycle_collector_paused():
        scores = np.array([[result.model([float(a), float(b)]).data for a in gx] for b in gy])

    fig = Figure(figsize=(11, 4.5))
    ax, ax_loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    ax.contourf(gx, gy, scores > 0, levels=[-0.5, 0.5, 1.5], colors=["#f6c9c9", "#c9d8f6"])
    ax.contour(gx, gy, scores, levels=[0.0], colors="k", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y > 0, "#2255cc", "#cc3333"), s=18, edgecolors="k",
               linewidths=0.4)
    ax.set_title(f"decision boundary (train accuracy {result.accuracies[-1]:.0%})")
    ax_loss.plot(result.losses)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("hinge loss + L2")
    ax_loss.set_title("training loss")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
