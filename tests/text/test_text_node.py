"""onnxruntime-node trains a text bundle from its manifest and tokenizer alone.

tests/js/train_bundle.mjs gets the bundle and the texts (Debian fortunes quotations of
5 topics, plus sentences that stress the tokenizer: accents, CJK, emoji, odd
whitespace, a text longer than max_length). It reads the bundle's tokenizer.json with
@huggingface/tokenizers through the browser runtime's text.js (tests/js/text_tokens.mjs),
runs the base graph on the token ids it made, trains the head with the train graphs and
scores held-out texts with infer. Every text's token ids and mask must equal the Python
runtime's (the preparer, with the `tokenizers` library), and features, losses,
parameters and probabilities must agree with Python onnxruntime's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import text_data
from safetensors.numpy import load_file, save

from edgetune.bundle import Bundle
from edgetune.inputs import preparer_for
from edgetune.runtime.trainer import GraphTrainer, make_session

pytestmark = pytest.mark.skipif(text_data.skip_reason() is not None,
                                reason=str(text_data.skip_reason()))

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "train_bundle.mjs"
STEPS, BATCH, LR, TOL = 30, 8, 0.01, 1e-4
# Beyond the quotations: what a tokenizer port gets wrong first.
HARD = [
    "Café au lait — naïve résumé, s'il vous plaît!",
    "日本語のテキストと中文字符 mixed with English.",
    "Emoji 🤖🎉 and symbols: ©®™ ½ → ∞ ≠ ≤",
    "UPPER lower MiXeD case, don't won't y'all",
    "tabs\tand\nnewlines\r\nand\u3000ideographic\u00a0no-break\x1cfile-separator\x85next-line",
    "zero\u200bwidth joiner\u200d and soft\u00adhyphen",
    "https://example.org/path?q=1&r=2 and user@mail.test, 3.14159 vs 1,000,000",
    "Straße ǅemal İstanbul ﬁne ﬂight",
    " ".join(["Debugging is twice as hard as writing the code in the first place."] * 20),
]


def _node(bundle_dir: Path, data: Path, out: Path) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js (>= 18)")
    for package in ("onnxruntime-node", "@huggingface/tokenizers"):
        if not (JS_DIR / "node_modules" / package).is_dir():
            pytest.fail(f"{package} is not installed in {JS_DIR}: run `npm ci "
                        f"--ignore-scripts` there")
    proc = subprocess.run([node, str(SCRIPT), str(bundle_dir), str(data), "--save", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train_bundle.mjs failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_onnxruntime_node_trains_a_text_bundle_like_python(tmp_path):
    source = Bundle.load(text_data.text_bundle())
    rng = np.random.default_rng(14)
    start = {k: rng.normal(0.0, 0.1, v.shape).astype(np.float32)
             for k, v in source.initial_values().items()}
    source.files[source.manifest["init"]["file"]] = save(start)
    source.save(tmp_path / "m.edgetune")
    bundle = Bundle.load(tmp_path / "m.edgetune")
    spec = bundle.manifest["input"]

    train, heldout = text_data.split(seed=4)
    order = rng.permutation(len(train))
    texts = [train[i][0] for i in order]
    labels = np.array([text_data.TOPICS.index(train[i][1]) for i in order], np.int64)
    test_texts = [t for t, _ in heldout[::5]] + HARD
    test_labels = [text_data.TOPICS.index(y) for _, y in heldout[::5]]

    # Python: the runtime's preparer and onnxruntime
    preparer = preparer_for(spec, files=bundle)
    encoded = [preparer.encode(t) for t in texts + test_texts]
    rows = np.stack([r for r, _ in encoded])
    assert sum(cut for _, cut in encoded) == 1  # the long one (HARD[-1])
    base_in, base_out = bundle.io("base")
    base = make_session(bundle.graph("base"), threads=1)
    all_features = np.concatenate([
        base.run([base_out["features"]], preparer.feeds(rows[i:i + 8], base_in))[0]
        for i in range(0, len(rows), 8)])
    features, test_features = all_features[:len(texts)], all_features[len(texts):]
    batches = [rng.permutation(len(labels))[:BATCH].tolist() for _ in range(STEPS)]

    initial = bundle.initial_values()
    trainer = GraphTrainer(
        bundle.graph("train"), {p["train_input"]: initial[p["name"]] for p in bundle.params},
        {s["train_input"]: np.zeros_like(initial[s["param"]]) for s in bundle.state},
        {t["train_input"]: t["train_output"] for t in bundle.params + bundle.state},
        epoch=bundle.graph("train_epoch"), lr=LR, threads=1)
    py_losses = np.array([trainer.step(features[b], labels[b]) for b in batches])
    py_epoch = np.asarray(trainer.epoch(features, labels, batch_size=BATCH))
    py_final = {t["name"]: trainer.values[t["train_input"]]
                for t in bundle.params + bundle.state}
    infer_in, infer_out = bundle.io("infer")
    feeds = {infer_in["features"]: test_features,
             **{p["infer_input"]: py_final[p["name"]] for p in bundle.params}}
    py_probabilities = make_session(bundle.graph("infer"), threads=1).run(
        [infer_out["probabilities"]], feeds)[0]

    # Node: the manifest, tokenizer.json and onnxruntime-node
    labels.astype("<i8").tofile(tmp_path / "labels.i64")
    (tmp_path / "text.json").write_text(json.dumps({
        "texts": texts, "labels": {"file": "labels.i64", "shape": [len(labels)]},
        "predict": {"texts": test_texts}, "lr": LR, "batches": batches,
        "epoch_batch_size": BATCH}, ensure_ascii=False), encoding="utf-8")
    report = _node(tmp_path / "m.edgetune", tmp_path / "text.json", tmp_path / "final.st")
    js_final = load_file(tmp_path / "final.st")

    # the same token ids and mask for every text, and the same truncation
    tokens = report["tokens"]
    for i, text in enumerate(texts + test_texts):
        assert tokens["input_ids"][i] == rows[i, 0].tolist(), f"input_ids of {text!r}"
        assert tokens["attention_mask"][i] == rows[i, 1].tolist(), f"mask of {text!r}"
    assert tokens["truncated"] == [cut for _, cut in encoded]

    js_features = np.array(report["features"], np.float32).reshape(features.shape)
    np.testing.assert_allclose(js_features, features, rtol=TOL, atol=TOL)
    js_losses = np.array(report["losses"])
    assert js_losses[-4:].mean() < 0.7 * js_losses[:4].mean(), js_losses
    np.testing.assert_allclose(js_losses, py_losses, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(report["epoch_losses"], py_epoch, rtol=TOL, atol=TOL)
    assert set(js_final) == set(py_final)
    for name, value in py_final.items():
        np.testing.assert_allclose(js_final[name], value, rtol=TOL, atol=TOL, err_msg=name)
    js_probabilities = np.array(report["probabilities"]["data"], np.float32).reshape(
        report["probabilities"]["shape"])
    np.testing.assert_allclose(js_probabilities, py_probabilities, rtol=TOL, atol=TOL)
    accuracy = float((js_probabilities[:len(test_labels)].argmax(1) == test_labels).mean())
    print(f"Node: held-out accuracy {accuracy:.3f} of {len(test_labels)}, features max abs "
          f"diff {np.abs(js_features - features).max():.2e}")
    assert accuracy >= 0.5, accuracy  # chance 0.2
