"""convert() on the real EfficientNet-Lite0: each trainable mode personalizes on real
photos, one bundle serves any number of classes, and the CLI builds and inspects."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import bundle_trainer, shuffled_epochs

from edgetune.autodiff import GraphBuilder
from edgetune.bundle import Bundle
from edgetune.cli import main as cli
from edgetune.converter.convert import Trainable, convert
from edgetune.converter.heads import MLP, SoftmaxClassifier
from edgetune.converter.optimizers import Adam


def _features(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(bundle.graph("base"))
    inputs, outputs = bundle.io("base")
    return np.concatenate([session.run([outputs["features"]], {inputs["image"]: images[i:i + 8]})[0]
                           for i in range(0, len(images), 8)])


def _accuracy(bundle: Bundle, trainer, features, labels) -> float:
    session = ort.InferenceSession(bundle.graph("infer"))
    feeds = {bundle.io("infer")[0]["features"]: features}
    feeds.update({p["infer_input"]: trainer.values[p["train_input"]] for p in bundle.params})
    probs = session.run([bundle.io("infer")[1]["probabilities"]], feeds)[0]
    return float((probs.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def bundles(edgetune_cache, tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("bundles")
    for mode in ("head", "last:1", "bias:1"):
        built = convert("efficientnet-lite0", SoftmaxClassifier(4), Adam(lr=1e-3),
                        trainable=mode, cache_dir=edgetune_cache)
        out[mode] = Bundle.load(built.save(root / f"{mode.replace(':', '_')}.edgetune"))
    return out


@pytest.mark.parametrize("mode", ["head", "last:1", "bias:1"])
def test_each_mode_personalizes_real_photos(bundles, photos, mode):
    bundle = bundles[mode]
    images, labels = photos
    features = _features(bundle, images)
    assert features.shape[1:] == tuple(bundle.manifest["features"]["shape"])
    trainer = bundle_trainer(bundle, lr=1e-3)
    losses = shuffled_epochs(trainer, features, labels, epochs=25, batch_size=8)
    assert losses[-1] < 0.1 * losses[0], losses
    assert _accuracy(bundle, trainer, features, labels) == 1.0
    initial = bundle.initial_values()
    base_params = [p for p in bundle.params if p["name"].startswith("base/")]
    if mode == "head":
        assert not base_params
    else:
        assert base_params, "the base's last block must be trainable"
        for p in base_params:
            assert not np.allclose(trainer.values[p["train_input"]], initial[p["name"]]), p
    if mode == "bias:1":
        assert all(len(p["shape"]) == 1 for p in base_params), "bias:K trains only 1-D tensors"
        assert bundle.manifest["features"]["shape"] == bundles["last:1"].manifest[
            "features"]["shape"]


def test_last_k_moves_the_cut_before_the_blocks(bundles):
    head, last = bundles["head"].manifest, bundles["last:1"].manifest
    assert head["features"]["shape"] == [1280]
    assert last["features"]["shape"] == [320, 7, 7]
    assert last["trainable"] == {"mode": "last", "blocks": 1,
                                 "params": [p["name"] for p in last["params"]]}
    assert {"base/conv_head.weight", "base/conv_head.bias"} <= set(last["trainable"]["params"])


def test_one_bundle_serves_any_number_of_classes(bundles, photos):
    bundle = bundles["head"]
    images, labels = photos
    features = _features(bundle, images)
    assert bundle.manifest["params"][0]["shape"] == ["classes", 1280]
    trainer = bundle_trainer(bundle)
    for spec in bundle.params + bundle.state:  # start over with 2 classes
        axis = spec["shape"].index("classes")
        value = trainer.values[spec["train_input"]]
        trainer.values[spec["train_input"]] = np.take(value, [0, 1], axis=axis).copy()
    two = labels < 2
    for _ in range(10):
        trainer.epoch(features[two], labels[two], batch_size=8)
    assert _accuracy(bundle, trainer, features[two], labels[two]) == 1.0
    # A class arrives after personalization started: grow every class-sized tensor.
    for spec in bundle.params + bundle.state:
        value = trainer.values[spec["train_input"]]
        pad = [(0, 2) if d == "classes" else (0, 0) for d in spec["shape"]]
        trainer.values[spec["train_input"]] = np.pad(value, pad)
    for _ in range(15):
        trainer.epoch(features, labels, batch_size=8)
    assert trainer.values["head.weight"].shape == (4, 1280)
    assert _accuracy(bundle, trainer, features, labels) == 1.0


def test_mlp_and_svm_heads_and_a_users_onnx_head(edgetune_cache, tmp_path, photos):
    images, labels = photos
    # A user's head graph: features [N, 1280] -> logits [N, 4] with one MatMul + Add.
    b = GraphBuilder()
    x = b.input("emb", np.float32, ["N", 1280])
    w = b.initializer("user.w", np.zeros((1280, 4), np.float32))
    bias = b.initializer("user.b", np.zeros(4, np.float32))
    user_head = tmp_path / "head.onnx"
    onnx.save(b.model({"scores": x @ w + bias}), user_head)
    for head in (MLP(4, hidden=32), "svm", str(user_head)):
        bundle = convert("efficientnet-lite0", head, "sgd", lr=0.05, classes=4,
                         cache_dir=edgetune_cache)
        features = _features(bundle, images)
        trainer = bundle_trainer(bundle)
        for _ in range(20):
            trainer.epoch(features, labels, batch_size=8)
        assert _accuracy(bundle, trainer, features, labels) == 1.0, head


def test_trainable_text_is_checked():
    assert Trainable.parse("last:2") == Trainable("last", 2)
    assert str(Trainable.parse("bias:1")) == "bias:1"
    for bad in ("last", "last:0", "all", "bias:-1"):
        with pytest.raises(ValueError, match="head, last:K, bias:K"):
            Trainable.parse(bad)


def test_cli_convert_then_inspect(edgetune_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", edgetune_cache)
    out = tmp_path / "m.edgetune"
    assert cli(["convert", "--head", "mlp:64", "--classes", "3", "--optimizer", "adamw",
                "--lr", "0.002", "--train", "bias:1", "--no-quantize", "-o", str(out),
                "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["trainable"]["mode"] == "bias"
    assert cli(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] and info["optimizer"]["name"] == "AdamW"
    assert info["optimizer"]["lr"] == 0.002
    assert set(info["graphs"]) == {"base", "train", "train_epoch", "infer"}
    assert cli(["inspect", str(out)]) == 0
    assert "all hashes verified" in capsys.readouterr().out
    # Converting onto an existing bundle needs --force.
    assert cli(["convert", "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err


def test_cli_reports_a_missing_cut_with_candidates(tmp_path, capsys, edgetune_cache):
    from edgetune.converter.efficientnet import efficientnet_lite0

    base = efficientnet_lite0(edgetune_cache)
    assert cli(["convert", "--base", str(base), "--cut", "blocks.99", "-o",
                str(tmp_path / "x.edgetune")]) == 1
    err = capsys.readouterr().err
    assert "blocks.99" in err and "blocks.15" in err


def test_int8_base_in_the_bundle(edgetune_cache, tmp_path, photos):
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    images, labels = photos
    for i, image in enumerate(images[::2]):
        Image.fromarray(image).save(calib / f"{i}.png")
    bundle = convert("efficientnet-lite0", "softmax", "sgd", classes=4, quantize=calib,
                     cache_dir=edgetune_cache)
    saved = Bundle.load(bundle.save(tmp_path / "q.edgetune"))
    report = saved.manifest["quantization"]
    assert report["int8_bytes"] < 0.35 * report["fp32_bytes"]
    assert report["neighbour_agreement"] >= 0.9 and report["mean_cosine"] > 0.98
    fp32 = _features(saved, images)
    session = ort.InferenceSession(saved.graph("base_int8"))
    int8 = session.run(["features"], {"image": images})[0]
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.mean() > 0.98
