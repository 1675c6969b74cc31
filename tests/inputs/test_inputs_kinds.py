"""Input kinds: the manifest's `input.kind` chooses the preparer that turns a user's input
into the base graph's feed. A toy kind registered here personalizes end to end through
the public Personalizer API with no change to the Personalizer; bundles without a kind
read as images; an unknown kind is refused when the bundle loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_base
from PIL import Image

from edgetune.bundle import Bundle
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Momentum
from edgetune.errors import BadInputError, BundleError
from edgetune.inputs import (
    Preparer,
    TensorPreparer,
    kind_of,
    known_kinds,
    list_class_folder,
    preparer_for,
    register,
    unregister,
)
from edgetune.inputs.image import ImagePreparer, prepare
from edgetune.runtime.personalizer import Personalizer

DIGITS = (0, 1, 7)  # three classes of scikit-learn's real handwritten digits


# -- a toy kind: a line of comma-separated numbers -> a float32 vector -------------------
class VectorPreparer(Preparer):
    """Kind "vector": one example is a text of comma-separated numbers (a .csv or .txt
    file, its bytes, or the text itself)."""

    kind = "vector"
    suffixes = frozenset({".csv", ".txt"})
    noun = "vector"

    def prepare(self, item) -> np.ndarray:
        if isinstance(item, os.PathLike):
            try:
                text = Path(item).read_text()
            except OSError as e:
                raise BadInputError(f"{self.describe(item)} cannot be read ({e})") from None
        elif isinstance(item, (bytes, bytearray)):
            text = bytes(item).decode("utf-8", "replace")
        elif isinstance(item, str):
            text = item
        else:
            raise BadInputError(f"{self.describe(item)}: pass comma-separated numbers")
        try:
            row = np.array([float(x) for x in text.replace("\n", ",").split(",") if x.strip()],
                           self.dtype)
        except ValueError:
            raise BadInputError(f"{self.describe(item)}: not comma-separated numbers; "
                                f"write e.g. 0.5, 1, 2.25") from None
        if row.shape != self.shape:
            raise BadInputError(f"{self.describe(item)} has {row.size} numbers; this bundle "
                                f"needs {self.shape[0]}")
        return row


@pytest.fixture
def vector_kind():
    register("vector", VectorPreparer)
    yield
    unregister("vector")


def vector_base(path, dim=64, features=48):
    """A small non-image base: float32 [N, dim] -> MatMul -> Relu -> [N, features]."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [dim, features],
                           rng.standard_normal(dim * features).astype(np.float32) * 0.3)
    nodes = [helper.make_node("MatMul", ["row", "w"], ["mm"]),
             helper.make_node("Relu", ["mm"], ["emb"])]
    graph = helper.make_graph(
        nodes, "vector", [helper.make_tensor_value_info("row", onnx.TensorProto.FLOAT,
                                                        ["N", dim])],
        [helper.make_tensor_value_info("emb", onnx.TensorProto.FLOAT, ["N", features])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _csv(row) -> str:
    return ", ".join(f"{v:g}" for v in row)


@pytest.fixture(scope="module")
def digit_split(digits):
    X, y = digits
    train, test = [], []
    for label in DIGITS:
        rows = X[y == label]
        train += [(r, str(label)) for r in rows[:30]]
        test += [(r, str(label)) for r in rows[100:130]]
    return train, test


def _build(tmp_path, kind=None) -> Path:
    built = convert(vector_base(tmp_path / "vector.onnx"), SoftmaxClassifier(len(DIGITS)),
                    Momentum(lr=0.1))
    if kind is not None:
        built.manifest["input"]["kind"] = kind
    return built.save(tmp_path / "vector.edgetune")


def test_a_toy_kind_personalizes_through_the_public_api(vector_kind, tmp_path, digit_split):
    train, test = digit_split
    bundle = _build(tmp_path, "vector")
    assert Bundle.load(bundle).manifest["input"]["kind"] == "vector"
    data = tmp_path / "test"
    for i, (row, label) in enumerate(test):
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / f"{i}.csv").write_text(_csv(row) + "\n")
    (data / DIGITS[0].__str__() / "notes.md").write_text("not a vector")

    with Personalizer(bundle, profile=tmp_path / "profile", threads=1) as p:
        assert isinstance(p.preparer, VectorPreparer)
        # texts, bytes and files of the toy kind, all through the same calls
        first, *rest = train
        p.add_sample(_csv(first[0]).encode(), first[1])
        sample = tmp_path / "one.csv"
        sample.write_text(_csv(rest[0][0]))
        p.add_sample(sample, rest[0][1], source=str(sample))
        p.add_samples([_csv(r) for r, _ in rest[1:]], [c for _, c in rest[1:]])
        assert p.counts() == {str(d): 30 for d in DIGITS}
        before = p.predict(_csv(test[0][0]))  # prototypes answer before any training
        assert before["label"] in p.counts()

        with pytest.raises(BadInputError, match="has 3 numbers; this bundle needs 64"):
            p.add_samples([_csv(train[0][0]), "1, 2, 3"], ["0", "0"])
        with pytest.raises(BadInputError, match="not comma-separated numbers"):
            p.add_sample("one, two", "0")
        assert p.counts() == {str(d): 30 for d in DIGITS}, "a bad input adds nothing"

        records = p.fit(epochs=60)
        assert [r for r in records if "loss" in r][-1]["loss"] < records[0]["loss"]
        assert p.predict(_csv(test[-1][0]))["label"] == test[-1][1]
        with pytest.warns(UserWarning, match="notes.md: not a vector file"):
            report = p.evaluate(data)
    assert report["n"] == len(test)
    assert report["accuracy"] >= 0.9, report


def test_a_toy_kind_lists_its_own_folders(vector_kind, tmp_path):
    p = preparer_for({"kind": "vector", "name": "row", "dtype": "float32", "shape": [None, 2]},
                     min_image_size=16)  # options a kind does not use are ignored
    with pytest.raises(BadInputError, match=r"vector folder .* does not exist.*<vector>\.csv"):
        p.list_folder(tmp_path / "missing")
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "1.txt").write_text("1, 2")
    assert p.list_folder(tmp_path / "d") == [(tmp_path / "d" / "a" / "1.txt", "a")]
    np.testing.assert_array_equal(p.batch(["1,2", b"3,4"]), [[1, 2], [3, 4]])
    with pytest.raises(BadInputError, match="vector 1 of 2: .* has 1 numbers"):
        p.batch(["1,2", "3"])


def test_an_unknown_kind_is_refused_at_load_naming_the_known_kinds(vector_kind, tmp_path):
    bundle = _build(tmp_path, "vector")
    unregister("vector")  # an edgetune that does not know the kind
    with pytest.raises(BundleError, match=r"input.kind 'vector' is not an input kind this "
                                          r"edgetune knows \(it knows audio, image, tensor, "
                                          r"text\); "
                                          r"upgrade edgetune"):
        Bundle.load(bundle)
    with pytest.raises(BundleError, match="upgrade edgetune"):
        preparer_for({"kind": "smell", "name": "x", "dtype": "float32", "shape": [None, 1]})


@pytest.mark.parametrize("kind", [5, "", None, ["image"]])
def test_kind_must_be_a_non_empty_string(tmp_path, kind):
    bundle = _build(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["kind"] = kind
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="input.kind must be a non-empty string"):
        Bundle.load(bundle)


def test_a_manifest_without_kind_reads_as_image(tmp_path):
    built = convert(tiny_base(tmp_path / "tiny.onnx"), SoftmaxClassifier(2), Momentum(lr=0.1))
    built.manifest["input"].pop("kind", None)
    for key in ("filter", "crop"):  # what bundles written before kinds lack
        built.manifest["input"].pop(key, None)
    path = built.save(tmp_path / "old.edgetune")
    assert "kind" not in json.loads((path / "manifest.json").read_text())["input"]
    assert kind_of(Bundle.load(path).manifest["input"]) == "image"
    photo = np.asarray(Image.new("RGB", (40, 30), (200, 30, 10)))
    with Personalizer(path, profile=tmp_path / "profile", threads=1) as p:
        assert isinstance(p.preparer, ImagePreparer)
        np.testing.assert_array_equal(p.preparer.prepare(photo),
                                      prepare(photo, (16, 16), min_size=16))
        p.add_sample(photo, "red")
        with pytest.raises(BadInputError, match="image is 8x8; need at least 16x16"):
            p.add_sample(np.zeros((8, 8, 3), np.uint8), "red")
        assert p.counts() == {"red": 1}


def test_old_non_image_bundles_read_as_tensor(tmp_path):
    # Before kinds, the converter wrote layout and color null for a non-image base.
    spec = {"name": "row", "dtype": "float32", "shape": [None, 4], "layout": None,
            "color": None}
    assert kind_of(spec) == "tensor" and isinstance(preparer_for(spec), TensorPreparer)
    assert kind_of({"name": "image", "dtype": "uint8", "shape": [None, 8, 8, 3]}) == "image"
    assert kind_of({**spec, "kind": "image"}) == "image"


def test_the_tensor_kind_checks_shape_and_dtype(tmp_path):
    t = preparer_for({"kind": "tensor", "name": "row", "dtype": "float32",
                      "shape": [None, 3, None]})
    row = np.ones((3, 5), np.float32)
    assert t.prepare(row) is row
    assert t.prepare([[1, 2], [3, 4], [5, 6]]).dtype == np.float32  # lists are cast
    with pytest.raises(BadInputError, match=r"input has shape \(2, 5\) and dtype float32; "
                                            r"this bundle needs \(3, None\) float32"):
        t.prepare(np.ones((2, 5), np.float32))
    with pytest.raises(BadInputError, match="dtype float64"):
        t.prepare(np.ones((3, 5)))
    np.save(tmp_path / "r.npy", row)
    np.testing.assert_array_equal(t.prepare(tmp_path / "r.npy"), row)
    np.testing.assert_array_equal(t.prepare((tmp_path / "r.npy").read_bytes()), row)
    with pytest.raises(BadInputError, match="not a readable .npy"):
        t.prepare(b"junk")
    with pytest.raises(BadInputError, match="does not exist"):
        t.prepare(tmp_path / "missing.npy")
    assert t.batch([row, row]).shape == (2, 3, 5)
    with pytest.raises(BadInputError, match="takes a list"):
        t.batch(str(tmp_path / "r.npy"))


def test_a_tensor_bundle_personalizes_from_arrays(tmp_path, digit_split):
    train, _ = digit_split
    bundle = _build(tmp_path)  # the converter's own kind for a float32 [N, D] base
    assert kind_of(Bundle.load(bundle).manifest["input"]) == "tensor"
    with Personalizer(bundle, profile=tmp_path / "profile", threads=1) as p:
        assert isinstance(p.preparer, TensorPreparer)
        p.add_samples([r for r, _ in train], [c for _, c in train])
        with pytest.raises(BadInputError, match="this bundle needs \\(64,\\) float32"):
            p.add_sample(np.ones(63, np.float32), "0")
        assert p.predict(train[0][0])["label"] == train[0][1]


def test_the_image_preparer_is_the_image_functions(tmp_path):
    spec = {"kind": "image", "name": "image", "dtype": "uint8", "shape": [None, 24, 32, 3]}
    p = preparer_for(spec, min_image_size=20)
    photo = np.asarray(Image.new("RGB", (64, 48), (1, 2, 3)))
    assert p.size == (32, 24) and p.prepare(photo).shape == (24, 32, 3)
    assert p.batch([photo, photo]).shape == (2, 24, 32, 3)
    with pytest.raises(BadInputError, match="image 1 of 2: .*need at least 20x20"):
        p.batch([photo, photo[:10]])
    with pytest.raises(BadInputError, match="not a readable image file"):
        p.check(b"not an image")
    assert p.describe(b"abc") == "image bytes (3 bytes)"
    with pytest.raises(BadInputError, match="image folder .* does not exist"):
        p.list_folder(tmp_path / "none")
    free = preparer_for({**spec, "shape": [None, None, None, 3]})
    with pytest.raises(BadInputError, match="fixed \\[null, height, width, 3\\]"):
        free.prepare(photo)


def test_registering_kinds():
    assert {"image", "tensor"} <= set(known_kinds())
    with pytest.raises(ValueError, match="already registered"):
        register("image", TensorPreparer)
    with pytest.raises(TypeError, match="must be callable"):
        register("thing", 42)
    with pytest.raises(ValueError, match="non-empty name"):
        register(" ", TensorPreparer)
    register("thing", lambda spec, **options: object())
    try:
        with pytest.raises(TypeError, match="not a Preparer"):
            preparer_for({"kind": "thing"})
    finally:
        unregister("thing")
    assert "thing" not in known_kinds()


def test_list_class_folder_is_generic(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.WAV").write_bytes(b"")
    assert list_class_folder(tmp_path, {".wav"}, noun="clip") == [(tmp_path / "c" / "x.WAV", "c")]
    with pytest.warns(UserWarning) as record:
        with pytest.raises(BadInputError, match="clip folder .* has class folders but no clips"):
            list_class_folder(tmp_path, {".flac"}, noun="clip")
    messages = " | ".join(str(w.message) for w in record)
    assert "x.WAV: not a clip file (known extensions: .flac)" in messages
    assert "holds no clips" in messages


def test_reading_a_manifest_loads_no_image_library():
    code = ("import sys, edgetune.bundle, edgetune.inputs\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('PIL', 'onnx', 'onnxruntime', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_feeds_name_the_base_input():
    t = TensorPreparer({"name": "x", "dtype": "float32", "shape": [None, 1]})
    rows = np.zeros((2, 1), np.float32)
    assert t.feeds(rows, {"image": "pixels"}) == {"pixels": rows}
    assert t.feeds(rows, {"row": "x"}) == {"x": rows}
    with pytest.raises(BundleError, match="feeds one input"):
        t.feeds(rows, {"ids": "a", "mask": "b"})
