"""The MiniLM base: the bundle's embedding equals sentence-transformers' own pipeline,
and the bundle carries the tokenizer as a hashed file."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import text_data

from edgetune.bundle import Bundle
from edgetune.converter import text as minilm_text
from edgetune.errors import BundleError
from edgetune.inputs import preparer_for

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it.",
    "Quantum computers may one day factor large numbers quickly.",
    "Nothing is certain but death and taxes.",
    "hello",
]
# Measured (L = 128): int8 cosine 0.9983..0.9997, fp32 1.0000.
MIN_COSINE = {"int8": 0.99, "fp32": 0.9999}


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_embedding_equals_sentence_transformers(tmp_path, precision):
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = minilm_text.minilm(tmp_path, precision=precision)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert session.get_outputs()[0].shape == ["N", 384]
    spec = minilm_text.text_input_section()
    preparer = preparer_for(spec, files={"tokenizer.json": minilm_text.tokenizer_json()})
    rows = preparer.batch(SENTENCES)
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    features = session.run(None, preparer.feeds(rows, inputs))[0]
    reference = minilm_text.reference_embeddings(SENTENCES)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    cosines = (features * reference).sum(axis=1)
    print(precision, "cosines", np.round(cosines, 5))
    assert cosines.min() >= MIN_COSINE[precision]
    # one text alone gives the same embedding as in a batch (padding is masked)
    alone = session.run(None, preparer.feeds(rows[-1:], inputs))[0]
    np.testing.assert_allclose(alone[0], features[-1], atol=1e-5)


def test_cached_base_is_built_once(tmp_path):
    first = minilm_text.minilm(tmp_path, max_length=64)
    stamp = first.stat().st_mtime_ns
    assert minilm_text.minilm(tmp_path, max_length=64) == first
    assert first.stat().st_mtime_ns == stamp


def test_bundle_declares_text_and_hashes_the_tokenizer(tmp_path):
    bundle = Bundle.load(text_data.text_bundle())
    spec = bundle.manifest["input"]
    assert spec["kind"] == "text" and spec["tokenizer"] == "tokenizer.json"
    assert spec["shape"] == [None, 128] and spec["dtype"] == "int64"
    assert spec["max_length"] == 128
    assert bundle.manifest["graphs"]["base"]["inputs"] == {
        spec["input_ids"]: "input_ids", spec["attention_mask"]: "attention_mask"}
    assert bundle.manifest["files"]["tokenizer"]["file"] == "tokenizer.json"
    assert bundle.manifest["features"]["shape"] == [384]
    tok = json.loads(bundle.file("tokenizer.json"))
    assert tok["truncation"]["max_length"] == 128
    # a changed tokenizer is refused like any changed file
    copy = tmp_path / "copy.edgetune"
    bundle.save(copy)
    (copy / "tokenizer.json").unlink()  # save hard-links unchanged files: replace it
    (copy / "tokenizer.json").write_bytes(b"{}")
    with pytest.raises(BundleError, match="sha256 of tokenizer.json"):
        Bundle.load(copy)


def test_text_base_options(tmp_path):
    import edgetune as et

    with pytest.raises(ValueError, match="head only"):
        et.convert(base="minilm", head="softmax", classes=2, trainable="last:1",
                   cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        et.convert(base="minilm", head="softmax", classes=2, max_length=4,
                   cache_dir=tmp_path)
    bundle = et.convert(base="minilm", head="softmax", classes=2, max_length=64,
                        cache_dir=tmp_path)
    assert bundle.manifest["input"]["shape"] == [None, 64]
