"""gator.autograd against torch autograd: generated expression graphs, domain errors, MLP training, drawing."""

from __future__ import annotations

import argparse
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gator.autograd import MLP, Layer, Neuron, Value, draw_graph, to_dot
from gator.autograd.demo import make_moons, train_moons

# ---------------------------------------------------------------- generated graphs vs torch autograd
#
# A program is a list of steps; each step applies one operation to nodes chosen by index from everything
# computed so far, so indices repeat and subexpressions are shared. The same program runs on gator Values
# and on float64 torch tensors. Operations with a restricted domain first map their input into the domain
# with other operations (x*x + 1 is positive, for example), choosing the branch from the forward value.

UNARY = ["neg", "exp", "log", "tanh", "relu", "sigmoid", "pow", "rpow"]
BINARY = ["add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv"]
EXPONENTS = [2, 3, -1, 0.5, -1.5, 1.7, 0]

step = st.tuples(
    st.sampled_from(UNARY + BINARY),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.floats(-3, 3, allow_nan=False).filter(lambda c: abs(c) > 0.1),
    st.sampled_from(EXPONENTS),
)


def positive(x, v):
    """A positive node built from x (v is x's forward value): x itself when it is comfortably positive."""
    return x if v > 0.2 else x * x + 1


def nonzero(x, v):
    return x if abs(v) > 0.2 else x * x + 1


def apply(op, a, b, va, vb, c, p, exp):
    """One operation on either engine; va and vb are the gator forward values that pick domain branches."""
    if op == "neg":
        return -a
    if op == "exp":
        return exp(a if va < 5 else a.tanh())  # keeps values finite
    if op == "log":
        return positive(a, va).log()
    if op in ("tanh", "relu", "sigmoid"):
        return getattr(a, op)()
    if op == "pow":
        base = a if float(p).is_integer() and p >= 0 else positive(a, va)
        return base**p
    if op == "rpow":
        return abs(c) ** (a if va < 5 else a.tanh())
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return a / nonzero(b, vb)
    if op == "radd":
        return c + a
    if op == "rsub":
        return c - a
    if op == "rmul":
        return c * a
    if op == "rdiv":
        return c / nonzero(a, va)
    raise AssertionError(op)


def run_program(leaves, program):
    xs = [Value(v, label=f"x{i}") for i, v in enumerate(leaves)]
    ts = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in leaves]
    gs, tn = list(xs), list(ts)
    for op, i, j, c, p in program:
        i, j = i % len(gs), j % len(gs)
        va, vb = gs[i].data, gs[j].data
        g = apply(op, gs[i], gs[j], va, vb, c, p, lambda v: v.exp())
        t = apply(op, tn[i], tn[j], va, vb, c, p, torch.exp)
        assume(abs(g.data) < 1e6)
        gs.append(g)
        tn.append(t)
    # the output uses every node made, so every node (and several paths to each leaf) gets a gradient
    out_g = gs[len(xs)]
    out_t = tn[len(xs)]
    for g, t in zip(gs[len(xs) + 1:], tn[len(xs) + 1:]):
        out_g = out_g + g.tanh()
        out_t = out_t + torch.tanh(t)
    return xs, ts, out_g, out_t


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9)


@settings(max_examples=150, deadline=None)
@given(
    leaves=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4),
    program=st.lists(step, min_size=1, max_size=12),
)
def test_gradients_match_torch_on_generated_graphs(leaves, program):
    xs, ts, out_g, out_t = run_program(leaves, program)
    out_t.backward()
    out_g.backward()
    assert close(out_g.data, out_t.item())
    for x, t in zip(xs, ts):
        expected = 0.0 if t.grad is None else t.grad.item()
        assert close(x.grad, expected), (x, expected)


def test_generated_graphs_cover_every_operator():
    """The operator lists the property test draws from name every operation Value defines."""
    assert set(UNARY + BINARY) == {
        "neg", "exp", "log", "tanh", "relu", "sigmoid", "pow", "rpow",
        "add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv",
    }
    a = Value(0.7)
    for op in UNARY + BINARY:  # and each branch of `apply` runs on a Value
        assert isinstance(apply(op, a, a, 0.7, 0.7, 1.5, 2, lambda v: v.exp()), Value)


def test_shared_subexpression_accumulates():
    # f = (x*y) + (x*y)**2 + x: x reaches f along three paths
    x, y = Value(1.5), Value(-2.0)
    xy = x * y
    f = xy + xy**2 + x
    f.backward()
    # df/dx = y + 2xy*y + 1, df/dy = x + 2xy*x
    assert close(x.grad, -2.0 + 2 * (1.5 * -2.0) * -2.0 + 1)
    assert close(y.grad, 1.5 + 2 * (1.5 * -2.0) * 1.5)
    # a node used twice as both operands of one operation
    z = Value(3.0)
    (z * z).backward()
    assert z.grad == 6.0


def test_backward_is_iterative_on_deep_graphs():
    x = Value(1.0)
    y = x
    for _ in range(20_000):  # a chain 20,000 deep, far beyond Python's default recursion limit of 1000
        y = y + x
    y.backward()
    assert y.data == 20_001.0 and x.grad == 20_001.0


def test_leaves_accumulate_and_zero_grad_resets():
    x = Value(2.0)
    y = x * x * 3
    y.backward()
    y.backward()  # like torch: a leaf's gradient adds up over calls
    assert x.grad == 24.0
    y.zero_grad()
    assert x.grad == 0.0 and y.grad == 0.0
    y.backward()
    assert x.grad == 12.0


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: Value(0.0).log(), ValueError, "log(0)"),
        (lambda: Value(-1.5).log(), ValueError, "positive"),
        (lambda: Value(1.0) / Value(0.0), ZeroDivisionError, "division by zero"),
        (lambda: Value(1.0) / 0, ZeroDivisionError, "division by zero"),
        (lambda: 2.0 / Value(0.0), ZeroDivisionError, "division by zero"),
        (lambda: Value(2.0) ** Value(3.0), TypeError, "exponent must be an int or float"),
        (lambda: Value(2.0) ** "3", TypeError, "exponent must be an int or float"),
        (lambda: Value(0.0) ** -1, ZeroDivisionError, "negative power"),
        (lambda: Value(-2.0) ** 0.5, ValueError, "integer exponent"),
        (lambda: (-2.0) ** Value(1.0), ValueError, "must be positive"),
        (lambda: Value(1000.0).exp(), OverflowError, "overflows"),
        (lambda: Value("1"), TypeError, "real number"),
        (lambda: Value(1.0) + "a", TypeError, "cannot combine"),
    ],
)
def test_domain_errors_are_clear(make, error, words):
    with pytest.raises(error, match=re.escape(words)):
        make()


def test_mlp_matches_torch_and_parameters_are_complete():
    model = MLP(3, [4, 4, 2], activation="tanh", seed=0)
    params = model.parameters()
    assert len(params) == (3 * 4 + 4) + (4 * 4 + 4) + (4 * 2 + 2)
    assert len({id(p) for p in params}) == len(params)
    # the same network in torch, weights copied from the Values
    layers = []
    for layer in model.layers:
        w = torch.tensor([[p.data for p in n.w] for n in layer.neurons], dtype=torch.float64)
        b = torch.tensor([n.b.data for n in layer.neurons], dtype=torch.float64)
        layers.append((w.requires_grad_(), b.requires_grad_()))
    x = [0.5, -1.0, 2.0]
    h = torch.tensor(x, dtype=torch.float64)
    for k, (w, b) in enumerate(layers):
        h = w @ h + b
        if k < len(layers) - 1:
            h = torch.tanh(h)
    (h[0] * h[1]).backward()
    out = model(x)
    assert isinstance(out, list) and len(out) == 2
    assert close(out[0].data, h[0].item()) and close(out[1].data, h[1].item())
    (out[0] * out[1]).backward()
    for layer, (w, b) in zip(model.layers, layers):
        for r, n in enumerate(layer.neurons):
            assert all(close(p.grad, w.grad[r, c].item()) for c, p in enumerate(n.w))
            assert close(n.b.grad, b.grad[r].item())
    model.zero_grad()
    assert all(p.grad == 0.0 for p in params)


def test_neuron_and_layer_shapes():
    n = Neuron(3, "linear")
    assert len(n.parameters()) == 4
    with pytest.raises(ValueError, match="takes 3 inputs"):
        n([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown activation"):
        Neuron(2, "gelu")
    assert len(Layer(3, 5)([1.0, 2.0, 3.0])) == 5


def test_training_reduces_loss_on_moons():
    x, y = make_moons(40, noise=0.1, seed=1)
    assert x.shape == (40, 2) and set(np.unique(y)) == {-1.0, 1.0}
    result = train_moons(x, y, hidden=(8, 8), steps=25, seed=1)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.accuracies[-1] >= 0.85


def small_graph() -> Value:
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    c = a * b + a
    d = (c.tanh() * 2).exp() / b**2
    d.label = "d"
    d.backward()
    return d


def test_draw_graph_png_and_svg(tmp_path):
    import matplotlib.image

    d = small_graph()
    png = draw_graph(d, tmp_path / "g.png", backend="matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 50 and img.shape[1] > 200
    svg = draw_graph(d, tmp_path / "sub" / "g.svg")  # auto: graphviz if installed, else matplotlib
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    with pytest.raises(ValueError, match="svg, png, pdf"):
        draw_graph(d, tmp_path / "g.txt")


def test_to_dot_lists_every_value_and_operation():
    d = small_graph()
    dot = to_dot(d)
    nodes = d.topological_order()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert dot.count("shape=record") == len(nodes)
    assert dot.count("shape=ellipse") == sum(1 for n in nodes if n.op)
    assert dot.count("->") == sum(len(n.parents) + 1 for n in nodes if n.op)
    assert "a | data 2 | grad" in dot


def test_cli_demo_writes_png(tmp_path):
    from gator.autograd import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["autograd", "demo", "--out", str(tmp_path), "--points", "30", "--steps", "3",
                              "--hidden", "4"])
    assert args.func(args) == 0
    assert (tmp_path / "autograd_demo.png").read_bytes()[:4] == b"\x89PNG"
    assert ET.parse(tmp_path / "neuron_graph.svg").getroot().tag.endswith("svg")
