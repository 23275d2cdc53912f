"""`gator autograd demo`: train a scalar-autograd MLP on two moons, plot its decision boundary and a graph."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("autograd", help="the scalar autograd engine (micrograd-style)")
    sub = parser.add_subparsers(dest="autograd_command", metavar="SUBCOMMAND", required=True)
    demo = sub.add_parser("demo", help="train an MLP on two moons and plot the decision boundary")
    demo.add_argument("--out", type=Path, required=True, help="directory for the PNG and the graph picture")
    demo.add_argument("--points", type=int, default=100, help="number of training points (default 100)")
    demo.add_argument("--steps", type=int, default=60, help="gradient descent steps (default 60)")
    demo.add_argument("--hidden", type=int, nargs="+", default=[16, 16], help="hidden layer sizes")
    demo.add_argument("--lr", type=float, default=1.0, help="starting learning rate (default 1.0)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from gator.autograd.demo import make_moons, plot_decision_boundary, train_moons
    from gator.autograd.engine import Value
    from gator.autograd.graph import draw_graph
    from gator.autograd.nn import Neuron

    if args.points < 4 or args.steps < 1 or any(h < 1 for h in args.hidden):
        raise ValueError("--points must be >= 4, --steps >= 1 and every --hidden size >= 1")
    x, y = make_moons(args.points, noise=0.1, seed=args.seed)
    start = time.perf_counter()
    result = train_moons(x, y, hidden=tuple(args.hidden), steps=args.steps, lr=args.lr, seed=args.seed,
                         log_every=max(1, args.steps // 10))
    print(f"trained {len(result.model.parameters())} parameters in {time.perf_counter() - start:.1f}s")
    png = plot_decision_boundary(result, x, y, args.out / "autograd_demo.png")
    print(f"wrote {png}")

    # The graph of one neuron on one point, after backward: what the engine records for every weight.
    import random

    neuron = Neuron(2, "tanh", random.Random(args.seed))
    inputs = [Value(float(x[0, 0]), label="x0"), Value(float(x[0, 1]), label="x1")]
    for i, w in enumerate(neuron.w):
        w.label = f"w{i}"
    out = neuron(inputs)
    out.label = "out"
    out.backward()
    graph = draw_graph(out, args.out / "neuron_graph.svg")
    print(f"wrote {graph}")
    return 0
