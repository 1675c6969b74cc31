"""Reverse-mode differentiation of the nodes in a GraphBuilder: one traversal.

The traversal walks the forward nodes backwards, asks the rule table (rules.py) for
each node's input gradients and sums contributions. Rules may compute gradients for
every input; `GraphBuilder.graph()` prunes what no output needs, so frozen inputs
cost nothing at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.autodiff.builder import GraphBuilder, Var, make_model, value_dims
from edgetune.autodiff.context import RuleContext
from edgetune.autodiff.rules import RULES

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


class UnsupportedOpError(ValueError):
    """A node on the path from a trained tensor to the loss has no gradient rule."""


def _static_dims(type_proto: onnx.TypeProto):
    return type_proto.tensor_type.elem_type, value_dims(type_proto)


def infer_forward_shapes(b: GraphBuilder, outputs: Sequence[Var]) -> dict:
    """name -> (elem_type, dims) for every tensor of the builder's graph so far."""
    graph = helper.make_graph(list(b.nodes), "forward", b.inputs,
                              [helper.make_empty_tensor_value_info(v.name) for v in outputs],
                              list(b.initializers.values()))
    model = make_model(graph, infer=False)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {}
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        if vi.type.HasField("tensor_type"):
            shapes[vi.name] = _static_dims(vi.type)
    for t in inferred.initializer:
        shapes[t.name] = (t.data_type, list(t.dims))
    return shapes


def _constants(b: GraphBuilder) -> dict[str, np.ndarray]:
    values = {name: numpy_helper.to_array(t) for name, t in b.initializers.items()}
    for node in b.nodes:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def gradients(b: GraphBuilder, outputs: Sequence[Var], wrt: Sequence[Var],
              output_grads: Sequence[Var | None] | None = None) -> list[Var]:
    """Emit into `b` the gradients of `outputs` with respect to `wrt`.

    `output_grads` seeds each output's gradient (default: ones, i.e. d(sum outputs)).

        loss = b.ReduceSum(b.Tanh(w * x), keepdims=0)
        (gw,) = gradients(b, [loss], [w])
    """
    forward = list(b.nodes)
    shapes = infer_forward_shapes(b, outputs)
    constants = _constants(b)

    def differentiable(name: str) -> bool:
        return shapes.get(name, (TensorProto.FLOAT, None))[0] in FLOAT_TYPES

    needs_grad = {w.name for w in wrt}
    for node in forward:
        if any(i in needs_grad for i in node.input):
            needs_grad.update(o for o in node.output if o and differentiable(o))

    grads: dict[str, list[Var]] = {}
    for i, out in enumerate(outputs):
        seed = output_grads[i] if output_grads else None
        if seed is None:
            rank = shapes.get(out.name, (None, None))[1]
            seed = b.const(1.0) if rank == [] else b.Expand(b.const(1.0), b.shape_of(out))
        grads.setdefault(out.name, []).append(seed)

    for node in reversed(forward):
        if not any(o in grads for o in node.output):
            continue
        input_needs = [i in needs_grad for i in node.input]
        if not any(input_needs):
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOpError(
                f"no gradient rule for op {node.op_type} (node {node.name!r}, output "
                f"{node.output[0]!r}) on the path from a trained tensor to the loss; freeze "
                f"the tensors before it or add a rule to edgetune/autodiff/rules.py. "
                f"Supported ops: {', '.join(sorted(RULES))}")
        gys = [b.add_all(grads[o]) if o in grads else None for o in node.output]
        if gys[0] is None:
            continue  # only a non-differentiable output (e.g. MaxPool indices) is used
        ctx = RuleContext(b, node, shapes, gys, input_needs, constants)
        for name, g in zip(node.input, rule(ctx), strict=False):
            if g is not None and name in needs_grad:
                grads.setdefault(name, []).append(g)

    missing = [w.name for w in wrt if w.name not in grads]
    if missing:
        raise ValueError(f"the outputs do not depend on {missing}; nothing to train there")
    result = [b.add_all(grads[w.name]) for w in wrt]
    for w, g in zip(wrt, result, strict=True):
        elem_type, dims = shapes.get(w.name, (TensorProto.FLOAT, None))
        if dims is not None:
            b.types[g.name] = (helper.tensor_dtype_to_np_dtype(elem_type), dims)
    return result
