"""Kind ``audio``: a clip (WAV, FLAC or OGG file, its bytes, or samples) -> one row of
PCM for an audio base: float32 ``[samples]``, mono, at the bundle's sample rate.

The manifest's input says what the base takes (docs/bundle-format.md)::

    {"kind": "audio", "name": "audio", "dtype": "float32", "shape": [null, 24000],
     "sample_rate": 16000, "samples": 24000, "layout": "[n, samples]"}

How a clip becomes that row, in order:

1. read: a path or the bytes of a WAV, FLAC or OGG (Vorbis/Opus) file (soundfile); a
   numpy array of float samples in [-1, 1] or int16 (or int32) samples, 1-D or
   ``[samples, channels]``, taken at the bundle's rate unless given as ``(array, rate)``;
2. clipping is refused: more than ``max_clipped`` (0.5 %) of the samples at full scale;
3. channels are averaged (stereo -> mono), then resampled to the bundle's rate (soxr,
   high quality);
4. fitted to ``samples``: a shorter clip is padded with zeros on both sides (centered),
   a longer one keeps the ``samples`` long stretch with the most energy (the utterance);
5. silence is refused: RMS of the fitted clip below ``silence_db`` (-50 dBFS).

No gain is applied: the base sees the level it was recorded at. soundfile and soxr are
imported on first use (``pip install 'edgetune[audio]'``), never by the runtime itself.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from edgetune.errors import BadInputError
from edgetune.inputs import Preparer, describe_input, optional_import

__all__ = ["AUDIO_EXTENSIONS", "AudioPreparer", "fit_clip", "load_audio"]

#: File suffixes read from folders (lower case).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
DEFAULT_SAMPLE_RATE = 16000
#: Clips whose fitted RMS is below this (dB relative to full scale) are silence.
DEFAULT_SILENCE_DB = -50.0
#: Clips with more than this fraction of samples at full scale are clipped.
DEFAULT_MAX_CLIPPED = 0.005
#: Longer inputs are refused before resampling (memory); 10 minutes.
DEFAULT_MAX_SECONDS = 600.0
_FULL_SCALE = 0.999
_INSTALL = "pip install 'edgetune[audio]'"


def load_audio(item, *, sample_rate: int = DEFAULT_SAMPLE_RATE,
               max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int, str]:
    """(samples, rate, name): float32 ``[frames, channels]`` in [-1, 1] as read, its
    sample rate, and a short name for messages. An array without a rate is taken at
    ``sample_rate``."""
    rate = None
    if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], np.ndarray):
        item, rate = item
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            raise BadInputError(f"(samples, rate): rate must be a number of Hz, got "
                                f"{rate!r}") from None
        if rate < 1000 or rate > 384000:
            raise BadInputError(f"(samples, rate): rate {rate} Hz is not an audio sample "
                                f"rate (1000..384000)")
    name = describe_input(item, "audio clip")
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise BadInputError(f"{name} does not exist")
        if path.is_dir():
            raise BadInputError(f"{name} is a folder, not an audio file")
        if path.stat().st_size == 0:
            raise BadInputError(f"{name} is empty (0 bytes); it is not an audio file")
        data, rate = _read_file(os.fspath(path), name, max_seconds)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise BadInputError("audio clip bytes are empty (0 bytes); pass the content of "
                                "a WAV, FLAC or OGG file")
        data, rate = _read_file(io.BytesIO(bytes(item)), name, max_seconds)
    elif isinstance(item, (np.ndarray, list)):
        data = _from_array(np.asarray(item), name)
        rate = rate or sample_rate
        if data.shape[0] > max_seconds * rate:
            raise BadInputError(f"{name}: {data.shape[0] / rate:.0f} s is longer than the "
                                f"limit of {max_seconds:.0f} s; cut the clip first")
    else:
        raise BadInputError(f"cannot read an audio clip from {name}; pass a WAV, FLAC or "
                            f"OGG file (path or bytes), or samples as a numpy array "
                            f"(float in [-1, 1] or int16), optionally as (array, rate)")
    if data.shape[0] == 0:
        raise BadInputError(f"{name} holds no samples; record a clip of about a second")
    return data, rate, name


def _read_file(source, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    sf = optional_import("soundfile", "reading audio files", _INSTALL)
    try:
        with sf.SoundFile(source) as f:
            rate = int(f.samplerate)
            if f.frames > max_seconds * rate:
                raise BadInputError(f"{name}: {f.frames / rate:.0f} s is longer than the "
                                    f"limit of {max_seconds:.0f} s; cut the clip first")
            data = f.read(dtype="float32", always_2d=True)
    except BadInputError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        if isinstance(e, MemoryError):
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BadInputError(f"{name}: not a readable audio file ({detail}); edgetune reads "
                            f"WAV, FLAC and OGG") from None
    return data, rate


def _from_array(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype == np.int32:
        a = (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif a.dtype.kind == "f":
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise BadInputError(f"{name}: samples must be finite (NaN or infinity found)")
        peak = float(np.abs(a).max()) if a.size else 0.0
        if peak > 1.0 + 1e-6:
            raise BadInputError(f"{name}: float samples must be in [-1, 1] (peak {peak:g}); "
                                f"int16 samples as floats: divide by 32768, or pass the "
                                f"int16 array itself")
    else:
        raise BadInputError(f"{name}: pass float samples in [-1, 1] or int16 samples")
    if a.ndim == 1:
        return a[:, None]
    if a.ndim == 2:
        if a.shape[1] <= 8:
            return a  # [frames, channels], as soundfile reads
        if a.shape[0] <= 8:
            return a.T  # [channels, frames]
    raise BadInputError(f"{name}: need mono samples [samples] or [samples, channels]")


def fit_clip(mono: np.ndarray, samples: int) -> np.ndarray:
    """``mono`` fitted to ``samples``: centered with zeros around a shorter clip; for a
    longer one the stretch of ``samples`` with the most energy (the first on ties)."""
    n = mono.shape[0]
    if n == samples:
        return mono.astype(np.float32)
    if n < samples:
        left = (samples - n) // 2
        out = np.zeros(samples, np.float32)
        out[left:left + n] = mono
        return out
    energy = np.concatenate([[0.0], np.cumsum(mono.astype(np.float64) ** 2)])
    window = energy[samples:] - energy[:-samples]
    start = int(np.argmax(window))
    return mono[start:start + samples].astype(np.float32)


class AudioPreparer(Preparer):
    """Kind ``audio`` (see the module docstring): a clip -> float32 ``[samples]``.

    Options: ``silence_db`` (refuse quieter clips), ``max_clipped`` (refuse clips with a
    larger fraction of samples at full scale), ``max_seconds`` (refuse longer inputs).
    """

    kind = "audio"
    suffixes = AUDIO_EXTENSIONS
    noun = "audio clip"

    def __init__(self, spec, *, silence_db: float = DEFAULT_SILENCE_DB,
                 max_clipped: float = DEFAULT_MAX_CLIPPED,
                 max_seconds: float = DEFAULT_MAX_SECONDS, **options):
        super().__init__(spec, **options)
        self.sample_rate = int(self.spec.get("sample_rate") or DEFAULT_SAMPLE_RATE)
        samples = self.spec.get("samples")
        if samples is None and len(self.shape) == 1 and isinstance(self.shape[0], int):
            samples = self.shape[0]
        #: The clip length the base takes, or None for a base without a fixed length.
        self.samples: int | None = int(samples) if samples else None
        self.silence_db = float(silence_db)
        self.max_clipped = float(max_clipped)
        self.max_seconds = float(max_seconds)

    def prepare(self, item) -> np.ndarray:
        data, rate, name = load_audio(item, sample_rate=self.sample_rate,
                                      max_seconds=self.max_seconds)
        clipped = float(np.mean(np.abs(data) >= _FULL_SCALE))
        if clipped > self.max_clipped:
            raise BadInputError(
                f"{name} is clipped: {clipped:.1%} of its samples are at full scale; "
                f"record it again with a lower input gain (or further from the microphone)")
        mono = data.mean(axis=1, dtype=np.float32)
        if rate != self.sample_rate:
            soxr = optional_import("soxr", "resampling audio", _INSTALL)
            mono = soxr.resample(mono, rate, self.sample_rate, quality="HQ")
            mono = np.asarray(mono, np.float32)
        if self.samples is None:
            raise BadInputError(
                f"this bundle's audio input {self.name!r} has shape {self.spec.get('shape')}; "
                f"clips need a fixed [null, samples]: rebuild the bundle from a base with a "
                f"fixed clip length")
        row = fit_clip(mono, self.samples)
        rms = float(np.sqrt(np.mean(row.astype(np.float64) ** 2)))
        level = 20 * np.log10(max(rms, 1e-12))
        if level < self.silence_db:
            raise BadInputError(
                f"{name} is silent: its level is {level:.0f} dBFS, below {self.silence_db:.0f} "
                f"dBFS; speak closer to the microphone or check that it records")
        return np.clip(row, -1.0, 1.0).astype(np.float32)

    def check(self, item) -> None:
        self.prepare(item)

    def __repr__(self) -> str:
        return (f"AudioPreparer(name={self.name!r}, samples={self.samples}, "
                f"sample_rate={self.sample_rate})")
