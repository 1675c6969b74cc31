"""The speech-embedding base: the two shipped models (mel + embedding) chained into one
graph equal running them step by step; the bundle's manifest says kind "audio"; an ONNX
file taking PCM becomes an audio base when asked (preprocess="audio")."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import speech_synth as synth

pytestmark = pytest.mark.skipif(synth.skip_reason() is not None,
                                reason=str(synth.skip_reason()))


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _clips(n: int = 6) -> np.ndarray:
    """Prepared PCM of real synthesized words, plus one far quieter than the others (the
    shipped mel graph clamps at 80 dB below the batch's max: the chain clamps per clip)."""
    from edgetune.inputs.audio import AudioPreparer

    preparer = AudioPreparer({"kind": "audio", "name": "audio", "shape": [None, 24000],
                              "sample_rate": 16000, "samples": 24000})
    paths = list(synth.enroll_clips().values())[:n]
    rows = np.stack([preparer.prepare(p) for p in paths])
    rows[-1] *= 0.01
    return rows


@pytest.mark.parametrize("pooling,int16", [("mean", False), ("mean+max", True)])
def test_chained_base_equals_the_two_shipped_models(tmp_path, pooling, int16):
    from edgetune.converter.speech import build_speech_embedding, two_model_pipeline

    path = build_speech_embedding(tmp_path / "base.onnx", pooling=pooling, int16_scale=int16)
    model = onnx.load(str(path))
    from edgetune.autodiff.builder import IR_VERSION, OPSET

    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    audio = _clips()
    chained = _session(path).run(None, {"audio": audio})[0]
    reference = two_model_pipeline(audio, pooling=pooling, int16_scale=int16)
    assert chained.shape == (len(audio), 96 * (2 if pooling == "mean+max" else 1))
    np.testing.assert_allclose(chained, reference, rtol=1e-4, atol=1e-4)
    # one clip alone gives its row of the batch: nothing mixes the clips
    alone = _session(path).run(None, {"audio": audio[-1:]})[0]
    np.testing.assert_allclose(alone[0], chained[-1], rtol=1e-4, atol=1e-4)


def test_window_arithmetic():
    from edgetune.converter.speech import frames_of, windows_of

    assert frames_of(24000) == 147 and windows_of(24000) == 9
    assert windows_of(512 + 75 * 160) == 1 and windows_of(512 + 75 * 160 - 1) == 0


def test_cached_base_is_built_once(tmp_path):
    from edgetune.converter.speech import speech_embedding

    first = speech_embedding(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert speech_embedding(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left


def test_bundle_manifest_declares_audio():
    from edgetune.bundle import Bundle

    bundle = Bundle.load(synth.speech_bundle())
    assert bundle.manifest["input"] == {
        "kind": "audio", "name": "audio", "dtype": "float32", "shape": [None, 24000],
        "sample_rate": 16000, "samples": 24000, "channels": 1, "layout": "[n, samples]"}
    assert bundle.manifest["features"] == {"shape": [96], "dtype": "float32"}
    assert bundle.manifest["base"] == "speech-embedding"


def test_onnx_file_base_becomes_audio_when_asked(tmp_path):
    from edgetune.converter.convert import convert
    from edgetune.converter.speech import build_speech_embedding

    path = build_speech_embedding(tmp_path / "pcm.onnx")
    assert convert(path, "softmax", classes=2).manifest["input"]["kind"] == "tensor"
    section = convert(path, "softmax", classes=2, preprocess="audio:8000").manifest["input"]
    assert section["kind"] == "audio" and section["sample_rate"] == 8000
    assert section["shape"] == [None, 24000] and section["samples"] == 24000


def test_audio_preprocess_needs_float_pcm_of_fixed_length(tmp_path):
    from onnx import TensorProto, helper

    from edgetune.converter.convert import convert

    def base(dims, elem=TensorProto.FLOAT):
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["y"], axes=[1], keepdims=1)], "g",
            [helper.make_tensor_value_info("x", elem, dims)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    with pytest.raises(ValueError, match="fixed number of samples"):
        convert(base(["N", "samples"]), "softmax", classes=2, preprocess="audio")
    with pytest.raises(ValueError, match="float32"):
        convert(base(["N", 100], TensorProto.INT16), "softmax", classes=2, preprocess="audio")
    with pytest.raises(ValueError, match="sample rate"):
        convert(base(["N", 100]), "softmax", classes=2, preprocess="audio:fast")
