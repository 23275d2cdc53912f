"""A scalar autograd engine (micrograd-style): Value, a small neural-network library, and graph drawing."""

from gator.autograd.engine import Value, value_sum
from gator.autograd.graph import draw_graph, to_dot
from gator.autograd.nn import MLP, Layer, Module, Neuron

__all__ = ["Value", "value_sum", "draw_graph", "to_dot", "Module", "Neuron", "Layer", "MLP"]
