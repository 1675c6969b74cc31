"""Rewrites of a base's trained blocks that keep every value and make training cheaper.

`pointwise_head_as_gemm`: the last block of many mobile networks (EfficientNet,
MobileNetV2) is a 1x1 convolution, an activation and global average pooling. As a
convolution, onnxruntime runs it image by image, and the weight gradient needs the
output gradient transposed to [channels, batch x pixels] (a full copy per step). Laid
out channel-major from the start, [channels, batch, pixels], the forward is one GEMM
over the whole batch and the weight gradient is one GEMM with no transpose:

    x [N, I, H, W] -> Transpose [I, N, H, W] -> Reshape [I, N*H*W] -> Pad [I+1, N*H*W]
    Gemm([W [O, I] | bias [O, 1]], x') -> [O, N*H*W] -> Reshape [O, N, H*W]
    activation(s) -> GlobalAveragePool [O, N, 1] -> Reshape [O, N] -> Transpose [N, O]

The bias is a last column of the weight against a row of ones padded under x: the
forward GEMM needs no bias broadcast into its [O, N*H*W] output first, and the weight
gradient's GEMM yields the bias gradient as its last column (no sum over the output
gradient). (On EfficientNet-Lite0's last block, an SGD step of batch 32 went from about
26 to about 23 ms, one thread, with the channel-major layout; folding the bias took
another 2-5% off a step, bench/last_block.py.)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.autodiff.builder import value_dims

# Activations that act element by element (with any further inputs constant) and have
# gradient rules.
ELEMENTWISE = {"Clip", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh",
               "Identity"}


def pointwise_head_as_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each Conv 1x1 -> activations -> GlobalAveragePool [-> Flatten]
    chain laid out channel-major (see the module docstring); other nodes unchanged."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    shapes = _static_shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_consumer(name: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    # The new nodes go where the chain's last node was: everything any chain node reads
    # is defined by then, and nothing after it has been read yet.
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a chain's last node -> new nodes
    dropped: set[int] = set()
    for conv in graph.node:
        chain = _chain(conv, only_consumer, inits, constants, shapes)
        if chain is None:
            continue
        replaced[id(chain[-1])] = _rewritten(conv, chain, inits, shapes)
        dropped.update(id(n) for n in chain)
    if not replaced:
        return model
    nodes = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.value_info[:]  # the rewritten tensors' shapes changed
    return out


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info):
        shapes[vi.name] = value_dims(vi, symbolic=False) or []
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _chain(conv, only_consumer, inits, constants, shapes):
    """[conv, activations..., GlobalAveragePool, (Flatten)] when conv starts a chain we
    can rewrite, else None."""
    if conv.op_type != "Conv" or conv.input[1] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    weight = list(inits[conv.input[1]].dims)
    x_shape = shapes.get(conv.input[0])
    if (len(weight) != 4 or weight[2:] != [1, 1] or attrs.get("group", 1) != 1
            or any(s != 1 for s in attrs.get("strides", [1, 1]))
            or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or any(attrs.get("pads", [0, 0, 0, 0]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or x_shape is None or len(x_shape) != 4 or None in x_shape[2:]):
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return None
    chain = [conv]
    node = only_consumer(conv.output[0])
    while (node is not None and node.op_type in ELEMENTWISE
           and node.input[0] == chain[-1].output[0]
           and all(i in constants for i in node.input[1:] if i)):
        chain.append(node)
        node = only_consumer(node.output[0])
    if node is None or node.op_type != "GlobalAveragePool":
        return None
    chain.append(node)
    after = only_consumer(node.output[0])
    if after is not None and after.op_type == "Flatten" and all(
            helper.get_attribute_value(a) == 1 for a in after.attribute if a.name == "axis"):
        chain.append(after)
    return chain


def _rewritten(conv, chain, inits, shapes) -> list[onnx.NodeProto]:
    out_ch, in_ch = list(inits[conv.input[1]].dims)[:2]
    pixels = shapes[conv.input[0]][2] * shapes[conv.input[0]][3]
    tag = conv.output[0]

    def const(name, values):
        return helper.make_node("Constant", [], [f"{tag}/{name}"],
                                value=numpy_helper.from_array(np.asarray(values, np.int64),
                                                              f"{tag}/{name}"))

    def t(name):
        return f"{tag}/{name}"

    nodes = [const("in_rows", [in_ch, -1]), const("weight_2d", [out_ch, in_ch]),
             const("by_image", [out_ch, -1, pixels]), const("pooled_2d", [out_ch, -1]),
             helper.make_node("Transpose", [conv.input[0]], [t("x_cm")], perm=[1, 0, 2, 3]),
             helper.make_node("Reshape", [t("x_cm"), t("in_rows")], [t("x_rows")]),
             helper.make_node("Reshape", [conv.input[1], t("weight_2d")], [t("w_2d")])]
    gemm_inputs = [t("w_2d"), t("x_rows")]
    if len(conv.input) > 2 and conv.input[2]:
        # The bias as one more column of the weight against a row of ones under x: the
        # forward GEMM adds it (Gemm's C would be broadcast into the whole output first)
        # and the weight gradient's GEMM yields the bias gradient as its last column
        # (instead of a sum over the [out, batch x pixels] output gradient).
        pads = np.zeros(4, np.int64)
        pads[2] = 1  # [in, N*H*W] -> [in + 1, N*H*W]
        nodes += [const("bias_col", [out_ch, 1]), const("ones_row", pads),
                  helper.make_node("Constant", [], [t("one")],
                                   value=numpy_helper.from_array(np.float32(1.0), t("one"))),
                  helper.make_node("Reshape", [conv.input[2], t("bias_col")], [t("b_col")]),
                  helper.make_node("Concat", [t("w_2d"), t("b_col")], [t("w_aug")], axis=1),
                  helper.make_node("Pad", [t("x_rows"), t("ones_row"), t("one")],
                                   [t("x_aug")])]
        gemm_inputs = [t("w_aug"), t("x_aug")]
    nodes += [helper.make_node("Gemm", gemm_inputs, [t("y_rows")]),
              helper.make_node("Reshape", [t("y_rows"), t("by_image")], [t("y")])]
    current = t("y")
    for act in (n for n in chain[1:] if n.op_type in ELEMENTWISE):
        new = onnx.NodeProto()
        new.CopyFrom(act)
        new.input[0] = current
        new.output[0] = t(f"act_{len(nodes)}")
        current = new.output[0]
        nodes.append(new)
    nodes += [helper.make_node("GlobalAveragePool", [current], [t("pooled")]),
              helper.make_node("Reshape", [t("pooled"), t("pooled_2d")], [t("pooled_cn")])]
    pool = next(n for n in chain if n.op_type == "GlobalAveragePool")
    if chain[-1].op_type == "Flatten":
        nodes.append(helper.make_node("Transpose", [t("pooled_cn")], [chain[-1].output[0]],
                                      perm=[1, 0]))
    else:  # GlobalAveragePool's own layout, [N, O, 1, 1]
        nodes += [const("pooled_4d", [-1, out_ch, 1, 1]),
                  helper.make_node("Transpose", [t("pooled_cn")], [t("pooled_nc")], perm=[1, 0]),
                  helper.make_node("Reshape", [t("pooled_nc"), t("pooled_4d")],
                                   [pool.output[0]])]
    return nodes
