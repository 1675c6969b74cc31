"""Streaming detection (runtime/stream.py, Personalizer.stream, `edgetune listen`) on a
tiny audio base: 0.25 s windows at 16 kHz -> log band energies of a fixed filterbank.
Keywords are sound patterns (a rising chirp "up", a two-tone "down"); the background
class "none" is room noise. A 20 s stream of noise and silence holds five keywords at
known times: each fires once, at its time, nowhere else."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from edgetune.errors import BadInputError, EdgetuneError
from edgetune.inputs import Preparer, known_kinds, register, unregister
from edgetune.runtime.personalizer import Personalizer
from edgetune.runtime.stream import Detector, read_raw_pcm, to_pcm

RATE = 16000
WINDOW = 4000  # 0.25 s
FRAME = 400  # 25 ms frames, 40 Hz bins
BINS = range(2, 102)  # 80 .. 4040 Hz
BANDS = 25
KEYWORD = 0.2  # seconds
NOISE = 0.02
OCCURRENCES = [("up", 2.0), ("down", 5.3), ("up", 9.1), ("down", 13.7), ("up", 17.2)]
SILENCE = (11.0, 12.0)
LENGTH = 20.0
HOP = 0.05


# -- a minimal audio preparer, for a tree without edgetune.inputs.audio -------------------
class _Clips(Preparer):
    kind = "audio"
    suffixes = frozenset({".wav"})
    noun = "audio clip"

    def prepare(self, item) -> np.ndarray:
        row = to_pcm(item)
        samples = int(self.spec["samples"])
        return np.pad(row, (0, max(0, samples - len(row))))[:samples]


@pytest.fixture(scope="module", autouse=True)
def audio_kind():
    if "audio" in known_kinds():
        yield
        return
    register("audio", _Clips)
    yield
    unregister("audio")


# -- signals ---------------------------------------------------------------------------
def keyword(name: str, seconds: float = KEYWORD) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades
    if name == "up":  # a chirp 500 -> 1500 Hz, repeated every 0.2 s if longer
        phase = 2 * np.pi * (500 * (t % KEYWORD) + 2500 * (t % KEYWORD) ** 2)
        wave = np.sin(phase)
    else:
        wave = 0.5 * (np.sin(2 * np.pi * 2500 * t) + np.sin(2 * np.pi * 3300 * t))
    return (0.3 * envelope * wave).astype(np.float32)


def noise(seconds: float, seed: int, level: float = NOISE) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * RATE))
            * level).astype(np.float32)


def place(signal: np.ndarray, clip: np.ndarray, at: float) -> None:
    start = round(at * RATE)
    signal[start:start + len(clip)] += clip[:len(signal) - start]


def long_stream(occurrences=OCCURRENCES, seconds=LENGTH, silence=SILENCE) -> np.ndarray:
    signal = noise(seconds, seed=7)
    if silence:
        signal[round(silence[0] * RATE):round(silence[1] * RATE)] = 0.0
    for name, at in occurrences:
        place(signal, keyword(name), at)
    return signal


def enrollment():
    rng = np.random.default_rng(1)
    clips, labels = [], []
    for name in ("up", "down"):
        for i in range(12):
            row = noise(WINDOW / RATE, seed=100 + i + (50 if name == "down" else 0))
            place(row, keyword(name), rng.uniform(0.0, WINDOW / RATE - KEYWORD))
            clips.append(row)
            labels.append(name)
    for i in range(16):
        clips.append(noise(WINDOW / RATE, seed=300 + i, level=rng.uniform(0.005, 0.05)))
        labels.append("none")
    return clips, labels


# -- the tiny base and a trained profile --------------------------------------------------
def filterbank_base(path):
    """float32 [N, 4000] -> 10 frames of 400 -> |DFT| at 100 bins (Hann window) -> 25
    bands -> mean over frames -> log: [N, 25]."""
    import onnx
    from onnx import helper, numpy_helper

    n = np.arange(FRAME)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / FRAME)
    bins = np.array(list(BINS))
    angle = 2 * np.pi * np.outer(n, bins) / FRAME
    dft = np.concatenate([np.cos(angle), np.sin(angle)], axis=1) * hann[:, None]
    bands = np.zeros((2 * len(bins), BANDS))
    for i in range(len(bins)):
        bands[i, i * BANDS // len(bins)] = bands[len(bins) + i, i * BANDS // len(bins)] = 1
    consts = [numpy_helper.from_array(np.array([-1, WINDOW // FRAME, FRAME], np.int64), "frames"),
              numpy_helper.from_array(dft.astype(np.float32), "dft"),
              numpy_helper.from_array(bands.astype(np.float32), "bands"),
              numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes = [helper.make_node("Reshape", ["audio", "frames"], ["framed"]),
             helper.make_node("MatMul", ["framed", "dft"], ["spectrum"]),
             helper.make_node("Mul", ["spectrum", "spectrum"], ["power"]),
             helper.make_node("MatMul", ["power", "bands"], ["banded"]),
             helper.make_node("ReduceMean", ["banded"], ["energy"], axes=[1], keepdims=0),
             helper.make_node("Add", ["energy", "eps"], ["floored"]),
             helper.make_node("Log", ["floored"], ["features"])]
    graph = helper.make_graph(
        nodes, "filterbank",
        [helper.make_tensor_value_info("audio", onnx.TensorProto.FLOAT, ["N", WINDOW])],
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", BANDS])],
        consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build_bundle(folder, audio: bool = True):
    from edgetune.converter.convert import convert

    built = convert(filterbank_base(folder / "filterbank.onnx"), "softmax", "adam",
                    classes=3, preprocess="tensor")
    if audio:
        built.manifest["input"].update({"kind": "audio", "dtype": "float32",
                                        "shape": [None, WINDOW], "sample_rate": RATE,
                                        "samples": WINDOW, "channels": 1})
    return built.save(folder / "filterbank.edgetune")


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    bundle = build_bundle(folder)
    clips, labels = enrollment()
    with Personalizer(bundle, profile=folder / "profile", threads=1) as p:
        p.add_samples(clips, labels)
        p.fit()
        assert p.trained
    return folder / "profile"


@pytest.fixture
def reader(profile):
    with Personalizer(profile=profile, read_only=True, threads=1) as p:
        yield p


def check_detections(detections, occurrences=OCCURRENCES):
    """Exactly one detection per occurrence, of its label, its window overlapping the
    keyword and starting within one window of it."""
    assert [d["label"] for d in detections] == [name for name, _ in occurrences], detections
    for d, (_, at) in zip(detections, occurrences):
        assert d["start"] < at + KEYWORD and d["end"] > at, (d, at)
        assert abs(d["start"] - at) <= WINDOW / RATE, (d, at)
        assert d["end"] - d["start"] == pytest.approx(WINDOW / RATE, abs=1e-3)
        assert 0.6 <= d["score"] <= 1.0
        assert set(d) == {"label", "score", "start", "end"}


# -- the detector ------------------------------------------------------------------------
def test_fires_once_per_keyword_at_its_time(reader):
    detector = reader.stream(long_stream(), hop=HOP)
    assert isinstance(detector, Detector)
    detections = list(detector)
    check_detections(detections)
    stats = detector.stats
    assert stats["audio_seconds"] == pytest.approx(LENGTH)
    assert stats["windows"] == pytest.approx((LENGTH - WINDOW / RATE) / HOP + 1, abs=1)
    assert 0 < stats["real_time_factor"] < 0.5


def test_noise_and_silence_alone_fire_nothing(reader):
    assert list(reader.stream(long_stream(occurrences=[]), hop=HOP)) == []
    assert list(reader.stream(np.zeros(RATE * 3, np.float32))) == []


def test_push_mode_in_odd_chunks_matches_and_memory_is_bounded(reader):
    signal = long_stream()
    detector = reader.stream(hop=HOP)
    rng = np.random.default_rng(3)
    detections, i, biggest, buffered = [], 0, 0, 0
    while i < len(signal):
        size = int(rng.choice([1, 37, 1234, 5000, 9000]))
        detections += detector.feed(signal[i:i + size])
        i += size
        biggest = max(biggest, size)
        buffered = max(buffered, len(detector._buffer))
    detections += detector.flush()
    assert detections == list(reader.stream(signal, hop=HOP))
    assert buffered < WINDOW + biggest
    with pytest.raises(EdgetuneError, match="ended"):
        detector.feed(signal[:100])


def test_int16_chunks_and_another_rate(reader):
    import soxr

    signal = long_stream()
    at_22k = soxr.resample(signal, RATE, 22050).astype(np.float32)
    pcm16 = np.round(at_22k * 32767).astype(np.int16)
    chunks = (pcm16[i:i + 2205] for i in range(0, len(pcm16), 2205))
    check_detections(list(reader.stream(chunks, rate=22050, hop=HOP)))


def test_refractory_and_one_fire_per_utterance(reader):
    twice = [("up", 3.0), ("up", 3.8)]  # 0.6 s of noise between them
    signal = long_stream(occurrences=twice, seconds=6.0, silence=None)
    assert len(list(reader.stream(signal, hop=HOP, refractory=0))) == 2
    assert len(list(reader.stream(signal, hop=HOP))) == 2  # default: one window
    once = list(reader.stream(signal, hop=HOP, refractory=1.0))
    assert [d["label"] for d in once] == ["up"] and abs(once[0]["start"] - 3.0) <= 0.25

    long = noise(4.0, seed=9)
    place(long, keyword("up", seconds=1.2), 1.5)  # one long utterance, 24 windows above
    fired = list(reader.stream(long, hop=HOP, refractory=0, smoothing=1))
    assert [d["label"] for d in fired] == ["up"]


def test_threshold_and_smoothing(reader):
    signal = long_stream()
    strict = list(reader.stream(signal, hop=HOP, threshold=1.0))
    assert strict == []  # probabilities never reach exactly 1 with noise around
    smooth = list(reader.stream(signal, hop=HOP, smoothing=5))
    check_detections(smooth)


def test_short_stream_and_tail_are_scored(reader):
    clip = noise(0.1, seed=4)
    place(clip, keyword("down", 0.08), 0.01)
    fired = list(reader.stream(clip))  # shorter than a window: one padded window
    assert [d["label"] for d in fired] == ["down"]
    assert fired[0]["start"] == 0.0 and fired[0]["end"] == pytest.approx(0.1)

    tail = noise(2.2, seed=5)
    place(tail, keyword("up"), 2.0)  # only in the padded window after the last full one
    assert list(reader.stream(tail[:RATE * 2], hop=0.25, smoothing=1)) == []
    fired = list(reader.stream(tail, hop=0.25, smoothing=1))
    assert [d["label"] for d in fired] == ["up"]
    assert fired[0]["start"] == 2.0 and fired[0]["end"] == pytest.approx(2.2)


def test_bad_options_and_non_audio_bundles(reader, tmp_path):
    for options, word in [({"hop": 0}, "hop"), ({"hop": 0.5}, "hop"),
                          ({"threshold": 1.5}, "threshold"), ({"smoothing": 0}, "smoothing"),
                          ({"refractory": -1}, "refractory"), ({"rate": 0}, "rate")]:
        with pytest.raises(BadInputError, match=word):
            reader.stream(**options)
    with pytest.raises(EdgetuneError, match="no source"):
        iter(reader.stream()).__next__()
    with pytest.raises(BadInputError, match="NaN"):
        reader.stream().feed(np.array([0.0, np.nan], np.float32))

    bundle = build_bundle(tmp_path, audio=False)
    with Personalizer(bundle, profile=tmp_path / "p") as p:
        with pytest.raises(BadInputError, match="audio bundle"):
            p.stream()


def test_files_are_read_block_by_block_and_resampled(reader, tmp_path):
    import soundfile as sf
    import soxr

    signal = long_stream()
    path = tmp_path / "kitchen.wav"
    sf.write(path, soxr.resample(signal, RATE, 44100), 44100, subtype="PCM_16")
    check_detections(list(reader.stream(path, hop=HOP)))
    with pytest.raises(BadInputError, match="does not exist"):
        list(reader.stream(tmp_path / "missing.wav"))
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(BadInputError, match="cannot be decoded"):
        list(reader.stream(tmp_path / "bad.wav"))


def test_raw_pcm_reader():
    data = np.array([0, 16384, -32768, 32767], "<i2").tobytes() + b"\x01"  # a stray byte
    chunks = list(read_raw_pcm(io.BytesIO(data), RATE, "s16", block=2 / RATE))
    assert np.concatenate(chunks).tolist() == pytest.approx([0, 0.5, -1, 32767 / 32768])
    floats = np.array([0.25, -0.5], "<f4").tobytes()
    assert np.concatenate(list(read_raw_pcm(io.BytesIO(floats), RATE, "f32"))).tolist() == \
        [0.25, -0.5]


# -- the command line ----------------------------------------------------------------------
def test_cli_listen_prints_detections(profile, tmp_path, capsys):
    import soundfile as sf

    from edgetune.cli import main

    path = tmp_path / "long.wav"
    sf.write(path, long_stream(), RATE, subtype="FLOAT")
    before = sorted(p.name for p in profile.iterdir())
    assert main(["listen", "--profile", str(profile), str(path), "--json",
                 "--hop", str(HOP)]) == 0
    result = json.loads(capsys.readouterr().out)
    check_detections(result["detections"])
    assert result["path"] == str(path)
    assert result["audio_seconds"] == pytest.approx(LENGTH)
    assert result["real_time_factor"] > 0
    assert sorted(p.name for p in profile.iterdir()) == before  # read-only

    assert main(["listen", "--profile", str(profile), str(path), "--hop", str(HOP),
                 "--threshold", "0.7"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()  # "1.90-2.15 up 0.97": start-end label score
    assert [line.split()[1] for line in lines] == [n for n, _ in OCCURRENCES]
    assert lines[0].startswith(("1.", "2.")) and "5 detections" in err

    assert main(["listen", "--profile", str(profile), str(tmp_path / "none.wav"),
                 "--json"]) == 1
    assert "does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_cli_listen_reads_raw_pcm_from_stdin(profile, monkeypatch, capsys):
    from edgetune.cli import main

    pcm = np.round(long_stream() * 32767).astype("<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    assert main(["listen", "--profile", str(profile), "-", "--rate", "16000", "--json",
                 "--hop", str(HOP)]) == 0
    result = json.loads(capsys.readouterr().out)
    check_detections(result["detections"])
    assert result["path"] == "-"


# -- real speech: the speech-embedding base, espeak-ng words, held-out voices ------------
ENROLL_VOICES = ("en+m3", "en+f2", "en-us+klatt", "en-gb-scotland+m1")
HELD_OUT_VOICES = ("en+m1", "en-us+f3", "en+f5")


def _espeak(word: str, voice: str, folder) -> np.ndarray:
    import shutil
    import subprocess

    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = folder / f"{word}-{voice.replace('+', '_')}.wav"
    if not path.is_file():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), word], check=True,
                       capture_output=True, timeout=60)
    speech, rate = sf.read(str(path), dtype="float32")
    speech = soxr.resample(speech, rate, RATE).astype(np.float32)
    return 0.5 * speech / np.abs(speech).max()


def _room(seconds: float, seed: int, level: float = 0.01) -> np.ndarray:
    """Low-passed noise (more energy low), at an RMS of `level`."""
    white = np.random.default_rng(seed).standard_normal(round(seconds * RATE))
    shaped = np.fft.irfft(np.fft.rfft(white) / np.sqrt(1 + np.arange(len(white) // 2 + 1)
                                                       / 200), len(white))
    return (shaped / shaped.std() * level).astype(np.float32)


def test_real_speech_keywords_in_a_long_recording(tmp_path):
    """Keywords of voices never enrolled fire once each, other words and noise never
    (skipped until the converter knows the speech-embedding base)."""
    from edgetune.converter.convert import convert

    try:
        built = convert("speech-embedding", "softmax", "adam", classes=3)
    except (EdgetuneError, ValueError, OSError, ImportError) as e:
        pytest.skip(f"no speech-embedding base in this tree ({e})")
    assert built.manifest["input"]["kind"] == "audio"
    samples = int(built.manifest["input"]["samples"])
    bundle = built.save(tmp_path / "speech.edgetune")

    def in_noise(speech, seed):
        clip = _room(samples / RATE, seed)
        start = (samples - len(speech)) // 2
        clip[start:start + len(speech)] += speech
        return clip

    clips, labels = [], []
    for i, voice in enumerate(ENROLL_VOICES):
        for word in ("lights", "music", "hello", "timer"):
            clips.append(in_noise(_espeak(word, voice, tmp_path), seed=10 * i + len(word)))
            labels.append(word if word in ("lights", "music") else "none")
    clips += [_room(samples / RATE, seed=500 + i, level=0.005 * (i + 1)) for i in range(6)]
    labels += ["none"] * 6

    signal = _room(22.0, seed=99)
    plan = [("lights", 0, 1.0), ("hello", 1, 4.0), ("music", 2, 7.0), ("timer", 0, 10.5),
            ("music", 1, 14.0), ("lights", 2, 18.0)]
    for word, voice, at in plan:
        speech = _espeak(word, HELD_OUT_VOICES[voice], tmp_path)
        place(signal, speech, at)
    with Personalizer(bundle, profile=tmp_path / "p", threads=1) as p:
        p.add_samples(clips, labels)
        p.fit()
        detector = p.stream(signal, hop=0.1)
        found = list(detector)
    expected = [(w, at) for w, _, at in plan if w in ("lights", "music")]
    assert [d["label"] for d in found] == [w for w, _ in expected], found
    for d, (_, at) in zip(found, expected):
        assert d["start"] <= at + 0.5 and d["end"] >= at + 0.2, (d, at)
    assert detector.stats["real_time_factor"] < 1.0
