"""Cutting a model at a tensor: the one implementation every caller uses.

- :func:`extract` keeps the part of a model between some tensors (its new inputs,
  default the model's own) and others (its new outputs).
- :func:`onnx_file_base` loads an ONNX file and cuts it at a tensor (a user's base).
- :func:`block_boundaries` lists the tensors between the top-level blocks of a base, so
  ``last:K`` can cut the graph before its last K blocks.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence

import onnx
from onnx import helper

from edgetune.autodiff.builder import subgraph_references
from edgetune.converter.cleanup import all_tensor_names

__all__ = ["META_BLOCK_BOUNDARIES", "articulation_tensors", "block_boundaries",
           "constant_tensors", "extract", "find_block_boundaries", "onnx_file_base"]

#: metadata_props key holding the JSON list returned by :func:`block_boundaries`.
META_BLOCK_BOUNDARIES = "edgetune.block_boundaries"


def _load_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(os.fspath(model))


def block_boundaries(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """Tensor names at the inputs of the top-level blocks, in graph order.

    For EfficientNet-Lite0: ``["stem", "blocks.0", ..., "blocks.15"]``, i.e. the stem
    output (input of MBConv block 0), the input of each MBConv block 1..15, and the
    input of the head conv. Each boundary is a clean cut: nothing after it reads a
    tensor from before it except through it. ``last:K`` cuts at ``boundaries[-K]``
    (``last:1`` trains the head conv, ``last:2`` also the last MBConv block, ...).

    Where they come from, in order:

    1. the model's metadata ``edgetune.block_boundaries`` (:data:`META_BLOCK_BOUNDARIES`):
       a JSON list of tensor names (names no longer in the graph, e.g. after a cut, are
       dropped) — how a model's author names its blocks;
    2. tensors named ``stem`` / ``blocks.<i>``;
    3. found in the graph (:func:`find_block_boundaries`): tensors every path from the
       input to the output passes through, just before a layer with weights.

    Raises ``ValueError`` saying how to name them if none is found.
    """
    model = _load_model(model)
    names = all_tensor_names(model.graph)
    meta = {p.key: p.value for p in model.metadata_props}
    if META_BLOCK_BOUNDARIES in meta:
        listed = json.loads(meta[META_BLOCK_BOUNDARIES])
        found = [n for n in listed if n in names]
    else:
        pattern = re.compile(r"^(stem|blocks\.(\d+))$")
        matched = [n for n in names if pattern.match(n)]
        found = sorted(matched, key=lambda n: -1 if n == "stem" else int(n.split(".")[1]))
        if not found:
            found = find_block_boundaries(model)
    if not found:
        raise ValueError(
            "no block boundaries in this model: no tensor that every path from the input to "
            "the output passes through before a layer with weights; name them in the model's "
            f"metadata_props {META_BLOCK_BOUNDARIES!r} (a JSON list of tensor names, in graph "
            "order) or cut with --cut TENSOR and train the head"
        )
    return found


#: Ops whose constant inputs are the weights of a layer (what `last:K` trains).
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization"}


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and what nodes compute from them alone (no graph input involved)."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(i == "" or i in const for i in node.input) and not subgraph_references(node):
            const.update(o for o in node.output if o)
    return const


def articulation_tensors(graph: onnx.GraphProto) -> list[str]:
    """Computed tensors that every path from the graph's inputs to its outputs passes
    through (constants ignored), in graph order: after the node producing one, no
    other computed tensor is still needed."""
    const = constant_tensors(graph)
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in list(node.input) + sorted(subgraph_references(node)):
            if name and name not in const:
                last_use[name] = index
    end = len(graph.node)
    for output in graph.output:
        last_use[output.name] = end
    live: set[str] = {i.name for i in graph.input if i.name not in const and
                      last_use.get(i.name, -1) >= 0}
    found = []
    for index, node in enumerate(graph.node):
        live.update(o for o in node.output if o and o not in const and o in last_use)
        live = {n for n in live if last_use[n] > index}
        if len(live) == 1 and index < end - 1:
            (name,) = live
            if name in node.output:
                found.append(name)
    return found


def find_block_boundaries(model: onnx.ModelProto) -> list[str]:
    """Block boundaries found in the graph: articulation tensors (see
    :func:`articulation_tensors`) that a layer with weights (Conv, Gemm, MatMul, ... with
    a constant weight) comes after, keeping of each run of such tensors without a
    weighted layer between them the last one (so a block starts at its first layer);
    a tensor that no weighted layer follows is not a boundary."""
    graph = model.graph
    const = constant_tensors(graph)
    order = articulation_tensors(graph)
    position = {o: i for i, n in enumerate(graph.node) for o in n.output}
    weighted = [i for i, n in enumerate(graph.node)
                if n.op_type in WEIGHTED_OPS and any(x in const for x in n.input[1:] if x)]
    boundaries: list[str] = []
    for k, name in enumerate(order):
        here = position[name]
        nxt = position[order[k + 1]] if k + 1 < len(order) else len(graph.node)
        if any(here < w <= nxt for w in weighted) and \
                any(w > here for w in weighted):
            boundaries.append(name)
    return boundaries


def _check_names(model: onnx.ModelProto, names: Sequence[str], role: str,
                 source: str) -> None:
    graph = model.graph
    known = all_tensor_names(graph)
    initializers = {t.name for t in graph.initializer}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=8, cutoff=0.5)
            try:
                bounds = block_boundaries(model)
            except ValueError:
                bounds = []
            hint = [f"closest names: {close}" if close else "no close names"]
            if bounds:
                hint.append(f"block boundaries: {bounds}")
            hint.append(f"outputs: {[o.name for o in graph.output]}")
            raise ValueError(f"{role} tensor {name!r} is not in {source}; " + "; ".join(hint))
        if name in initializers:
            raise ValueError(f"{role} tensor {name!r} is a constant (initializer), not computed")


def _typed(name: str, *sources: Sequence[onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    """The first ValueInfo of `name` in `sources`, else an untyped one."""
    for seq in sources:
        for vi in seq:
            if vi.name == name and vi.type.HasField("tensor_type"):
                return vi
    return onnx.ValueInfoProto(name=name)


def extract(model: onnx.ModelProto, outputs: Sequence[str],
            inputs: Sequence[str] | None = None, *, source: str = "the model"
            ) -> onnx.ModelProto:
    """The part of `model` that computes `outputs` from `inputs`.

    `inputs` default to the model's own graph inputs; tensors named there become graph
    inputs of the result and nothing before them is kept. The result keeps only the
    nodes, initializers and graph inputs the outputs depend on (subgraph bodies of
    If/Loop/Scan are followed), types its new inputs and outputs (from the model or by
    shape inference), and keeps the opsets, IR version, functions and metadata.

    Raises ``ValueError`` naming the tensor and listing candidates (closest names, block
    boundaries, the model's outputs) when a name is not a tensor of the graph, or when
    it is a constant (initializer).
    """
    graph = model.graph
    _check_names(model, outputs, "cut", source)
    if inputs is not None:
        _check_names(model, [i for i in inputs if i not in {g.name for g in graph.input}],
                     "input", source)
    stop = set(inputs) if inputs is not None else set()

    producer = {o: n for n in graph.node for o in n.output if o}
    needed_nodes: set[int] = set()
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in stop:
            continue
        node = producer.get(name)
        if node is not None and id(node) not in needed_nodes:
            needed_nodes.add(id(node))
            stack.extend(i for i in node.input if i)
            stack.extend(subgraph_references(node))
    nodes = [n for n in graph.node if id(n) in needed_nodes]

    initializers = {t.name for t in graph.initializer}
    known = list(graph.input) + list(graph.output) + list(graph.value_info)
    missing = [n for n in [*stop, *outputs]
               if not _typed(n, known).type.HasField("tensor_type")]
    inferred: list[onnx.ValueInfoProto] = []
    if missing:
        try:
            g = onnx.shape_inference.infer_shapes(model).graph
            inferred = list(g.value_info) + list(g.output)
        except Exception:  # noqa: BLE001 - typing the cut is best effort
            inferred = []
    new_inputs = [i for i in graph.input if i.name in needed and i.name not in initializers
                  and i.name not in stop]
    new_inputs += [_typed(n, known, inferred) for n in (inputs or []) if n in needed]
    new_outputs = [_typed(n, list(graph.output), list(graph.value_info), inferred)
                   for n in outputs]
    ends = {i.name for i in new_inputs} | set(outputs)
    inits = [t for t in graph.initializer if t.name in needed and t.name not in stop]
    value_info = [v for v in graph.value_info if v.name in needed and v.name not in ends]

    new_graph = helper.make_graph(nodes, graph.name or "base", new_inputs, new_outputs,
                                  inits, doc_string=graph.doc_string)
    new_graph.value_info.extend(value_info)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.CopyFrom(new_graph)
    return result


def onnx_file_base(path: str | os.PathLike | onnx.ModelProto,
                   cut: str | None = None, *, source: str | None = None) -> onnx.ModelProto:
    """Load an ONNX model (or take one) and cut it at tensor ``cut`` (default: its first
    output) with :func:`extract`, from its own inputs."""
    model = _load_model(path)
    if source is None:
        source = "the model" if isinstance(path, onnx.ModelProto) else repr(os.fspath(path))
    if cut is None:
        if not model.graph.output:
            raise ValueError(f"{source}: the model has no outputs")
        cut = model.graph.output[0].name
    return extract(model, [cut], source=source)
