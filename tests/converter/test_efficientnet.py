"""EfficientNet-Lite0 built from the PyPI packages: the graph, its cache, real photos."""

from __future__ import annotations

import collections

import lite0
import numpy as np
import onnx
import torch
from lite0 import (
    ESPRESSO,
    center_square,
    ort_session,
    photos_by_name,
    preprocess_torch,
    resize,
)
from skimage import data

from edgetune import paths
from edgetune.converter.cut import block_boundaries
from edgetune.converter.efficientnet import efficientnet_lite0

# The session fixtures of lite0 (assigned, not imported: see lite0's docstring).
built = lite0.built
torch_net = lite0.torch_net


# ------------------------------------------------------------------ the graph


def test_graph_contract(built):
    model = onnx.load(str(built["features"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]

    (inp,) = model.graph.input
    assert inp.name == "image"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 224, 224, 3]

    (out,) = model.graph.output
    assert out.name == "features"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 1280]

    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert set(ops) == {
        "Cast", "Sub", "Div", "Transpose", "Conv", "Clip", "Add", "GlobalAveragePool",
        "Flatten",
    }  # fmt: skip
    assert ops["Conv"] == 49 and ops["Clip"] == 33 and ops["Add"] == 9
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # The cache file is outside the repository, under the given dir.
    assert built["features"].parent == built["cache"]


def test_logits_graph(built):
    model = onnx.load(str(built["logits"]))
    onnx.checker.check_model(model, full_check=True)
    (out,) = model.graph.output
    assert out.name == "logits"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 1000]


def test_cached_file_is_reused(built):
    before = built["features"].stat().st_mtime_ns
    again = efficientnet_lite0(built["cache"])
    assert again == built["features"]
    assert again.stat().st_mtime_ns == before
    assert not list(built["cache"].glob("*.tmp"))


def test_cache_dir_resolution(monkeypatch, tmp_path, built):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "env"))
    assert paths.cache_dir() == tmp_path / "env"
    assert paths.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("EDGETUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "edgetune"
    # The base is looked up in edgetune.paths.cache_dir() when no folder is given.
    monkeypatch.setenv("EDGETUNE_CACHE", str(built["cache"]))
    assert efficientnet_lite0() == built["features"]


# ----------------------------------------------------------- real photos, fp32


def test_espresso(built):
    session = ort_session(built["logits"])
    coffee = data.coffee()

    def p_espresso(pixels):
        (logits,) = session.run(None, {"image": pixels[None]})
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return int(probs.argmax()), float(probs[0, ESPRESSO])

    top, p = p_espresso(resize(center_square(coffee)))
    print(f"\nespresso: center crop p={p:.4f}")
    assert top == ESPRESSO and p > 0.9  # 0.944 measured
    top, p = p_espresso(resize(coffee))  # whole photo squeezed to 224x224
    print(f"espresso: squeezed p={p:.4f}")
    assert top == ESPRESSO and p > 0.8  # 0.899 measured


def test_features_match_torch(built, torch_net):
    photos = photos_by_name()
    pixels = np.stack(
        [resize(center_square(photos[n])) for n in ("coffee", "chelsea", "astronaut", "rocket")]
    )
    (onnx_features,) = ort_session(built["features"]).run(None, {"image": pixels})
    (onnx_logits,) = ort_session(built["logits"]).run(None, {"image": pixels})
    with torch.no_grad():
        x = preprocess_torch(pixels)
        pooled = torch_net._avg_pooling(torch_net.extract_features(x))
        torch_features = pooled.flatten(1).numpy()
        torch_logits = torch_net(x).numpy()
    assert onnx_features.shape == (4, 1280) and onnx_features.dtype == np.float32
    diff = float(np.abs(onnx_features - torch_features).max())
    print(f"\nmax |features onnx - torch| = {diff:.2e}")
    assert diff < 1e-4
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
    # Batch of one gives the same features as the batch (symbolic N).
    (single,) = ort_session(built["features"]).run(None, {"image": pixels[1:2]})
    assert np.abs(single - onnx_features[1:2]).max() < 1e-4



# ------------------------------------------------------------------ block boundaries


def test_block_boundaries(built):
    model = onnx.load(str(built["features"]))
    bounds = block_boundaries(model)
    assert bounds == ["stem"] + [f"blocks.{i}" for i in range(16)]
    assert block_boundaries(built["features"]) == bounds

    # Each boundary is a clean cut: what comes after it reads nothing from before it.
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    index = {o: i for i, n in enumerate(graph.node) for o in n.output}
    for name in bounds:
        cut_at = index[name]
        for node in graph.node[cut_at + 1 :]:
            for tensor in node.input:
                if tensor in consts or tensor == name:
                    continue
                assert index[tensor] > cut_at, (name, node.name, tensor)

    # Spatial sizes go down through the stages (224 -> 112 -> ... -> 7).
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in graph.value_info
    }
    assert shapes["stem"] == [32, 112, 112]
    assert shapes["blocks.15"] == [320, 7, 7]
