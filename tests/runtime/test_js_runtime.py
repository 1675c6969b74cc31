"""onnxruntime-node (npm) trains an edgetune bundle from its manifest alone.

The bundle is built by `convert` from a tiny ONNX base (uint8 NHWC image -> 16 features)
with a softmax head and Adam. Features come from real photos (scikit-image's bundled
chelsea, coffee, astronaut and rocket; augmented 32x32 crops, one class per photo) run
through the bundle's `base` graph. The same fixed mini-batches are then trained twice:
in Python with onnxruntime, and in Node with tests/js/train_bundle.mjs, which knows
nothing but the manifest, safetensors and onnxruntime-node. Losses, epoch losses and
the final parameters and optimizer state must agree within 1e-4.

An audio bundle (the speech-embedding base: float32 PCM [n, 24000] at 16 kHz -> 96-d)
goes the same way from raw PCM: words spoken by espeak-ng and flite
(tests/speech/speech_synth.py) are prepared in Python (resampled, centered: the base's
input), written as float32, and Node runs the manifest's `base` graph on them itself,
trains, then scores held-out voices with `infer`; features, losses, parameters and
probabilities must agree with Python's.

Needs node on PATH and `npm install --ignore-scripts` (or `npm ci --ignore-scripts`)
run in tests/js.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.numpy import load_file, save

from edgetune.bundle import Bundle
from edgetune.converter.convert import convert
from edgetune.runtime.trainer import GraphTrainer, make_session

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "train_bundle.mjs"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # one class each
PER_CLASS = 8
SIZE = 32
STEPS = 40
BATCH = 8
LR = 0.01
TOL = 1e-4


def _tiny_base(path: Path) -> None:
    """uint8 [N, 32, 32, 3] -> Cast -> (x - 127) / 128 -> NCHW -> Conv -> ReLU -> GAP -> [N, 16]."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 0.3, (16, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, 16).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["pixels", "offset"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv.weight", "conv.bias"], ["conv"],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_base",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.array(127.0, np.float32), "offset"),
         numpy_helper.from_array(np.array(128.0, np.float32), "scale"),
         numpy_helper.from_array(weight, "conv.weight"),
         numpy_helper.from_array(bias, "conv.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _photo_crops(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augmented 32x32 crops of real photos (random crop, scale, flip): images, labels."""
    from skimage import data

    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = getattr(data, name)()[..., :3]
        h, w = photo.shape[:2]
        for _ in range(PER_CLASS):
            side = int(rng.uniform(0.4, 0.8) * min(h, w))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE),
                                                                          Image.BILINEAR)
            crop = np.asarray(crop)
            images.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            labels.append(label)
    order = rng.permutation(len(labels))  # mixed classes, so consecutive rows make batches
    return np.stack(images)[order], np.array(labels, np.int64)[order]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved bundle with non-zero starting parameters, and the data files for Node."""
    tmp = tmp_path_factory.mktemp("js_runtime")
    _tiny_base(tmp / "base.onnx")
    bundle = convert(base=tmp / "base.onnx", head="softmax", optimizer="adam", classes=4,
                     lr=LR)
    # The softmax head starts at zeros; start from random values instead so the JS
    # safetensors parser is really tested (a zero start would hide a broken reader).
    rng = np.random.default_rng(1)
    start = {k: rng.normal(0.0, 0.1, v.shape).astype(np.float32)
             for k, v in bundle.initial_values().items()}
    bundle.files[bundle.manifest["init"]["file"]] = save(start)
    bundle.save(tmp / "m.edgetune")
    bundle = Bundle.load(tmp / "m.edgetune")

    images, labels = _photo_crops(np.random.default_rng(2))
    base_in, base_out = bundle.io("base")
    features = make_session(bundle.graph("base"), threads=1).run(
        [base_out["features"]], {base_in["image"]: images})[0]
    assert features.shape == (len(labels), *bundle.manifest["features"]["shape"])

    batches = [rng.permutation(len(labels))[:BATCH].tolist() for _ in range(STEPS)]
    features.astype("<f4").tofile(tmp / "features.f32")
    labels.astype("<i8").tofile(tmp / "labels.i64")
    (tmp / "data.json").write_text(json.dumps({
        "features": {"file": "features.f32", "shape": list(features.shape)},
        "labels": {"file": "labels.i64", "shape": list(labels.shape)},
        "lr": LR, "batches": batches, "epoch_batch_size": BATCH}))
    return tmp, bundle, features, labels, batches


def _python_run(bundle: Bundle, features, labels, batches):
    """The same schedule with onnxruntime in Python: the steps, then one epoch call."""
    initial = bundle.initial_values()
    params = {p["train_input"]: initial[p["name"]] for p in bundle.params}
    state = {s["train_input"]: np.zeros_like(initial[s["param"]]) for s in bundle.state}
    io = {t["train_input"]: t["train_output"] for t in bundle.params + bundle.state}
    trainer = GraphTrainer(bundle.graph("train"), params, state, io,
                           epoch=bundle.graph("train_epoch"), lr=LR, threads=1)
    losses = [trainer.step(features[rows], labels[rows]) for rows in batches]
    epoch_losses = trainer.epoch(features, labels, batch_size=BATCH)
    final = {t["name"]: trainer.values[t["train_input"]] for t in bundle.params + bundle.state}
    return np.array(losses), np.asarray(epoch_losses), final


def _node_run(tmp: Path, data: str = "data.json") -> tuple[dict, dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js (>= 18) to run the onnxruntime-node "
                    "test")
    if not (JS_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(f"onnxruntime-node is not installed in {JS_DIR}; run "
                    f"`npm install --ignore-scripts` (or `npm ci --ignore-scripts`) there")
    out = tmp / "final.safetensors"
    proc = subprocess.run([node, str(SCRIPT), str(tmp / "m.edgetune"), str(tmp / data),
                           "--save", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"train_bundle.mjs failed:\n{proc.stderr}"
    return json.loads(proc.stdout), load_file(out)


def test_onnxruntime_node_trains_a_bundle_like_python(setup):
    tmp, bundle, features, labels, batches = setup
    py_losses, py_epoch, py_final = _python_run(bundle, features, labels, batches)
    report, js_final = _node_run(tmp)

    js_losses = np.array(report["losses"])
    assert report["runtime"].startswith("onnxruntime-node")
    assert len(js_losses) == STEPS
    assert js_losses[-1] < js_losses[0], f"the loss did not fall in JS: {js_losses}"
    assert js_losses[-4:].mean() < 0.8 * js_losses[:4].mean(), js_losses
    np.testing.assert_allclose(js_losses, py_losses, rtol=TOL, atol=TOL)

    js_epoch = np.array(report["epoch_losses"])
    assert len(js_epoch) == len(labels) // BATCH
    np.testing.assert_allclose(js_epoch, py_epoch, rtol=TOL, atol=TOL)
    assert js_epoch.mean() < js_losses[0]

    assert set(js_final) == set(py_final)
    for name, value in py_final.items():
        assert js_final[name].shape == value.shape, name
        np.testing.assert_allclose(js_final[name], value, rtol=TOL, atol=TOL, err_msg=name)
    for name, summary in report["params"].items():
        np.testing.assert_allclose(summary["first"], py_final[name].ravel()[:8],
                                   rtol=TOL, atol=TOL, err_msg=name)
    # Training moved the parameters away from where the bundle starts.
    start = bundle.initial_values()
    assert all(np.abs(js_final[p["name"]] - start[p["name"]]).max() > 1e-3
               for p in bundle.params)


# -- an audio bundle, from raw PCM ---------------------------------------------------------
AUDIO_STEPS = 30
AUDIO_BATCH = 8


def _speech_synth():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speech"))
    try:
        import speech_synth
    finally:
        sys.path.pop(0)
    return speech_synth


def test_onnxruntime_node_trains_an_audio_bundle_from_pcm_like_python(tmp_path):
    synth = _speech_synth()
    if synth.skip_reason() is not None:
        pytest.skip(synth.skip_reason())
    from edgetune.inputs import preparer_for

    bundle = convert(base="speech-embedding", head="softmax", classes=len(synth.WORDS), lr=LR)
    rng = np.random.default_rng(3)
    start = {k: rng.normal(0.0, 0.1, v.shape).astype(np.float32)
             for k, v in bundle.initial_values().items()}
    bundle.files[bundle.manifest["init"]["file"]] = save(start)
    bundle.save(tmp_path / "m.edgetune")
    bundle = Bundle.load(tmp_path / "m.edgetune")
    spec = bundle.manifest["input"]
    assert spec["kind"] == "audio" and spec["dtype"] == "float32"

    # Enrollment: 4 words x 6 voices; held out: the same words by 6 other voices.
    enroll, heldout = synth.enroll_clips(), synth.heldout_clips()
    keys = sorted(enroll)
    order = rng.permutation(len(keys))  # mixed classes
    keys = [keys[i] for i in order]
    preparer = preparer_for(spec)
    pcm = preparer.batch([enroll[k] for k in keys])
    assert pcm.dtype == np.float32 and pcm.shape == (len(keys), spec["samples"])
    labels = np.array([synth.WORDS.index(k[0]) for k in keys], np.int64)
    test_keys = sorted(heldout)
    test_pcm = preparer.batch([heldout[k] for k in test_keys])
    test_labels = np.array([synth.WORDS.index(k[0]) for k in test_keys])

    base_in, base_out = bundle.io("base")
    [base_input] = base_in.values()
    base = make_session(bundle.graph("base"), threads=1)
    features = base.run([base_out["features"]], {base_input: pcm})[0]
    test_features = base.run([base_out["features"]], {base_input: test_pcm})[0]

    batches = [rng.permutation(len(labels))[:AUDIO_BATCH].tolist() for _ in range(AUDIO_STEPS)]
    pcm.astype("<f4").tofile(tmp_path / "pcm.f32")
    test_pcm.astype("<f4").tofile(tmp_path / "heldout.f32")
    labels.astype("<i8").tofile(tmp_path / "labels.i64")
    (tmp_path / "audio.json").write_text(json.dumps({
        "inputs": {"file": "pcm.f32", "shape": list(pcm.shape)},
        "labels": {"file": "labels.i64", "shape": list(labels.shape)},
        "predict": {"file": "heldout.f32", "shape": list(test_pcm.shape)},
        "lr": LR, "batches": batches, "epoch_batch_size": AUDIO_BATCH}))

    py_losses, py_epoch, py_final = _python_run(bundle, features, labels, batches)
    infer_in, infer_out = bundle.io("infer")
    feeds = {infer_in["features"]: test_features}
    feeds.update({p["infer_input"]: py_final[p["name"]] for p in bundle.params})
    py_probabilities = make_session(bundle.graph("infer"), threads=1).run(
        [infer_out["probabilities"]], feeds)[0]

    report, js_final = _node_run(tmp_path, "audio.json")
    assert report["runtime"].startswith("onnxruntime-node")
    # Node ran the base graph on the PCM itself: the same features.
    js_features = np.array(report["features"], np.float32).reshape(features.shape)
    np.testing.assert_allclose(js_features, features, rtol=TOL, atol=TOL)

    js_losses = np.array(report["losses"])
    assert len(js_losses) == AUDIO_STEPS
    assert js_losses[-4:].mean() < 0.5 * js_losses[:4].mean(), js_losses
    np.testing.assert_allclose(js_losses, py_losses, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(report["epoch_losses"], py_epoch, rtol=TOL, atol=TOL)
    assert set(js_final) == set(py_final)
    for name, value in py_final.items():
        np.testing.assert_allclose(js_final[name], value, rtol=TOL, atol=TOL, err_msg=name)

    js_probabilities = np.array(report["probabilities"]["data"], np.float32).reshape(
        report["probabilities"]["shape"])
    assert js_probabilities.shape == (len(test_keys), len(synth.WORDS))
    np.testing.assert_allclose(js_probabilities, py_probabilities, rtol=TOL, atol=TOL)
    assert (js_probabilities.argmax(1) == py_probabilities.argmax(1)).all()
    # Trained in Node on 6 voices, the held-out voices' words are recognized.
    accuracy = float((js_probabilities.argmax(1) == test_labels).mean())
    print(f"Node: held-out accuracy {accuracy:.3f}, features max abs diff "
          f"{np.abs(js_features - features).max():.2e}")
    assert accuracy >= 0.75, accuracy
