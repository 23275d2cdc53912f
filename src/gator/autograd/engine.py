"""A scalar autograd engine: `Value` records how it was computed, and `backward()` applies the chain rule.

This is reverse-mode automatic differentiation at its smallest, in the spirit of Andrej Karpathy's
micrograd. Every operation on a `Value` returns a new `Value` that remembers its inputs (`parents`), the
operation's name (`op`) and the operation's local derivatives d(out)/d(parent), which are known the
moment the output is computed. `backward()` orders the graph so that every node comes after everything
it depends on (a topological order, built with an explicit stack so that a graph a million nodes deep
does not hit Python's recursion limit), seeds d(out)/d(out) = 1, and walks the order backwards: each
node adds local derivative x its own gradient into each parent's `grad`. Adding, rather than assigning,
is what makes a node that is used twice receive the sum of both paths' gradients (the multivariate
chain rule). micrograd stores a closure per node instead of the local derivatives; storing numbers keeps
the graph free of reference cycles, so Python frees it as soon as it is no longer used.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

Number = int | float


def _is_number(x: object) -> bool:
    """int, float and the like (numpy scalars, Fraction), but not bool and not complex."""
    return type(x) is float or type(x) is int or (isinstance(x, numbers.Real) and not isinstance(x, bool))


class Value:
    """A scalar that remembers the operations that produced it, so gradients can flow back through them."""

    __slots__ = ("data", "grad", "parents", "local_grads", "op", "label")

    def __init__(self, data: Number, parents: tuple[Value, ...] = (), op: str = "",
                 local_grads: tuple[float, ...] = (), label: str = ""):
        if not _is_number(data):
            raise TypeError(f"Value holds a real number (int or float), got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0
        self.parents = parents  # the Values this one was computed from
        self.local_grads = local_grads  # d(self)/d(parent), one per parent
        self.op = op
        self.label = label

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    @staticmethod
    def lift(x: Value | Number) -> Value:
        """Wrap a plain number as a constant Value; pass a Value through unchanged."""
        if isinstance(x, Value):
            return x
        if _is_number(x):
            return Value(x)
        raise TypeError(f"cannot combine a Value with {type(x).__name__}; use an int, a float or a Value")

    # -- binary operations: the output and its local derivatives ------------------------------------

    def __add__(self, other: Value | Number) -> Value:
        other = Value.lift(other)
        return Value(self.data + other.data, (self, other), "+", (1.0, 1.0))

    def __sub__(self, other: Value | Number) -> Value:
        other = Value.lift(other)
        return Value(self.data - other.data, (self, other), "-", (1.0, -1.0))

    def __mul__(self, other: Value | Number) -> Value:
        other = Value.lift(other)  # d(ab)/da = b, d(ab)/db = a
        return Value(self.data * other.data, (self, other), "*", (other.data, self.data))

    def __truediv__(self, other: Value | Number) -> Value:
        other = Value.lift(other)
        a, b = self.data, other.data
        if b == 0.0:
            raise ZeroDivisionError(f"division by zero: {a:g} / 0 (the denominator Value is 0)")
        return Value(a / b, (self, other), "/", (1.0 / b, -a / (b * b)))  # d(a/b)/db = -a/b^2

    def __pow__(self, exponent: Number) -> Value:
        if not _is_number(exponent):
            raise TypeError(
                f"Value ** {type(exponent).__name__}: the exponent must be an int or float constant "
                "(for a Value exponent write (b.log() * e).exp())"
            )
        x, p = self.data, float(exponent)
        if x == 0.0 and p < 0:
            raise ZeroDivisionError(f"0 ** {p:g}: zero raised to a negative power")
        if x < 0 and not p.is_integer():
            raise ValueError(f"({x:g}) ** {p:g}: a negative base needs an integer exponent (result is complex)")
        if p == 0:
            local = 0.0
        elif x == 0 and p < 1:
            local = math.inf  # the slope of x^p at 0 is vertical for 0 < p < 1
        else:
            local = p * x ** (p - 1)  # d(x^p)/dx = p x^(p-1)
        return Value(x**p, (self,), f"**{p:g}", (local,))

    # -- the reflected forms: number (op) Value ---------------------------------------------------

    def __radd__(self, other: Number) -> Value:
        return Value.lift(other) + self

    def __rsub__(self, other: Number) -> Value:
        return Value.lift(other) - self

    def __rmul__(self, other: Number) -> Value:
        return Value.lift(other) * self

    def __rtruediv__(self, other: Number) -> Value:
        return Value.lift(other) / self

    def __rpow__(self, base: Number) -> Value:
        """number ** Value, computed as exp(v * ln base); the base must be positive."""
        if not _is_number(base):
            return NotImplemented
        if base <= 0:
            raise ValueError(f"{base:g} ** Value: the base of a Value exponent must be positive")
        return (self * math.log(base)).exp()

    # -- unary functions --------------------------------------------------------------------------

    def __neg__(self) -> Value:
        return Value(-self.data, (self,), "neg", (-1.0,))

    def exp(self) -> Value:
        try:
            e = math.exp(self.data)
        except OverflowError:
            raise OverflowError(f"exp({self.data:g}) overflows a float") from None
        return Value(e, (self,), "exp", (e,))  # d e^x/dx = e^x

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log({self.data:g}): the natural log is defined only for positive numbers")
        return Value(math.log(self.data), (self,), "log", (1.0 / self.data,))  # d ln x/dx = 1/x

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        return Value(t, (self,), "tanh", (1.0 - t * t,))  # d tanh x/dx = 1 - tanh^2 x

    def relu(self) -> Value:
        positive = self.data > 0
        return Value(self.data if positive else 0.0, (self,), "relu", (1.0 if positive else 0.0,))

    def sigmoid(self) -> Value:
        x = self.data  # two algebraically equal forms, so that exp never overflows
        s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return Value(s, (self,), "sigmoid", (s * (1.0 - s),))  # d s/dx = s (1 - s)

    # -- the graph ---------------------------------------------------------------------------------

    def topological_order(self) -> list[Value]:
        """Every node this Value depends on (itself last), each after all of its parents. No recursion."""
        order: list[Value] = []
        visited: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)  # post-order: all of its parents are already in `order`
            elif id(node) not in visited:
                visited.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node.parents if id(p) not in visited)
        return order

    def backward(self) -> None:
        """Fill `.grad` of every node in the graph with d(self)/d(node).

        As in PyTorch, leaves (inputs, parameters) accumulate: a second call adds to their `.grad`, so call
        `zero_grad()` between training steps. Intermediate nodes are recomputed from zero on every call.
        """
        order = self.topological_order()
        for node in order:
            if node.parents:
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):  # a node's grad is complete once all its children have run
            for parent, local in zip(node.parents, node.local_grads):
                parent.grad += local * node.grad

    def zero_grad(self) -> None:
        """Set `.grad` to 0 on this Value and on everything it was computed from."""
        for node in self.topological_order():
            node.grad = 0.0


def value_sum(values: Iterable[Value | Number]) -> Value:
    """Sum that starts from Value(0) so that an empty or all-number list still gives a Value."""
    total = Value(0.0)
    for v in values:
        total = total + v
    return total
