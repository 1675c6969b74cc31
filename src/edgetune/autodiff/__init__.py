"""Reverse-mode differentiation of ONNX graphs into plain ONNX graphs.

`GraphBuilder` emits nodes (its values support Python operators), `gradients` walks
the forward nodes backwards using the table in `rules.RULES`.
"""

from edgetune.autodiff.builder import IR_VERSION, OPSET, GraphBuilder, Var, make_model, prune
from edgetune.autodiff.rules import RULES
from edgetune.autodiff.traversal import UnsupportedOpError, gradients

__all__ = ["GraphBuilder", "IR_VERSION", "OPSET", "RULES", "UnsupportedOpError", "Var",
           "gradients", "make_model", "prune"]
