"""Class columns on a small real bundle: imprinting finds the class weight and bias by the
manifest (whatever they are called), and a class renamed with a padded name keeps its
trained column everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy as st
from conftest import tiny_base

from edgetune.bundle import Bundle
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Momentum
from edgetune.runtime.personalizer import Personalizer
from edgetune.runtime.prototypes import imprint_weights

CLASSES = ["red", "blue", "green"]
RENAMED = {"head.weight": "clf.kernel", "head.bias": "clf.offset"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("columns")
    base = tiny_base(root / "tiny.onnx")
    return convert(base, SoftmaxClassifier(3), Momentum(lr=0.1)).save(root / "t.edgetune")


def _renamed(source, target, declare: bool):
    """The bundle with its class weight and bias under other names; `declare`: the
    manifest's classes.weight/bias name them (else it names nothing)."""
    bundle = Bundle.load(source)
    m = bundle.manifest
    for p in m["params"]:
        p["name"] = RENAMED.get(p["name"], p["name"])
    for s in m["state"]:
        s["param"] = RENAMED.get(s["param"], s["param"])
    if "params" in m.get("trainable", {}):
        m["trainable"]["params"] = [RENAMED.get(n, n) for n in m["trainable"]["params"]]
    m["classes"].pop("weight", None)
    m["classes"].pop("bias", None)
    if declare:
        m["classes"].update(weight="clf.kernel", bias="clf.offset")
    init = m["init"]["file"]
    values = st.load(bundle.files[init])
    bundle.files[init] = st.save({RENAMED.get(k, k): v for k, v in values.items()})
    return bundle.save(target)


def _features(seed=0, per_class=6):
    """Three well separated classes of 8-d features (non-negative, like a ReLU base)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(3, 8, dtype=np.float32) * 3 + 0.5
    X = np.concatenate([c + 0.3 * rng.random((per_class, 8), np.float32) for c in centers])
    labels = [name for name in CLASSES for _ in range(per_class)]
    return X.astype(np.float32), labels


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("declare", [True, False])
def test_imprinting_finds_the_class_parameters_by_the_manifest(tiny, tmp_path, declare):
    bundle = _renamed(tiny, tmp_path / "renamed.edgetune", declare)
    assert Bundle.load(bundle).manifest["classes"].get("weight") == (
        "clf.kernel" if declare else None)
    X, labels = _features()
    with Personalizer(bundle, profile=tmp_path / "me", threads=1) as p:
        p.add_features(X, labels)
        kept = p.fit(epochs=1, lr=1e-9, early_stop=False)[-1]
    y = np.repeat(np.arange(3), 6)
    W, b = imprint_weights(X, y, 3)  # [F, C], [C]: the class means
    imprinted = _softmax(X @ W + b)
    # The fit's starting objective is the cross-entropy of where training started.
    assert kept["event"] == "kept"
    if declare:  # training started from the class means
        expected = float(-np.log(imprinted[np.arange(len(y)), y]).mean())
        assert kept["start"] == pytest.approx(expected, rel=1e-4)
        assert (imprinted.argmax(1) == y).all()
    else:  # no parameter is known to be the class weight: nothing is imprinted
        assert kept["start"] == pytest.approx(np.log(3), rel=1e-4)


def test_the_default_bundle_names_its_class_parameters(tiny):
    manifest = Bundle.load(tiny).manifest
    assert manifest["classes"]["weight"] == "head.weight"
    assert manifest["classes"]["bias"] == "head.bias"


def test_renaming_with_a_padded_name_keeps_the_trained_column(tiny, tmp_path):
    X, labels = _features()
    profile = tmp_path / "me"
    with Personalizer(tiny, profile=profile, threads=1) as p:
        p.add_features(X, labels)
        p.fit(epochs=10, early_stop=False)
        before = p.predict_features(X)
        weights = {k: v.copy() for k, v in p._snapshot.params.items()}
        p.rename_class("red", " crimson ")
        expected = ["crimson", "blue", "green"]
        assert p.classes() == expected and p.counts() == {c: 6 for c in expected}
        assert list(p._snapshot.classes) == expected  # what readers and export see
        after = p.predict_features(X)
        assert p.trained
        for a, b in zip(after, before):
            assert list(a["scores"]) == expected
            assert a["label"] == {"red": "crimson"}.get(b["label"], b["label"])
            np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()),
                                       rtol=1e-6)
        # The next change of classes keeps crimson's trained column (it used to be
        # dropped: ' crimson ' in the columns, 'crimson' in the store).
        p.add_class("yellow")
        for name, value in p._snapshot.params.items():
            if value.shape != weights[name].shape:  # the class-sized ones grew by one
                np.testing.assert_array_equal(np.take(value, [0, 1, 2], axis=0),
                                              weights[name])
        assert [r["label"] for r in p.predict_features(X)] == [r["label"] for r in after]
        p.save()
        export = p.export(tmp_path / "personal.onnx")
    import onnxruntime as ort

    meta = ort.InferenceSession(str(export)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["edgetune.classes"]) == [*expected, "yellow"]
    with Personalizer(profile=profile, threads=1) as again:
        assert again.classes() == [*expected, "yellow"] and again.trained
        reopened = again.predict_features(X)
        assert [r["label"] for r in reopened] == [r["label"] for r in after]
        assert all(r["source"] == "head" for r in reopened)


def test_padded_names_are_canonical_everywhere(tiny, tmp_path):
    X, _ = _features()
    with Personalizer(tiny, profile=tmp_path / "me", threads=1) as p:
        p.add_features(X[:2], [" mug", "mug "])
        p.add_class("  cup\t")
        assert p.classes() == ["mug", "cup"]
        p.remove_class(" cup ")
        assert p.counts() == {"mug": 2}


def test_a_bundle_that_names_its_columns_starts_them_by_name(tiny, tmp_path):
    """A fleet's global bundle names its initial columns (classes.names): a new profile
    takes each named class's column by name, in whatever order its classes come, and
    starts only the classes the bundle does not name at their class means."""
    bundle = Bundle.load(tiny)
    init = bundle.manifest["init"]["file"]
    rng = np.random.default_rng(3)
    trained = {k: rng.standard_normal(v.shape).astype(np.float32)
               for k, v in st.load(bundle.files[init]).items()}
    bundle.files[init] = st.save(trained)
    bundle.manifest["classes"]["names"] = CLASSES  # columns 0, 1, 2: red, blue, green
    named = bundle.save(tmp_path / "global.edgetune")
    X, labels = _features()
    pick = [labels.index("green"), labels.index("red")]
    with Personalizer(named, profile=tmp_path / "me", threads=1) as p:
        p.add_features(X[pick], ["green", "red"])
        p.add_features(X[:1] + 5.0, ["violet"])  # a class the bundle does not name
        assert p.classes() == ["green", "red", "violet"]
        params = {s["name"]: p._values[s["train_input"]] for s in p.bundle.params}
        np.testing.assert_array_equal(params["head.weight"][:2], trained["head.weight"][[2, 0]])
        np.testing.assert_array_equal(params["head.bias"][:2], trained["head.bias"][[2, 0]])
        assert not params["head.weight"][2].any()  # violet: zero until the fit imprints it
        p.fit(epochs=1, lr=1e-9, early_stop=False)
        params = {s["name"]: p._values[s["train_input"]] for s in p.bundle.params}
        np.testing.assert_allclose(params["head.weight"][:2], trained["head.weight"][[2, 0]],
                                   atol=1e-6)  # kept, not imprinted over
        assert params["head.weight"][2].any()  # imprinted from its class mean
