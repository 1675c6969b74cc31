"""The audio preparer (kind "audio"): real synthesized words (espeak-ng writes 22.05 kHz)
become 1.5 s of 16 kHz mono PCM; files, bytes and arrays agree; silence and clipping are
refused naming the input and the fix; the runtime never imports the audio libraries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import speech_synth as synth

from edgetune.errors import BadInputError
from edgetune.inputs import preparer_for

pytestmark = pytest.mark.skipif(synth.skip_reason() is not None,
                                reason=str(synth.skip_reason()))

SPEC = {"kind": "audio", "name": "audio", "dtype": "float32", "shape": [None, 24000],
        "sample_rate": 16000, "samples": 24000, "layout": "[n, samples]"}


@pytest.fixture(scope="module")
def preparer():
    return preparer_for(SPEC, min_image_size=16)  # image options are ignored


@pytest.fixture(scope="module")
def espeak_clip():
    """A real word from espeak-ng (22.05 kHz), as written."""
    return synth.speak("weather", synth.VOICES_A[0], synth.session_dir() / "clips")


def test_kind_and_folder_suffixes(preparer):
    assert preparer.kind == "audio" and preparer.noun == "audio clip"
    assert preparer.suffixes == {".wav", ".flac", ".ogg"}
    assert preparer.samples == 24000 and preparer.sample_rate == 16000


def test_espeak_clip_is_resampled_from_22050(preparer, espeak_clip):
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(espeak_clip), dtype="float32")
    assert rate == 22050
    row = preparer.prepare(espeak_clip)
    assert row.shape == (24000,) and row.dtype == np.float32
    expected = soxr.resample(data, 22050, 16000, quality="HQ")
    # shorter than 1.5 s: centered in zeros
    assert len(expected) < 24000
    left = (24000 - len(expected)) // 2
    np.testing.assert_allclose(row[left:left + len(expected)], expected, atol=1e-6)
    assert not row[:left].any() and not row[left + len(expected):].any()


def test_resampling_keeps_the_pitch(preparer):
    rate, seconds, tone = 22050, 1.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    row = preparer.prepare((0.3 * np.sin(2 * np.pi * tone * t), rate))
    spectrum = np.abs(np.fft.rfft(row))
    assert abs(np.argmax(spectrum) * 16000 / len(row) - tone) < 2


def test_files_bytes_arrays_and_stereo_agree(preparer, espeak_clip, tmp_path):
    import soundfile as sf

    data, rate = sf.read(str(espeak_clip), dtype="int16")
    from_file = preparer.prepare(espeak_clip)
    np.testing.assert_array_equal(preparer.prepare(espeak_clip.read_bytes()), from_file)
    np.testing.assert_allclose(preparer.prepare((data, rate)), from_file, atol=1e-6)
    np.testing.assert_allclose(preparer.prepare((data / 32768.0, rate)), from_file, atol=1e-6)
    for fmt in ("FLAC", "OGG"):
        path = tmp_path / f"clip.{fmt.lower()}"
        sf.write(str(path), data, rate, format=fmt)
        tolerance = 1e-6 if fmt == "FLAC" else 0.05  # Vorbis is lossy
        np.testing.assert_allclose(preparer.prepare(path), from_file, atol=tolerance)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.stack([data, data], axis=1), rate, subtype="PCM_16")
    np.testing.assert_allclose(preparer.prepare(stereo), from_file, atol=1e-6)
    # left and right differ: the mean of the two
    quiet = np.stack([data, np.zeros_like(data)], axis=1)
    np.testing.assert_allclose(preparer.prepare((quiet, rate)), from_file / 2, atol=1e-5)
    # an array without a rate is at the bundle's rate: no resampling
    pcm = preparer.prepare(espeak_clip)
    np.testing.assert_array_equal(preparer.prepare(pcm), pcm)
    assert preparer.batch([espeak_clip, pcm]).shape == (2, 24000)


def test_long_clip_keeps_the_loudest_stretch(preparer, espeak_clip):
    word = preparer.prepare(espeak_clip)
    start = np.flatnonzero(word)[0]
    spoken = word[start:np.flatnonzero(word)[-1] + 1]
    rng = np.random.default_rng(0)
    long = (0.003 * rng.standard_normal(16000 * 5)).astype(np.float32)  # 5 s of room
    long[50000:50000 + len(spoken)] += spoken
    row = preparer.prepare(long)
    assert row.shape == (24000,)
    # the whole word is inside the kept window
    offset = 50000 - (np.flatnonzero(np.isin(long, row[:10]))[0])
    assert 0 <= offset and offset + len(spoken) <= 24000
    np.testing.assert_allclose(row[offset:offset + len(spoken)],
                               long[50000:50000 + len(spoken)], atol=1e-7)


def test_silence_is_refused(preparer, tmp_path):
    import soundfile as sf

    path = tmp_path / "quiet.wav"
    rng = np.random.default_rng(1)
    sf.write(str(path), 1e-4 * rng.standard_normal(16000), 16000)
    with pytest.raises(BadInputError, match=r"audio clip file .*quiet\.wav is silent: .* "
                                            r"dBFS.*speak closer to the microphone"):
        preparer.prepare(path)
    with pytest.raises(BadInputError, match="is silent"):
        preparer.prepare(np.zeros(24000, np.float32))


def test_clipping_is_refused(preparer, espeak_clip):
    import soundfile as sf

    data, rate = sf.read(str(espeak_clip), dtype="float32")
    loud = np.clip(data * 20, -1, 1)
    with pytest.raises(BadInputError, match=r"is clipped: .*% of its samples are at full "
                                            r"scale; record it again with a lower input gain"):
        preparer.prepare((loud, rate))
    int16 = (np.clip(data * 20, -1, 1) * 32767).astype(np.int16)
    with pytest.raises(BadInputError, match="is clipped"):
        preparer.prepare((int16, rate))
    # one peak at full scale is not clipping
    peak = data / np.abs(data).max()
    assert preparer.prepare((peak, rate)).shape == (24000,)


@pytest.mark.parametrize("item,message", [
    (b"", "bytes are empty"),
    (b"RIFF....not audio at all", "not a readable audio file"),
    ("missing.wav", "does not exist"),
    (np.zeros((0,), np.float32), "holds no samples"),
    (np.full(100, 3.0, np.float32), r"must be in \[-1, 1\].*divide by 32768"),
    (np.zeros(100, np.uint8), "float samples in"),
    ((np.zeros(100, np.float32), "fast"), "rate must be a number"),
    (3.5, "cannot read an audio clip"),
])
def test_bad_inputs_name_the_problem(preparer, item, message):
    with pytest.raises(BadInputError, match=message):
        preparer.prepare(item)


def test_missing_soundfile_names_the_extra(preparer, espeak_clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(BadInputError, match=r"pip install 'edgetune\[audio\]'"):
        preparer.prepare(espeak_clip)


def test_class_folders_list_audio_files(preparer, tmp_path, espeak_clip):
    import shutil

    (tmp_path / "weather").mkdir()
    shutil.copy(espeak_clip, tmp_path / "weather" / "a.wav")
    (tmp_path / "weather" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="notes.txt"):
        pairs = preparer.list_folder(tmp_path)
    assert pairs == [(tmp_path / "weather" / "a.wav", "weather")]


def test_runtime_does_not_import_audio_libraries():
    code = ("import sys, edgetune.runtime, edgetune.inputs, edgetune.bundle; "
            "from edgetune.inputs import preparer_for; "
            "preparer_for({'kind': 'image', 'name': 'image', 'dtype': 'uint8', "
            "'shape': [None, 8, 8, 3]}); "
            "print(sorted(m for m in ('soundfile', 'soxr', 'edgetune.inputs.audio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
