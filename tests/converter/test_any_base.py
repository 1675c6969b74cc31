"""Any ONNX model as a base (#12): a float NCHW model exported from PyTorch gets its
pixel preprocessing inside the bundle's base; files that are not ONNX get one-line
errors, old exporters' files are repaired; describe_model lists cut candidates; last:K
finds blocks in a graph that does not name them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import photo_crops

from edgetune.bundle import Bundle
from edgetune.converter.convert import convert
from edgetune.converter.cut import block_boundaries
from edgetune.converter.inspect import describe_model
from edgetune.converter.modelfile import load_model
from edgetune.converter.preprocess import plan_input

torch = pytest.importorskip("torch")

SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _small_cnn():
    """A small real CNN (conv-bn-relu stages, a residual block, global pool, fc), with
    non-trivial BatchNorm statistics, in eval mode."""
    nn = torch.nn
    torch.manual_seed(0)

    def stage(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(stage(c, c, 1), nn.Conv2d(c, c, 3, 1, 1))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(stage(3, 16, 2), stage(16, 32, 2), Residual(32),
                                          stage(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    net = Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _export(net, path: Path, *, batch_dynamic=False, size_dynamic=False) -> Path:
    example = torch.zeros(1, 3, SIZE, SIZE)
    axes = {}
    if batch_dynamic or size_dynamic:
        axes = {"input": {**({0: "batch"} if batch_dynamic else {}),
                          **({2: "h", 3: "w"} if size_dynamic else {})}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes or None)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    net = _small_cnn()
    return net, _export(net, root / "cnn.onnx"), root


@pytest.fixture(scope="module")
def squeezenet():
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    if not path.is_file():
        pytest.skip("light_squeezenet.onnx is not in this onnx package")
    return path


def _pool_cut(path) -> str:
    info = describe_model(path)
    good = [t for t in info["tensors"] if t["good_cut"]]
    assert good, info["tensors"]
    return info["suggested_cut"]


def _base_features(bundle: Bundle, pixels: np.ndarray) -> np.ndarray:
    inputs, outputs = bundle.io("base")
    session = ort.InferenceSession(bundle.graph("base"), providers=["CPUExecutionProvider"])
    return session.run([outputs["features"]], {inputs["image"]: pixels})[0]


def test_torch_model_takes_uint8_pixels_with_imagenet_inside(cnn, tmp_path):
    net, path, _ = cnn
    cut = _pool_cut(path)
    with pytest.warns(UserWarning, match="imagenet"):  # detected, and said so
        detected = convert(path, "softmax", "adam", classes=4, cut=cut)
    pre = detected.manifest["input"]["preprocessing"]
    assert pre["name"] == "imagenet" and pre["chosen"] == "detected"
    assert pre["layout"] == "NCHW" and pre["mean"] == [0.485, 0.456, 0.406]
    bundle = convert(path, "softmax", "adam", classes=4, cut=cut, preprocess="imagenet")
    manifest = bundle.manifest
    assert manifest["input"]["kind"] == "image"
    assert manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert manifest["input"]["preprocessing"]["chosen"] == "given"
    assert manifest["features"]["shape"] == [64]

    pixels, _ = photo_crops(per_class=2, size=SIZE)
    got = _base_features(bundle, pixels)  # a batch of 8 although exported with batch 1
    x = torch.from_numpy(((pixels / 255.0 - MEAN) / STD).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = torch.flatten(net.pool(net.features(x)), 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    other = convert(path, "softmax", "adam", classes=4, cut=cut, preprocess="unit")
    assert other.manifest["input"]["preprocessing"]["name"] == "unit"
    x = torch.from_numpy((pixels / 255.0).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = torch.flatten(net.pool(net.features(x)), 1).numpy()
    np.testing.assert_allclose(_base_features(other, pixels), want, rtol=1e-4, atol=1e-4)


def test_torch_model_personalizes_real_photos(cnn, tmp_path):
    from edgetune.runtime.personalizer import Personalizer

    _, path, _ = cnn
    saved = convert(path, "softmax", "adam", classes=4, lr=0.01, cut=_pool_cut(path),
                    preprocess="imagenet").save(tmp_path / "cnn.edgetune")
    images, labels = photo_crops(per_class=6, size=96, seed=1)
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    with Personalizer(saved, profile=tmp_path / "profile", threads=1) as p:
        for image, label in zip(images, labels):
            p.add_sample(image, names[label])
        p.fit(epochs=30)
        test, test_labels = photo_crops(per_class=3, size=96, seed=7)
        right = sum(p.predict(img)["label"] == names[lab] for img, lab in zip(test, test_labels))
    assert right >= 10, right  # 12 unseen crops


@pytest.mark.parametrize("which", ["cnn", "squeezenet"])
def test_last_1_finds_blocks_and_trains(which, cnn, squeezenet, tmp_path):
    from conftest import bundle_trainer

    path = cnn[1] if which == "cnn" else squeezenet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_model(path)
        bounds = block_boundaries(model)
        bundle = convert(path, "softmax", "adam", classes=4, lr=0.01, cut=_pool_cut(path),
                         trainable="last:1", preprocess="imagenet")
    assert len(bounds) >= 3
    manifest = bundle.manifest
    base_params = [p["name"] for p in manifest["params"] if p["name"].startswith("base/")]
    assert base_params, manifest["params"]
    images, labels = photo_crops(per_class=4, size=224 if which == "squeezenet" else SIZE)
    saved = Bundle.load(bundle.save(tmp_path / "b.edgetune"))
    features = _base_features(saved, images)
    assert list(features.shape[1:]) == manifest["features"]["shape"]
    trainer = bundle_trainer(saved, lr=0.01)
    losses = [trainer.epoch(features, labels, batch_size=8).mean() for _ in range(15)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_squeezenet_is_repaired_and_converts(squeezenet):
    raw = onnx.load(str(squeezenet))
    assert raw.ir_version == 3 and len(raw.graph.input) == 53  # 52 are initializers
    with pytest.warns(UserWarning, match="initializers listed as graph inputs"):
        bundle = convert(squeezenet, "softmax", "sgd", classes=3, cut="r65",
                         preprocess="imagenet")
    m = bundle.manifest
    assert "dropped 52 initializers listed as graph inputs" in m["base_repairs"][0]
    assert m["input"]["shape"] == [None, 224, 224, 3]
    assert m["features"]["shape"] == [1000, 1, 1]
    base = onnx.load_from_string(bundle.files["base.onnx"])
    assert len(base.graph.input) == 1
    pixels, _ = photo_crops(per_class=1)
    assert np.isfinite(_base_features(Bundle(m, bundle.files), pixels)).all()


def test_not_onnx_is_one_line(tmp_path, cnn):
    text = tmp_path / "model.onnx"
    text.write_text("this is not a model\n" * 20)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(cnn[1].read_bytes()[:5000])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (text, truncated, empty):
        with pytest.raises(ValueError) as err:
            convert(path, "softmax", "sgd", classes=2)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, message
        assert "ONNX" in message or "empty" in message, message
        with pytest.raises(ValueError, match=str(path.name)):
            describe_model(path)


def _float_model(path, dims, dtype=onnx.TensorProto.FLOAT, inputs=1):
    from onnx import helper

    ins = [helper.make_tensor_value_info(f"x{i}", dtype, dims) for i in range(inputs)]
    nodes = [helper.make_node("Cast", ["x0"], ["xf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["xf"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"])]
    if inputs > 1:
        nodes.append(helper.make_node("Identity", ["x1"], ["y"]))
    outs = [helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, [None, None])]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_inputs_that_cannot_be_fed_fail_at_convert_time(tmp_path):
    cases = {
        "dynamic.onnx": ([None, 3, None, None], {}, "input_size"),
        "gray.onnx": ([None, 1, 28, 28], {}, "3-channel"),
        "int.onnx": ([None, 3, 8, 8], {"dtype": onnx.TensorProto.INT32}, "uint8 or float"),
        "two.onnx": ([None, 3, 8, 8], {"inputs": 2}, "2 inputs"),
    }
    for name, (dims, kwargs, match) in cases.items():
        path = _float_model(tmp_path / name, dims, **kwargs)
        with pytest.raises(ValueError, match=match) as err:
            convert(path, "softmax", "sgd", classes=2, preprocess="imagenet")
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not one of"):
        convert(tmp_path / "gray.onnx", "softmax", preprocess="bogus")
    # A dynamic size with input_size given converts to that size.
    bundle = convert(tmp_path / "dynamic.onnx", "softmax", "sgd", classes=2,
                     preprocess="symmetric", input_size=(40, 30))
    assert bundle.manifest["input"]["shape"] == [None, 40, 30, 3]
    assert bundle.manifest["input"]["preprocessing"]["name"] == "symmetric"
    pixels = np.full((2, 40, 30, 3), 255, np.uint8)
    np.testing.assert_allclose(_base_features(bundle, pixels), 1.0, atol=1e-6)


def test_describe_model_lists_cut_candidates(cnn, squeezenet):
    info = describe_model(cnn[1])
    assert info["inputs"] == [{"name": "input", "dtype": "float32",
                               "shape": [1, 3, SIZE, SIZE]}]
    assert info["opset"] == 17 and info["node_count"] > 5
    assert info["input"]["preprocessing"]["name"] == "imagenet"
    depths = [t["depth"] for t in info["tensors"]]
    assert depths == sorted(depths)
    by_name = {t["name"]: t for t in info["tensors"]}
    cut = by_name[info["suggested_cut"]]
    assert cut["shape"] == ["N", 64] and cut["good_cut"]
    assert info["block_boundaries"] and all(by_name[b]["boundary"]
                                            for b in info["block_boundaries"])

    squeeze = describe_model(squeezenet)
    assert squeeze["repairs"] and len(squeeze["inputs"]) == 1
    good = {t["name"] for t in squeeze["tensors"] if t["good_cut"]}
    assert "r65" in good  # the global pool output
    assert squeeze["block_boundaries"][-1] == "r61"  # before the classifier conv


def test_plan_of_a_uint8_nhwc_base_changes_nothing(tmp_path):
    from conftest import tiny_base

    model = onnx.load(tiny_base(tmp_path / "t.onnx"))
    plan = plan_input(model)
    assert plan.preset == "none" and not plan.changes_model and not plan.detected
    with pytest.raises(ValueError, match="preprocess must be 'none'"):
        plan_input(model, "imagenet")


def test_exported_model_documents_its_input(cnn, tmp_path):
    import json

    from edgetune.runtime.personalizer import Personalizer

    _, path, _ = cnn
    saved = convert(path, "softmax", "adam", classes=2, lr=0.01, cut=_pool_cut(path),
                    preprocess="imagenet").save(tmp_path / "cnn.edgetune")
    images, labels = photo_crops(per_class=3, size=SIZE, classes=("chelsea", "rocket"))
    with Personalizer(saved, profile=tmp_path / "profile", threads=1) as p:
        for image, label in zip(images, labels):
            p.add_sample(image, ["cat", "rocket"][label])
        p.fit(epochs=5)
        p.export(tmp_path / "personal.onnx")
        want = p.predict(images[0])["scores"]
    session = ort.InferenceSession(str(tmp_path / "personal.onnx"),
                                   providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    spec = json.loads(meta["edgetune.input"])
    assert (spec["filter"], spec["crop"], spec["resize"]) == ("lanczos", "center", "cover")
    assert spec["preprocessing"]["name"] == "imagenet"
    line = meta["edgetune.preprocessing"]
    assert "lanczos" in line and "center-crop" in line and "mean" in line, line
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {session.get_inputs()[0].name: images[:1]})))
    assert np.isclose(out["probabilities"][0].max(), max(want.values()), atol=1e-5)
