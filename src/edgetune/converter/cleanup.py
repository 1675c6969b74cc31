"""Graph clean-up passes for exported bases: fold constants, merge zero pads into
convolutions, drop unused initializers, rename tensors.

Each pass edits the ModelProto in place and keeps every value the graph computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.autodiff.builder import IR_VERSION, subgraph_references

__all__ = [
    "all_tensor_names",
    "fold_constants",
    "merge_pads_into_convs",
    "remove_unused_initializers",
    "rename_tensors",
]

_NOT_FOLDABLE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
_NOT_FOLDABLE |= {"Multinomial", "Bernoulli", "Dropout"}


def all_tensor_names(graph: onnx.GraphProto) -> list[str]:
    """Graph inputs, initializers and node outputs, in that order, each once."""
    names = dict.fromkeys(i.name for i in graph.input)
    names.update(dict.fromkeys(t.name for t in graph.initializer))
    for node in graph.node:
        names.update(dict.fromkeys(o for o in node.output if o))
    return list(names)


def fold_constants(model: onnx.ModelProto) -> None:
    """Evaluate every node whose inputs are all constants (with the onnx reference
    evaluator) and replace those nodes by initializers. Also turns ``Constant`` nodes
    into initializers."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    known = {t.name for t in graph.initializer}
    const_nodes, other_nodes = [], []
    for node in graph.node:
        has_subgraph = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        )
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NOT_FOLDABLE
            and not has_subgraph
            and all(i == "" or i in known for i in node.input)
        )
        if foldable:
            const_nodes.append(node)
            known.update(o for o in node.output if o)
        else:
            other_nodes.append(node)
    if not const_nodes:
        return
    produced = {o for n in const_nodes for o in n.output if o}
    needed = [
        name
        for name in dict.fromkeys(
            [i for n in other_nodes for i in n.input] + [o.name for o in graph.output]
        )
        if name in produced
    ]
    used_inits = {i for n in const_nodes for i in n.input}
    sub = helper.make_model(
        helper.make_graph(
            const_nodes,
            "constants",
            [],
            [onnx.ValueInfoProto(name=name) for name in needed],
            [t for t in graph.initializer if t.name in used_inits],
        ),
        opset_imports=list(model.opset_import),
        ir_version=IR_VERSION,
    )
    values = ReferenceEvaluator(sub).run(None, {}) if needed else []
    del graph.node[:]
    graph.node.extend(other_nodes)
    for name, value in zip(needed, values, strict=True):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    remove_unused_initializers(model)


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        used |= subgraph_references(node)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def merge_pads_into_convs(model: onnx.ModelProto) -> None:
    """Merge ``Pad(mode=constant, value=0)`` -> ``Conv`` into the Conv's ``pads``."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = set()
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        if mode not in (b"constant", "constant") or len(pad.input) < 2:
            continue
        if pad.input[1] not in inits or (len(pad.input) > 3 and pad.input[3]):
            continue
        if len(pad.input) > 2 and pad.input[2]:
            if pad.input[2] not in inits or numpy_helper.to_array(inits[pad.input[2]]).any():
                continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(np.int64).tolist()
        users = consumers.get(pad.output[0], [])
        if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
            continue
        if pad.output[0] in outputs or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or list(conv.input).index(pad.output[0]) != 0:
            continue
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        removed.add(id(pad))
    keep = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(keep)
    remove_unused_initializers(model)


def rename_tensors(model: onnx.ModelProto, rename: dict[str, str]) -> None:
    """Rename tensors everywhere in the main graph; raises if a new name clashes."""
    if not rename:
        return
    graph = model.graph
    existing = all_tensor_names(graph)
    clash = {new for old, new in rename.items() if new in existing and new not in rename}
    if clash or len(set(rename.values())) != len(rename):
        raise RuntimeError(f"renaming would clash: {sorted(clash)}")
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    for seq in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in seq:
            if item.name in rename:
                item.name = rename[item.name]
