"""A neural network built from scalar `Value`s: a neuron, a layer of neurons, a multilayer perceptron.

A neuron computes act(w . x + b); a layer is a list of neurons that all see the same input; an MLP is a
stack of layers, the last one linear so that its outputs are free real numbers (scores, logits). Every
weight is a `Value`, so `loss.backward()` gives each one its gradient and a training step is simply
`p.data -= lr * p.grad` for `p in model.parameters()`. The same structure as micrograd's `nn.py`, and
the same structure as `torch.nn.Linear` stacks, one scalar at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gator.autograd.engine import Number, Value

ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")


class Module:
    """Anything with parameters: gives them out, and zeroes their gradients."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """act(sum_i w_i x_i + b); w uniform in [-sqrt(6/nin), sqrt(6/nin)] (He et al., 2015), b = 0."""

    def __init__(self, nin: int, activation: str = "relu", rng: random.Random | None = None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        rng = rng or random.Random()
        bound = (6.0 / nin) ** 0.5
        self.w = [Value(rng.uniform(-bound, bound), label="w") for _ in range(nin)]
        self.b = Value(0.0, label="b")
        self.activation = activation

    def __call__(self, x: Sequence[Value | Number]) -> Value:
        if len(x) != len(self.w):
            raise ValueError(f"this neuron takes {len(self.w)} inputs, got {len(x)}")
        z = self.b
        for wi, xi in zip(self.w, x):
            z = z + wi * xi
        return z if self.activation == "linear" else getattr(z, self.activation)()

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"Neuron({len(self.w)}, {self.activation})"


class Layer(Module):
    """`nout` neurons, each reading the same `nin` inputs."""

    def __init__(self, nin: int, nout: int, activation: str = "relu", rng: random.Random | None = None):
        rng = rng or random.Random()
        self.neurons = [Neuron(nin, activation, rng) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | Number]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer({len(self.neurons[0].w)} -> {len(self.neurons)}, {self.neurons[0].activation})"


class MLP(Module):
    """Multilayer perceptron: MLP(2, [16, 16, 1]) maps 2 inputs through two hidden layers to 1 output.

    Hidden layers use `activation`; the last layer is linear. A single output is returned as a Value,
    several as a list. `seed` makes the initial weights reproducible.
    """

    def __init__(self, nin: int, nouts: Sequence[int], activation: str = "relu", seed: int | None = None):
        if not nouts:
            raise ValueError("an MLP needs at least one layer size in nouts")
        rng = random.Random(seed)
        sizes = [nin, *nouts]
        self.layers = [
            Layer(sizes[i], sizes[i + 1], activation if i < len(nouts) - 1 else "linear", rng)
            for i in range(len(nouts))
        ]

    def __call__(self, x: Sequence[Value | Number]) -> Value | list[Value]:
        out: list = list(x)
        for layer in self.layers:
            out = layer(out)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP([{', '.join(map(repr, self.layers))}])"
