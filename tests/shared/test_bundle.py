"""Bundle format v1: what loading accepts and what it refuses, each with a clear error;
and a bundle personalized from its manifest alone with a bare onnxruntime."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import bundle_trainer, tiny_base
from onnx import external_data_helper

from edgetune.bundle import Bundle, BundleError
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Momentum


@pytest.fixture
def saved(tmp_path):
    base = tiny_base(tmp_path / "tiny.onnx")
    return convert(base, SoftmaxClassifier(3), Momentum(lr=0.1)).save(tmp_path / "t.edgetune")


def _edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _rehash(path, role_or_init):
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["init"] if role_or_init == "init" else manifest["graphs"][role_or_init]
    entry["sha256"] = hashlib.sha256((path / entry["file"]).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_saved_bundle_loads_verified(saved):
    bundle = Bundle.load(saved)
    assert bundle.manifest["format"] == "edgetune.bundle" and bundle.manifest["version"] == 1
    assert bundle.manifest["input"] == {"kind": "image", "name": "image", "dtype": "uint8",
                                        "shape": [None, 16, 16, 3], "layout": "NHWC",
                                        "color": "RGB", "filter": "lanczos", "crop": "center"}
    assert bundle.describe()["verified"]
    for role in ("base", "train", "train_epoch", "infer"):
        model = onnx.load_from_string(bundle.graph(role))
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version <= 10
    assert not list(saved.parent.glob(".t.edgetune*")), "no temp dirs left behind"


@pytest.mark.parametrize("target,match", [
    ("train.onnx", "sha256 of train.onnx does not match"),
    ("params.safetensors", "sha256 of params.safetensors does not match"),
])
def test_a_changed_file_is_refused(saved, target, match):
    data = bytearray((saved / target).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / target).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=match):
        Bundle.load(saved)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(version=2), "version 2 is newer than this edgetune reads"),
    (lambda m: m.update(version="1"), "version must be a positive integer"),
    (lambda m: m.update(format="other"), "not an edgetune bundle"),
    (lambda m: m["graphs"].pop("train"), "no 'train' graph"),
    (lambda m: m["graphs"]["train"].update(file="../t.edgetune/train.onnx"),
     "plain file name inside the bundle"),
    (lambda m: m["graphs"]["infer"].update(sha256="abc"), "64 lowercase hex"),
    (lambda m: m["graphs"]["train"]["inputs"].pop("lr"), "lacks the roles \\['lr'\\]"),
    (lambda m: m["params"][0].update(shape=[1 << 20, 1 << 20]), "at most"),
    (lambda m: m["params"][0].update(shape=[-1]), "bad dimension"),
    (lambda m: m["params"][0].update(dtype="float64"), "float32"),
    (lambda m: m.update(params=[]), "at least one parameter"),
    (lambda m: m.update(params="head.weight"), "params must be a list"),
])
def test_a_malformed_manifest_is_refused(saved, change, match):
    _edit_manifest(saved, change)
    with pytest.raises(BundleError, match=match):
        Bundle.load(saved)


def test_broken_json_and_missing_pieces(saved, tmp_path):
    (saved / "manifest.json").write_text('{"format": "edgetune.bundle", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(saved)
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.load(tmp_path / "nothing.edgetune")
    (tmp_path / "empty.edgetune").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path / "empty.edgetune")


def test_init_values_must_match_declared_shapes(saved):
    from safetensors.numpy import save_file

    save_file({"head.weight": np.zeros((9, 3), np.float32),
               "head.bias": np.zeros(3, np.float32)}, saved / "params.safetensors")
    _rehash(saved, "init")
    with pytest.raises(BundleError, match="head.weight.*shape \\[9, 3\\].*\\['classes', 8\\]"):
        Bundle.load(saved)


def _with_external_data(saved, role, location):
    """Move a graph's initializers to an external file named `location`."""
    entry = json.loads((saved / "manifest.json").read_text())["graphs"][role]
    model = onnx.load(saved / entry["file"], load_external_data=False)
    for tensor in model.graph.initializer:
        size = int(np.prod(tensor.dims)) * 4  # float32
        tensor.ClearField("float_data")
        tensor.raw_data = b""
        external_data_helper.set_external_data(tensor, location=location, offset=0,
                                               length=size)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    (saved / entry["file"]).write_bytes(model.SerializeToString())
    _rehash(saved, role)


def test_external_data_outside_the_bundle_is_refused(saved, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    _with_external_data(saved, "base", "../secret.bin")
    with pytest.raises(BundleError, match="external data '../secret.bin' outside the bundle"):
        Bundle.load(saved)
    _with_external_data(saved, "base", str(secret))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(saved)


def test_external_data_inside_the_bundle_is_fine(saved):
    model = onnx.load(saved / "base.onnx")
    onnx.save(model, saved / "base.onnx", save_as_external_data=True, location="base.data",
              size_threshold=0, all_tensors_to_one_file=True)
    _rehash(saved, "base")
    assert Bundle.load(saved).has_graph("base")


def test_a_file_that_is_not_onnx_is_refused(saved):
    (saved / "infer.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    _rehash(saved, "infer")
    with pytest.raises(BundleError, match="infer.onnx is not a valid ONNX file"):
        Bundle.load(saved)


def test_save_refuses_to_overwrite_unless_asked(saved):
    bundle = Bundle.load(saved)
    with pytest.raises(BundleError, match="exists"):
        bundle.save(saved)
    bundle.save(saved, overwrite=True)
    assert Bundle.load(saved).manifest == bundle.manifest


def test_a_loaded_bundle_is_saved_by_hard_links_while_its_files_are_unchanged(saved, tmp_path):
    """Saving a loaded bundle (a new profile's copy) links the verified files instead of
    copying them; a file replaced since loading, or changed in memory, is written."""
    bundle = Bundle.load(saved)
    base_file = bundle.manifest["graphs"]["base"]["file"]
    init_file = bundle.manifest["init"]["file"]
    copy = bundle.save(tmp_path / "copy.edgetune")
    assert (copy / base_file).stat().st_ino == (saved / base_file).stat().st_ino
    Bundle.load(copy)

    # the source directory's base file replaced (a new inode, other bytes) after loading
    loaded = Bundle.load(saved)
    replaced = saved / base_file
    replaced.unlink()
    replaced.write_bytes(b"not the loaded bytes")
    loaded.files[init_file] = bytes(bytearray(loaded.files[init_file]))  # set anew
    again = loaded.save(tmp_path / "again.edgetune")
    assert (again / base_file).stat().st_ino != replaced.stat().st_ino
    assert (again / init_file).stat().st_ino != (saved / init_file).stat().st_ino
    assert Bundle.load(again).files[base_file] == bundle.files[base_file]


def test_a_released_graph_is_read_again_verified(saved, tmp_path):
    """release() drops a graph's bytes from memory; graph(), describe() and save() read
    them again from the directory, verified: a file changed meanwhile is refused."""
    bundle = Bundle.load(saved)
    base = bundle.graph("base")
    bundle.release("base")
    assert bundle.manifest["graphs"]["base"]["file"] not in bundle.files
    assert bundle.graph("base") == base
    assert bundle.describe()["graphs"]["base"]["bytes"] == len(base)
    Bundle.load(bundle.save(tmp_path / "copy.edgetune"))

    bundle.release("base")  # save() moved the bundle to the copy: change the file there
    (bundle.path / bundle.manifest["graphs"]["base"]["file"]).write_bytes(base[:-1] + b"x")
    with pytest.raises(BundleError, match="sha256"):
        bundle.graph("base")


def personalize_from_manifest(path, features, labels, steps, batch):
    """Everything a program needs, knowing only the manifest and an ONNX runtime."""
    from safetensors.numpy import load_file

    manifest = json.loads((path / "manifest.json").read_text())
    for entry in [*manifest["graphs"].values(), manifest["init"]]:
        digest = hashlib.sha256((path / entry["file"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"]
    initial = load_file(path / manifest["init"]["file"])
    values = {p["train_input"]: initial[p["name"]] for p in manifest["params"]}
    shapes = {p["name"]: initial[p["name"]].shape for p in manifest["params"]}
    values.update({s["train_input"]: np.zeros(shapes[s["param"]], np.float32)
                   for s in manifest["state"]})
    train = manifest["graphs"]["train"]
    session = ort.InferenceSession(str(path / train["file"]))
    carried = {s["train_input"]: s["train_output"]
               for s in manifest["params"] + manifest["state"]}
    losses = []
    for step in range(steps):
        rows = slice(step * batch % len(labels), step * batch % len(labels) + batch)
        feeds = {train["inputs"]["features"]: features[rows],
                 train["inputs"]["labels"]: labels[rows],
                 train["inputs"]["sample_weight"]: np.ones(len(labels[rows]), np.float32),
                 train["inputs"]["lr"]: np.array(manifest["optimizer"]["lr"], np.float32),
                 train["inputs"]["step"]: np.array(step + 1, np.int64), **values}
        out = session.run([train["outputs"]["loss"], *carried.values()], feeds)
        losses.append(float(out[0]))
        values.update(zip(carried, out[1:]))
    infer = manifest["graphs"]["infer"]
    probs = ort.InferenceSession(str(path / infer["file"])).run(
        [infer["outputs"]["probabilities"]],
        {infer["inputs"]["features"]: features,
         **{p["infer_input"]: values[p["train_input"]] for p in manifest["params"]}})[0]
    return losses, probs


def test_personalize_with_only_onnxruntime_and_the_manifest(saved, photos):
    from conftest import photo_crops

    images, labels = photo_crops(per_class=6, size=16, classes=("chelsea", "coffee", "rocket"))
    manifest = json.loads((saved / "manifest.json").read_text())
    base = manifest["graphs"]["base"]
    features = ort.InferenceSession(str(saved / base["file"])).run(
        [base["outputs"]["features"]], {base["inputs"]["image"]: images})[0]
    order = np.random.default_rng(0).permutation(len(labels))
    features, labels = features[order], labels[order]
    losses, probs = personalize_from_manifest(saved, features, labels, steps=60, batch=6)
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:3])
    # edgetune's own runtime reaches the same losses on the same mini-batches.
    trainer = bundle_trainer(Bundle.load(saved))
    ours = [trainer.step(features[s * 6 % 18: s * 6 % 18 + 6], labels[s * 6 % 18: s * 6 % 18 + 6])
            for s in range(60)]
    np.testing.assert_allclose(losses, ours, rtol=1e-6)
    shutil.rmtree(saved)
