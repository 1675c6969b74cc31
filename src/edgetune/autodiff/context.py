"""What a gradient rule sees of one forward node (the traversal makes one per node)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.autodiff.builder import GraphBuilder, Var


class RuleContext:
    """What a gradient rule sees of one node: inputs, outputs, output gradients, shapes."""

    def __init__(self, b: GraphBuilder, node: onnx.NodeProto, shapes: dict, gys: list,
                 needs: list[bool], constants: dict[str, np.ndarray]):
        self.b = b
        self.node = node
        self.x = [b.var(n) if n else None for n in node.input]
        self.ys = [b.var(n) for n in node.output]
        self.y = self.ys[0]
        self.gys = gys
        self.gy = gys[0]
        self._needs = needs
        self._shapes = shapes
        self._constants = constants
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def needs(self, i: int) -> bool:
        return i < len(self._needs) and self._needs[i]

    def attr(self, name: str, default=None):
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def shape(self, v: Var | None) -> list | None:
        """Static dims of a forward tensor: int, a symbolic name, or None; None if unknown rank."""
        return None if v is None else self._shapes.get(v.name, (None, None))[1]

    def dtype(self, v: Var) -> int:
        """The ONNX element type of a forward tensor (float32 when unknown)."""
        return self._shapes.get(v.name, (TensorProto.FLOAT, None))[0]

    def rank(self, v: Var) -> int:
        shape = self.shape(v)
        if shape is None:
            raise self.error(f"the rank of {v.name!r} is unknown; give the graph input shapes")
        return len(shape)

    def static_dims(self, v: Var, what: str) -> list[int]:
        shape = self.shape(v)
        if shape is None or not all(isinstance(d, int) for d in shape[2:]):
            raise self.error(f"{what} needs static spatial dimensions for {v.name!r}, got {shape}")
        return shape

    def constant(self, i: int) -> np.ndarray | None:
        """The value of input i when it is an initializer or a Constant node's output."""
        name = self.node.input[i] if i < len(self.node.input) else ""
        return self._constants.get(name)

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.node.op_type} node {self.node.name!r}: {message}")

    def unbroadcast(self, g: Var, i: int, source_shape: list | None = None) -> Var | None:
        """Sum a gradient of the output's (broadcast) shape down to input i's shape."""
        if not self.needs(i):
            return None
        target = self.shape(self.x[i])
        source = self.shape(self.y) if source_shape is None else source_shape
        if target is None or source is None:
            raise self.error("unknown rank of an operand; broadcasting needs ranks")
        lead = len(source) - len(target)
        inner = [lead + j for j, t in enumerate(target) if t == 1 and source[lead + j] != 1]
        if not inner:  # only leading axes (or none): summing them away gives the shape
            return self.b.reduce_sum(g, list(range(lead))) if lead else g
        g = self.b.reduce_sum(g, list(range(lead)) + inner, keepdims=True)
        return self.b.Reshape(g, self.b.shape_of(self.x[i])) if lead else g
