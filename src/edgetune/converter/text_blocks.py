"""MiniLM's last transformer blocks as a trainable tail (``trainable="last:K"`` on
``base="minilm-fp32"``).

The exported encoder cannot simply be cut before a block: its attention reads a mask
computed from ``attention_mask`` at the graph's start, and its reshapes go through
Shape/Gather chains. So the split is made explicit:

- the **base** (device, cached per sample) is the fp32 encoder up to the input of block
  ``6 - K`` (a [N, L, 384] hidden state), with the attention mask appended as one more
  column: ``cut`` float32 ``[N, L, 385]`` (the manifest's ``features`` stay one tensor;
  the last column is 1 for a token and 0 for padding);
- the **tail** (trained) takes ``cut``, splits the mask back off, and runs the last K
  BERT layers rebuilt from the safetensors weights with static shapes (``L`` and the 12
  heads are fixed, the batch is the only free dimension: Reshape with 0), then the
  mask-weighted mean pooling and the L2 normalization of the base: ``features``
  ``[N, 384]``. Attention: ``softmax(q k^T / sqrt(32) + (mask - 1) * 1e9)``; GELU is the
  exact erf form; LayerNorm eps 1e-12, as in the model's config.

Only standard ops with gradient rules (MatMul, Add, Mul, Sub, Div, Reshape, Transpose,
Slice, Unsqueeze, Softmax, LayerNormalization, Erf, ReduceSum, Clip, Sqrt), so the
training graphs stay standard. Build time only.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.autodiff.builder import OPSET
from edgetune.converter.cut import extract
from edgetune.converter.text import EMBEDDING_SIZE, minilm, model_folder

__all__ = ["CUT", "LAYERS", "minilm_split"]

CUT = "cut"
LAYERS = 6
HEADS = 12
_NEG = 1e9  # added (times mask - 1) to the scores of padding: exp() underflows to 0


def _config() -> dict:
    config = json.loads((model_folder() / "config.json").read_text())
    assert config["num_attention_heads"] == HEADS and config["hidden_size"] == EMBEDDING_SIZE
    return config


def _cut_tensor(model: onnx.ModelProto, layer: int) -> str:
    """The output of BERT layer `layer` (0-based) in the torch export: its last
    LayerNormalization, named .../layer.<i>/output/LayerNorm/..."""
    mark = f"/layer.{layer}/output/LayerNorm/"
    found = [n.output[0] for n in model.graph.node
             if n.op_type == "LayerNormalization" and mark in n.name]
    if len(found) != 1:
        raise ValueError(f"the MiniLM export has no single output of layer {layer} "
                         f"({len(found)} LayerNormalization nodes named *{mark}*)")
    return found[0]


def _base(full: onnx.ModelProto, blocks: int, max_length: int) -> onnx.ModelProto:
    """The encoder up to the input of the first trained block, the mask appended."""
    hidden = _cut_tensor(full, LAYERS - blocks - 1)
    base = extract(full, [hidden], source="the MiniLM base")
    g = base.graph
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "cut/last_axis"))
    g.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["cut/mask"], name="cut_mask",
                         to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["cut/mask", "cut/last_axis"], ["cut/mask3"],
                         name="cut_mask_3d"),
        helper.make_node("Concat", [hidden, "cut/mask3"], [CUT], name="cut_with_mask", axis=-1),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(CUT, TensorProto.FLOAT,
                                                  ["N", max_length, EMBEDDING_SIZE + 1]))
    return base


def _tail(blocks: int, max_length: int) -> onnx.ModelProto:
    from safetensors.numpy import load_file

    eps = float(_config().get("layer_norm_eps", 1e-12))
    weights = load_file(os.fspath(model_folder() / "model.safetensors"))
    L, H, D = max_length, EMBEDDING_SIZE, EMBEDDING_SIZE // HEADS
    inits: dict[str, np.ndarray] = {
        "c/h_start": np.array([0], np.int64), "c/h_end": np.array([H], np.int64),
        "c/m_end": np.array([H + 1], np.int64), "c/axis2": np.array([2], np.int64),
        "c/axis1": np.array([1], np.int64), "c/last": np.array([-1], np.int64),
        "c/one": np.array(1.0, np.float32), "c/neg": np.array(_NEG, np.float32),
        "c/half": np.array(0.5, np.float32), "c/sqrt2": np.array(np.sqrt(2.0), np.float32),
        "c/scale": np.array(1.0 / np.sqrt(D), np.float32),
        "c/count_min": np.array(1e-9, np.float32), "c/norm_min": np.array(1e-12, np.float32),
        "c/heads": np.array([0, L, HEADS, D], np.int64), "c/merge": np.array([0, L, H],
                                                                              np.int64),
    }
    nodes: list[onnx.NodeProto] = []

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def linear(x, key, name):  # x @ W^T + b, the weight stored [in, out] for MatMul
        w, b = f"{key}.weight", f"{key}.bias"
        inits[w] = np.ascontiguousarray(weights[w].T)
        inits[b] = weights[b]
        return op("Add", [op("MatMul", [x, w], f"{name}/matmul"), b], name)

    def layer_norm(x, key, name):
        inits[f"{key}.weight"], inits[f"{key}.bias"] = weights[f"{key}.weight"], \
            weights[f"{key}.bias"]
        return op("LayerNormalization", [x, f"{key}.weight", f"{key}.bias"], name, axis=-1,
                  epsilon=eps)

    def split(x, perm, name):  # [N, L, 384] -> heads, transposed by perm
        return op("Transpose", [op("Reshape", [x, "c/heads"], f"{name}/heads")], name,
                  perm=perm)

    h = op("Slice", [CUT, "c/h_start", "c/h_end", "c/axis2"], "hidden")
    mask = op("Slice", [CUT, "c/h_end", "c/m_end", "c/axis2"], "mask")  # [N, L, 1]
    bias = op("Mul", [op("Sub", [mask, "c/one"], "mask/minus1"), "c/neg"], "mask/bias")
    bias = op("Unsqueeze", [op("Transpose", [bias], "mask/row", perm=[0, 2, 1]), "c/axis1"],
              "mask/scores")  # [N, 1, 1, L]: added to every head's [L, L] scores
    for i in range(LAYERS - blocks, LAYERS):
        key, p = f"encoder.layer.{i}", f"layer{i}"
        q = split(linear(h, f"{key}.attention.self.query", f"{p}/q"), [0, 2, 1, 3], f"{p}/qh")
        k = split(linear(h, f"{key}.attention.self.key", f"{p}/k"), [0, 2, 3, 1], f"{p}/kh")
        v = split(linear(h, f"{key}.attention.self.value", f"{p}/v"), [0, 2, 1, 3], f"{p}/vh")
        scores = op("Add", [op("Mul", [op("MatMul", [q, k], f"{p}/qk"), "c/scale"],
                               f"{p}/scaled"), bias], f"{p}/scores")
        probs = op("Softmax", [scores], f"{p}/probs", axis=-1)
        ctx = op("Transpose", [op("MatMul", [probs, v], f"{p}/ctx_heads")], f"{p}/ctx_t",
                 perm=[0, 2, 1, 3])
        ctx = op("Reshape", [ctx, "c/merge"], f"{p}/ctx")
        attn = linear(ctx, f"{key}.attention.output.dense", f"{p}/attn_out")
        h1 = layer_norm(op("Add", [attn, h], f"{p}/attn_res"),
                        f"{key}.attention.output.LayerNorm", f"{p}/attn_norm")
        inter = linear(h1, f"{key}.intermediate.dense", f"{p}/inter")
        erf = op("Erf", [op("Div", [inter, "c/sqrt2"], f"{p}/gelu_in")], f"{p}/gelu_erf")
        one_plus = op("Add", [erf, "c/one"], f"{p}/gelu_1p")
        gelu = op("Mul", [op("Mul", [inter, one_plus], f"{p}/gelu_x"), "c/half"], f"{p}/gelu")
        out = linear(gelu, f"{key}.output.dense", f"{p}/out")
        h = layer_norm(op("Add", [out, h1], f"{p}/out_res"), f"{key}.output.LayerNorm",
                       f"{p}/out_norm")
    total = op("ReduceSum", [op("Mul", [h, mask], "pool/masked"), "c/axis1"], "pool/sum",
               keepdims=0)
    count = op("Clip", [op("ReduceSum", [mask, "c/axis1"], "pool/count", keepdims=0),
                        "c/count_min"], "pool/count_safe")
    mean = op("Div", [total, count], "pool/mean")
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [mean, mean], "pool/square"), "c/last"],
                          "pool/sum_square", keepdims=1)], "pool/norm")
    op("Div", [mean, op("Clip", [norm, "c/norm_min"], "pool/norm_safe")], "features")
    graph = helper.make_graph(
        nodes, f"all-MiniLM-L6-v2, last {blocks} blocks",
        [helper.make_tensor_value_info(CUT, TensorProto.FLOAT, ["N", L, H + 1])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", H])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def minilm_split(cache_dir: str | os.PathLike | None, blocks: int, max_length: int
                 ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(base, tail) of the fp32 MiniLM for training its last `blocks` layers: base
    ``input_ids``, ``attention_mask`` -> ``cut`` [N, L, 385]; tail ``cut`` ->
    ``features`` [N, 384] (see the module docstring)."""
    if not 1 <= blocks <= LAYERS - 1:
        raise ValueError(f"trainable last:{blocks}: MiniLM trains its last 1 to "
                         f"{LAYERS - 1} transformer blocks")
    full = onnx.load(os.fspath(minilm(cache_dir, max_length=max_length, precision="fp32")))
    return _base(full, blocks, max_length), _tail(blocks, max_length)
