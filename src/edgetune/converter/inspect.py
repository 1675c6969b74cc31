"""What an ONNX model is, for choosing how to convert it (``edgetune inspect MODEL.onnx``).

    info = describe_model("model.onnx", tensors=True)
    info["inputs"], info["preprocessing"], info["block_boundaries"]
    [t["name"] for t in info["tensors"] if t["good_cut"]]   # candidates for --cut

Errors (not ONNX, truncated, rejected by the checker) are one-line ValueErrors, as in
:func:`edgetune.converter.modelfile.load_model`.
"""

from __future__ import annotations

import os
import warnings

import onnx
from onnx import helper

from edgetune.autodiff.builder import value_dims
from edgetune.converter.cut import articulation_tensors, block_boundaries, constant_tensors
from edgetune.converter.modelfile import load_model
from edgetune.converter.preprocess import plan_input

__all__ = ["describe_model"]

#: Ops whose output is a whole-image summary: the usual place to cut a classifier.
POOLING_OPS = {"GlobalAveragePool", "GlobalMaxPool", "Flatten", "ReduceMean", "ReduceMax"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _dtype(elem: int) -> str:
    try:
        return helper.tensor_dtype_to_np_dtype(elem).name
    except Exception:  # noqa: BLE001 - exotic element types
        return onnx.TensorProto.DataType.Name(elem).lower()


def _io(values) -> list[dict]:
    return [{"name": v.name, "dtype": _dtype(v.type.tensor_type.elem_type),
             "shape": value_dims(v)} for v in values]


def describe_model(path: str | os.PathLike | onnx.ModelProto, tensors: bool = True,
                   *, preprocess=None, input_size=None) -> dict:
    """A JSON-able description of an ONNX model as an edgetune base.

    Keys: ``file``, ``ir_version``, ``opset``, ``producer``, ``node_count``, ``ops``
    (op type -> count), ``inputs`` / ``outputs`` (name, dtype, shape; initializers are
    not inputs), ``metadata``, ``repairs`` (what converting will repair), ``input``
    (how convert will feed it: ``kind``, ``preprocessing`` or ``problem``, a sentence),
    ``block_boundaries`` (what ``last:K`` cuts at, or ``block_problem``), and with
    ``tensors`` a ``tensors`` list of cut candidates: float tensors with a static
    shape per sample, ordered by depth (nodes from the input), each ``{name, shape
    (per sample), op, depth, elements, boundary, good_cut, why}``; ``good_cut`` marks
    pooled/flattened whole-image summaries and the input of the last weighted layer
    (features before a classifier). ``suggested_cut`` is the deepest good cut."""
    source = "the model" if isinstance(path, onnx.ModelProto) else os.fspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, repairs = load_model(path, source=source)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    info: dict = {
        "file": source, "ir_version": model.ir_version, "opset": opset,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "node_count": len(graph.node), "ops": dict(sorted(ops.items())),
        "inputs": _io(graph.input), "outputs": _io(graph.output),
        "metadata": {p.key: p.value for p in model.metadata_props}, "repairs": repairs,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_input(model, preprocess, input_size, source=source)
        info["input"] = {"kind": "image" if plan.is_image else "tensor",
                         "preprocessing": plan.section()}
    except ValueError as e:
        info["input"] = {"kind": None, "problem": str(e)}
    try:
        info["block_boundaries"] = block_boundaries(model)
    except ValueError as e:
        info["block_boundaries"], info["block_problem"] = [], str(e)
    if tensors:
        info["tensors"] = _candidates(model, set(info["block_boundaries"]))
        good = [t["name"] for t in info["tensors"] if t["good_cut"]]
        info["suggested_cut"] = good[-1] if good else None
    return info


def _candidates(model: onnx.ModelProto, boundaries: set[str]) -> list[dict]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - best effort: declared types only
        inferred = model.graph
    typed = {v.name: v for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    graph = model.graph
    const = constant_tensors(graph)
    depth = {i.name: 0 for i in graph.input if i.name not in const}
    producer_op: dict[str, str] = {}
    for node in graph.node:
        level = max((depth[i] for i in node.input if i in depth), default=None)
        for out in node.output:
            if out and out not in const:
                producer_op[out] = node.op_type
                if level is not None:
                    depth[out] = level + 1
    articulation = set(articulation_tensors(graph))
    weighted = [n for n in graph.node if n.op_type in ("Gemm", "MatMul", "Conv")
                and any(x in const for x in n.input[1:] if x)]
    before_last = weighted[-1].input[0] if weighted else None
    outputs = {o.name for o in graph.output}
    found = []
    for name, op in producer_op.items():
        vi = typed.get(name)
        if vi is None or vi.type.tensor_type.elem_type not in _FLOAT_TYPES or name not in depth:
            continue
        dims = value_dims(vi)
        if not dims or len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
            continue
        elements = 1
        for d in dims[1:]:
            elements *= d
        why = []
        summary = op in POOLING_OPS and (len(dims) == 2 or all(d == 1 for d in dims[2:]))
        if summary and name in articulation:
            why.append(f"{op} output: one vector per image")
        if name == before_last and name in articulation:
            why.append("input of the last layer with weights (features before the classifier)")
        if name in outputs:
            why.append("a model output")
        found.append({"name": name, "shape": ["N", *dims[1:]], "op": op,
                      "depth": depth[name], "elements": elements,
                      "boundary": name in boundaries,
                      "good_cut": name in articulation and (summary or name == before_last),
                      "why": "; ".join(why) or None})
    found.sort(key=lambda t: t["depth"])
    return found
