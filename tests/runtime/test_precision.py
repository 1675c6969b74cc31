"""The int8 base when a profile asks for it (`precision="int8"`): features, predictions
and the exported model come from the bundle's `base_int8` graph; the profile records
its precision and refuses to mix features of the other one. On real photo crops and
the real EfficientNet-Lite0 bundle quantized (`quantize=`) on other real crops."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import PHOTO_CLASSES, photo_crops, tiny_base
from PIL import Image

from edgetune.bundle import Bundle
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.errors import BadInputError, BundleError, EdgetuneError
from edgetune.runtime.personalizer import Personalizer
from edgetune.runtime.store import SampleStore

NAMES = list(PHOTO_CLASSES)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "MatMulInteger",
                 "ConvInteger", "QLinearMatMul"}


@pytest.fixture(scope="module")
def bundle_path(edgetune_cache, tmp_path_factory):
    """Lite0 with an int8 base calibrated on 32 crops that the tests never use."""
    root = tmp_path_factory.mktemp("int8")
    calib = root / "calibration"
    calib.mkdir()
    for i, image in enumerate(photo_crops(per_class=8, seed=101)[0]):
        Image.fromarray(image).save(calib / f"{i:02d}.png")
    bundle = convert("efficientnet-lite0", "softmax", "adam", classes=4, lr=1e-3,
                     quantize=calib, cache_dir=edgetune_cache)
    assert bundle.has_graph("base_int8")
    return bundle.save(root / "q.edgetune")


@pytest.fixture(scope="module")
def train_data():
    images, labels = photo_crops(per_class=6, seed=0)
    return list(images), [NAMES[i] for i in labels]


@pytest.fixture(scope="module")
def held_out():
    images, labels = photo_crops(per_class=6, seed=7)
    return list(images), [NAMES[i] for i in labels]


@pytest.fixture(scope="module")
def trained(bundle_path, train_data, tmp_path_factory):
    """One fp32 and one int8 profile of the same bundle, same samples, trained."""
    root = tmp_path_factory.mktemp("profiles")
    images, labels = train_data
    people = {}
    for precision in ("fp32", "int8"):
        p = Personalizer(bundle_path, profile=root / precision, threads=1, precision=precision)
        p.add_samples(images, labels)
        p.fit()
        assert p.trained
        people[precision] = p
    yield people
    for p in people.values():
        p.close()


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_features_differ_but_predictions_agree(trained, train_data, held_out):
    fp32, int8 = trained["fp32"], trained["int8"]
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    X32, _ = fp32.store.features_and_labels()
    X8, _ = int8.store.features_and_labels()
    assert X32.shape == X8.shape == (len(train_data[0]), 1280)
    assert not np.allclose(X32, X8, atol=1e-3)  # the cached features are the int8 base's
    assert _cosine(X32, X8).min() > 0.97        # ... and close to the float ones

    images, truth = held_out
    a = [r["label"] for r in fp32.predict_many(images)]
    b = [r["label"] for r in int8.predict_many(images)]
    agreement = np.mean([x == y for x, y in zip(a, b)])
    acc32 = np.mean([x == t for x, t in zip(a, truth)])
    acc8 = np.mean([x == t for x, t in zip(b, truth)])
    print(f"\nheld-out: fp32 {acc32:.3f}, int8 {acc8:.3f}, agreement {agreement:.3f}")
    assert agreement >= 0.9
    assert acc8 >= acc32 - 0.1 and acc8 >= 0.8


def test_features_come_from_the_int8_graph(trained, bundle_path, held_out):
    bundle = Bundle.load(bundle_path)
    images = np.stack(held_out[0][:4])
    for precision, role in (("fp32", "base"), ("int8", "base_int8")):
        session = ort.InferenceSession(bundle.graph(role), providers=["CPUExecutionProvider"])
        (inputs, outputs) = bundle.io(role)
        direct = session.run([outputs["features"]], {inputs["image"]: images})[0]
        np.testing.assert_allclose(trained[precision].features(list(images)), direct,
                                   rtol=1e-4, atol=1e-4)


def test_precision_is_recorded_and_reopened(bundle_path, train_data, tmp_path):
    images, labels = train_data
    with Personalizer(bundle_path, profile=tmp_path / "me", precision="int8") as p:
        p.add_samples(images[:2], labels[:2])
        first = p.features(images[:1])
        assert p.store.get_meta("precision") == "int8"
    with Personalizer(profile=tmp_path / "me") as p:        # no precision: the recorded one
        assert p.precision == "int8"
        np.testing.assert_allclose(p.features(images[:1]), first, rtol=1e-5, atol=1e-5)
    with Personalizer(profile=tmp_path / "me", precision="int8") as p:  # the same: fine
        assert p.precision == "int8"
    # A new profile on a bundle with an int8 base is int8 unless asked, and says so.
    with Personalizer(bundle_path, profile=tmp_path / "default") as p:
        assert p.precision == "int8" and p.store.get_meta("precision") == "int8"
    with Personalizer(bundle_path, profile=tmp_path / "asked", precision="fp32") as p:
        assert p.precision == "fp32" and p.store.get_meta("precision") == "fp32"
    with Personalizer(profile=tmp_path / "asked") as p:  # recorded: stays fp32
        assert p.precision == "fp32"


def test_the_other_precision_on_cached_features_is_refused(bundle_path, train_data, tmp_path):
    images, labels = train_data
    for have, ask in (("int8", "fp32"), ("fp32", "int8")):
        profile = tmp_path / have
        with Personalizer(bundle_path, profile=profile, precision=have) as p:
            p.add_samples(images[:2], labels[:2])
        with pytest.raises(BadInputError) as err:
            Personalizer(profile=profile, precision=ask)
        message = str(err.value)
        assert f"computed by the {have} base" in message and "new profile" in message
        assert "add them again" in message
        with Personalizer(profile=profile) as p:  # nothing changed: still the recorded one
            assert p.precision == have and len(p.store) == 2
            # Without samples (removed), the profile may change precision.
            for sample in p.samples():
                p.remove_sample(sample.id)
        with Personalizer(profile=profile, precision=ask) as p:
            assert p.precision == ask and p.store.get_meta("precision") == ask
    with pytest.raises(BadInputError, match="precision is 'int4'"):
        Personalizer(bundle_path, profile=tmp_path / "bad", precision="int4")
    assert not (tmp_path / "bad").exists()


def test_a_profile_from_before_precisions_holds_fp32_features(bundle_path, train_data,
                                                                tmp_path):
    images, labels = train_data
    with Personalizer(bundle_path, profile=tmp_path / "fp32", precision="fp32") as p:
        feats = p.features(images[:3])
    profile = tmp_path / "old"
    profile.mkdir()
    with SampleStore(profile / "samples.sqlite", feature_shape=(1280,)) as store:
        store.add(feats, labels[:3])  # no precision recorded
    with pytest.raises(BadInputError, match="computed by the fp32 base"):
        Personalizer(bundle_path, profile=profile, precision="int8")
    with Personalizer(bundle_path, profile=profile) as p:
        assert p.precision == "fp32" and p.store.get_meta("precision") == "fp32"


def test_int8_needs_a_quantized_bundle(tmp_path):
    base = tiny_base(tmp_path / "tiny.onnx")
    path = convert(base, SoftmaxClassifier(2), "sgd").save(tmp_path / "t.edgetune")
    with pytest.raises(BundleError, match="edgetune convert") as err:
        Personalizer(path, profile=tmp_path / "me", precision="int8")
    assert "base_int8" in str(err.value)
    with Personalizer(path, profile=tmp_path / "me") as p:  # the failed open recorded nothing
        assert p.precision == "fp32"


def test_read_only_never_writes_the_precision(bundle_path, trained, train_data, held_out,
                                              tmp_path):
    int8 = trained["int8"]
    reader = Personalizer(profile=int8.profile, read_only=True)
    try:
        assert reader.precision == "int8"
        images = held_out[0][:6]
        mine, theirs = reader.predict_many(images), int8.predict_many(images)
        assert [r["label"] for r in mine] == [r["label"] for r in theirs]
        np.testing.assert_allclose([list(r["scores"].values()) for r in mine],
                                   [list(r["scores"].values()) for r in theirs], atol=1e-6)
    finally:
        reader.close()
    with pytest.raises(BadInputError, match="computed by the int8 base"):
        Personalizer(profile=int8.profile, read_only=True, precision="fp32")

    # An empty fp32 profile opened read-only at int8: answers at int8, records nothing.
    with Personalizer(bundle_path, profile=tmp_path / "empty", precision="fp32") as p:
        assert p.store.get_meta("precision") == "fp32"
    with Personalizer(profile=tmp_path / "empty", read_only=True, precision="int8") as r:
        assert r.precision == "int8"
        assert r.features(train_data[0][:1]).shape == (1, 1280)
        with pytest.raises(EdgetuneError, match="read-only"):
            r.add_samples(train_data[0][:1], train_data[1][:1])
    with Personalizer(profile=tmp_path / "empty", read_only=True) as r:
        assert r.precision == "fp32" and r.store.get_meta("precision") == "fp32"


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_export_composes_the_int8_base(trained, held_out, tmp_path):
    images = held_out[0]
    paths = {precision: p.export(tmp_path / f"{precision}.onnx")
             for precision, p in trained.items()}
    sizes = {k: v.stat().st_size for k, v in paths.items()}
    print(f"\nexported: fp32 {sizes['fp32']} bytes, int8 {sizes['int8']} bytes")
    assert sizes["int8"] < 0.4 * sizes["fp32"]
    assert not QUANTIZED_OPS & set(_ops(paths["fp32"]))
    ops8 = _ops(paths["int8"])
    assert ops8["QuantizeLinear"] > 0 and ops8["DequantizeLinear"] > 0

    for precision, path in paths.items():
        model = onnx.load(str(path))
        meta = {e.key: e.value for e in model.metadata_props}
        assert meta["edgetune.precision"] == precision
        assert json.loads(meta["edgetune.classes"]) == trained[precision].classes()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"image": np.stack(images)})[0]
        expected = trained[precision].predict_many(images)
        classes = list(json.loads(meta["edgetune.classes"]))
        assert [classes[i] for i in probabilities.argmax(1)] == [r["label"] for r in expected]
        np.testing.assert_allclose(
            probabilities, [[r["scores"][c] for c in classes] for r in expected], atol=1e-4)
