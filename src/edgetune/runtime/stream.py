"""Streaming detection: slide the base's window over a long recording or a live stream.

An audio bundle's base takes clips of a fixed length (the manifest's ``input.samples``
at ``input.sample_rate``). A :class:`Detector` cuts a stream of PCM into such windows
every ``hop`` seconds, computes their features and class scores in batches (the
profile's head once trained, else its class prototypes), averages each class's score
over the last ``smoothing`` windows and fires a detection when a class that is not
background (``background``, default ``("none",)``) crosses ``threshold``::

    with Personalizer(profile="me/", read_only=True) as p:
        for d in p.stream("kitchen.wav", threshold=0.7):
            print(d)        # {"label": "lights on", "score": 0.91, "start": 3.2, "end": 4.7}

    detector = p.stream(hop=0.1)          # live: push chunks as they arrive
    for chunk in microphone_chunks():     # float32 mono at the bundle's sample rate
        for d in detector.feed(chunk):
            act(d)
    detector.flush()                      # the end of the stream (a last padded window)

One detection per utterance: a class fires when its smoothed score crosses the
threshold and fires again only after the score has fallen below it; after a detection
nothing fires for ``refractory`` seconds (default: one window), and a crossing within
that time is not reported later either. ``start``/``end`` are the seconds (from
the stream's start) of the window that scored the class highest among the smoothed
ones; ``score`` is the smoothed score that fired.

Memory is bounded: the detector keeps less than one window of samples plus a hop and
the scores of ``smoothing`` windows, whatever the length of the stream. Files are
decoded block by block (soundfile) and resampled on the fly (soxr) when their rate is
not the bundle's. Profiles should hold a background class (noise, silence, other
speech): without one every window belongs to some keyword.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from edgetune.errors import BadInputError, EdgetuneError
from edgetune.inputs import kind_of
from edgetune.names import class_name

__all__ = ["BACKGROUND", "Detector", "read_audio_file", "read_raw_pcm", "to_pcm"]

HOP = 0.1  # seconds between window starts
SMOOTHING = 3  # windows averaged
THRESHOLD = 0.6  # smoothed score that fires
BACKGROUND = ("none",)  # classes that never fire
BATCH = 4  # windows per base call: speech_embedding is fastest at 4 (vs 8, 16) on one thread
SILENCE_DB = -50.0  # quieter windows are background, the base is not run on them
FILE_BLOCK = 1.0  # seconds decoded at a time from a file
ENCODINGS = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}


class Detector:
    """Detections in a stream of PCM (see the module docstring).

    personalizer: an open Personalizer of an audio bundle (read-only is enough).
    source: what :meth:`__iter__` reads: a file path (WAV/FLAC/OGG, any rate), a numpy
    array (one recording) or an iterable of chunks; None for push mode (:meth:`feed`,
    :meth:`flush`). rate: the sample rate of arrays and chunks (default: the bundle's;
    another rate is resampled). hop, refractory: seconds. smoothing: windows averaged.
    threshold: smoothed score (0-1] that fires. background: class names that never fire.
    silence_db: windows quieter than this (dBFS; default: the preparer's silence level)
    score as the first background class without running the base.
    """

    def __init__(self, personalizer, source=None, *, rate: int | None = None,
                 hop: float = HOP, smoothing: int = SMOOTHING, threshold: float = THRESHOLD,
                 refractory: float | None = None, background: Iterable[str] = BACKGROUND,
                 silence_db: float | None = None, batch: int = BATCH):
        spec = personalizer.bundle.manifest["input"]
        if kind_of(spec) != "audio":
            raise BadInputError(f"streaming detection needs an audio bundle (input kind "
                                f"'audio'); this profile's bundle takes {kind_of(spec)!r} "
                                f"inputs")
        self.personalizer = personalizer
        self.rate = _positive_int(spec.get("sample_rate"), "input.sample_rate")
        self.window = _positive_int(spec.get("samples") or (spec.get("shape") or [0, 0])[-1],
                                    "input.samples")
        self.source_rate = self.rate if rate is None else _positive_int(rate, "rate")
        if not (isinstance(hop, int | float) and 0 < hop <= self.window / self.rate):
            raise BadInputError(f"hop is {hop!r}; it must be > 0 and at most one window "
                                f"({self.window / self.rate:g} s)")
        self.hop = max(1, round(hop * self.rate))  # samples
        if not (isinstance(smoothing, int) and smoothing >= 1):
            raise BadInputError(f"smoothing is {smoothing!r}; it must be a whole number of "
                                f"windows, at least 1")
        if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
            raise BadInputError(f"threshold is {threshold!r}; it must be in (0, 1]")
        refractory = self.window / self.rate if refractory is None else refractory
        if not (isinstance(refractory, int | float) and refractory >= 0):
            raise BadInputError(f"refractory is {refractory!r}; it must be >= 0 seconds")
        if not (isinstance(batch, int) and batch >= 1):
            raise BadInputError(f"batch is {batch!r}; it must be at least 1")
        self.smoothing, self.threshold, self.batch = smoothing, float(threshold), batch
        if silence_db is None:  # the preparer's own level for silent enrollment clips
            silence_db = getattr(personalizer.preparer, "silence_db", SILENCE_DB)
        if not isinstance(silence_db, int | float) or np.isnan(silence_db):
            raise BadInputError(f"silence_db is {silence_db!r}; it must be a number of dBFS "
                                f"(-inf scores every window)")
        self.silence_db = float(silence_db)
        self.refractory = float(refractory)
        if isinstance(background, str):
            background = (background,)
        self.background = frozenset(class_name(b) for b in background)
        classes = personalizer.classes()
        if classes and not self.background & set(classes):
            names = ", ".join(sorted(self.background))
            warnings.warn(f"the profile has no background class ({names}); every window is "
                          f"scored as one of {', '.join(classes)}: enroll noise and other "
                          f"sounds as a background class", stacklevel=3)
        self.source = source
        self._buffer = np.zeros(0, np.float32)  # samples from absolute index _offset on
        self._offset = 0
        self._next = 0  # the absolute start of the next window
        self._recent: deque[tuple[int, dict]] = deque(maxlen=smoothing)
        self._armed: dict[str, bool] = {}
        self._last_fire: float | None = None  # seconds, when the last detection was decided
        self._resampler = None
        self._done = False
        self.samples = 0  # samples received (at the bundle's rate)
        self.windows = 0
        self.compute_seconds = 0.0  # time spent computing features and scores

    # -- push mode --
    def feed(self, chunk) -> list[dict]:
        """Take the next chunk of PCM (see :func:`to_pcm`; at ``rate``); returns the
        detections it completes, in time order."""
        if self._done:
            raise EdgetuneError("this stream has ended (flush() was called); start a new one")
        self._take(self._resample(to_pcm(chunk), last=False))
        return self._advance()

    def flush(self) -> list[dict]:
        """End the stream: score one last window, padded with silence, if the end of the
        audio is not covered yet (or the stream is shorter than one window)."""
        if self._done:
            return []
        found = []
        if self._resampler is not None:  # the resampler's last samples
            self._take(self._resample(np.zeros(0, np.float32), last=True))
            found += self._advance()
        covered = self._next - self.hop + self.window if self.windows else 0
        if self.samples > covered:
            found += self._score([self._next])
        self._done = True
        return found

    # -- pull mode --
    def __iter__(self) -> Iterator[dict]:
        if self.source is None:
            raise EdgetuneError("this detector has no source: feed() it chunks, or pass a "
                                "file, an array or an iterable of chunks")
        source, self.source = self.source, None  # one pass
        if isinstance(source, str | os.PathLike):
            self.source_rate = self.rate  # read_audio_file resamples
            chunks = read_audio_file(source, self.rate)
        elif isinstance(source, np.ndarray):
            chunks = (source[i:i + self.rate * 10] for i in range(0, max(len(source), 1),
                                                                  self.rate * 10))
        else:
            chunks = source
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.flush()

    @property
    def scores(self) -> dict[str, float]:
        """Each class's score averaged over the last `smoothing` windows: what a
        detection fires on (empty before the first window)."""
        if not self._recent:
            return {}
        labels = {c for _, s in self._recent for c in s}
        return {c: float(sum(s.get(c, 0.0) for _, s in self._recent) / len(self._recent))
                for c in labels}

    @property
    def stats(self) -> dict:
        """Audio seconds seen, windows scored, compute seconds and the real-time factor
        (compute seconds per second of audio; below 1 keeps up with a live stream)."""
        audio = self.samples / self.rate
        return {"audio_seconds": audio, "windows": self.windows,
                "compute_seconds": self.compute_seconds,
                "real_time_factor": self.compute_seconds / audio if audio else 0.0}

    # -- inside --
    def _take(self, pcm: np.ndarray) -> None:
        self.samples += len(pcm)
        self._buffer = np.concatenate([self._buffer, pcm])  # a copy: callers reuse buffers

    def _advance(self) -> list[dict]:
        """Score every window the buffer completes, ``batch`` at a time; keep only the
        samples from the next window's start on."""
        found = []
        while True:
            starts = []
            start = self._next
            end = self._offset + len(self._buffer)
            while len(starts) < self.batch and start + self.window <= end:
                starts.append(start)
                start += self.hop
            if not starts:
                break
            found += self._score(starts)
            self._next = start
        drop = min(self._next - self._offset, len(self._buffer))
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._offset += drop
        return found

    def _resample(self, pcm: np.ndarray, *, last: bool) -> np.ndarray:
        if self.source_rate == self.rate:
            return pcm
        if self._resampler is None:
            self._resampler = _resample_stream(self.source_rate, self.rate)
        return np.asarray(self._resampler.resample_chunk(pcm, last=last), np.float32)

    def _windows(self, starts: list[int]) -> list[np.ndarray]:
        rows = []
        for start in starts:
            row = self._buffer[start - self._offset:start - self._offset + self.window]
            if len(row) < self.window:  # the padded last window
                row = np.concatenate([row, np.zeros(self.window - len(row), np.float32)])
            rows.append(np.ascontiguousarray(row, np.float32))
        return rows

    def _score(self, starts: list[int]) -> list[dict]:
        """Class scores of the windows at ``starts`` (silent ones are background without
        running the base), each taken by :meth:`_decide`."""
        begun = time.perf_counter()
        rows = np.clip(np.stack(self._windows(starts)), -1.0, 1.0)
        rms = np.sqrt(np.mean(np.square(rows, dtype=np.float64), axis=1))
        loud = 20 * np.log10(np.maximum(rms, 1e-12)) >= self.silence_db
        scores: list[dict | None] = [None] * len(starts)
        if loud.any():
            p = self.personalizer  # windows are the base's input already: the preparer
            # would refuse silent or clipped ones (it judges enrollment clips)
            results = p.predict_features(p.base_features(rows[loud], self.batch))
            for i, result in zip(np.flatnonzero(loud), results):
                scores[i] = result["scores"]
        if not loud.all():
            classes = self.personalizer.classes()
            quiet = next((c for c in classes if c in self.background), None)
            silent = {c: float(c == quiet) for c in classes}
            scores = [silent if s is None else s for s in scores]
        self.compute_seconds += time.perf_counter() - begun
        self.windows += len(starts)
        found = []
        for start, window_scores in zip(starts, scores):
            detection = self._decide(start, window_scores)
            if detection is not None:
                found.append(detection)
        return found

    def _decide(self, start: int, scores: dict) -> dict | None:
        self._recent.append((start, scores))
        smoothed = self.scores
        for label, value in smoothed.items():
            if value < self.threshold:
                self._armed[label] = True
        keywords = [c for c in smoothed if c not in self.background]
        if not keywords:
            return None
        best = max(keywords, key=smoothed.__getitem__)
        now = (start + self.window) / self.rate  # when this window is complete
        quiet = self._last_fire is not None and now - self._last_fire < self.refractory - 1e-9
        if smoothed[best] < self.threshold or not self._armed.get(best, True):
            return None
        self._armed[best] = False  # an utterance heard while quiet stays unreported
        if quiet:
            return None
        self._last_fire = now
        peak = max(self._recent, key=lambda r: r[1].get(best, 0.0))[0]
        end = min(peak + self.window, max(self.samples, peak + 1))
        return {"label": best, "score": float(smoothed[best]),
                "start": round(peak / self.rate, 4), "end": round(end / self.rate, 4)}


# -- PCM ---------------------------------------------------------------------------------
def to_pcm(chunk) -> np.ndarray:
    """A chunk of audio -> float32 mono samples in [-1, 1]: float arrays are taken as
    they are, int16/int32/uint8 are scaled, 2-D ``[frames, channels]`` is averaged to
    mono, a list is read as floats."""
    array = np.asarray(chunk)
    if array.ndim == 2:
        array = array.mean(axis=1, dtype=np.float64) if array.dtype.kind == "f" else \
            _scale(array).mean(axis=1)
    if array.ndim != 1:
        raise BadInputError(f"an audio chunk is 1-D samples or [frames, channels]; got shape "
                            f"{array.shape}")
    pcm = _scale(array).astype(np.float32, copy=False)
    if not np.isfinite(pcm).all():
        raise BadInputError("an audio chunk holds NaN or infinite samples")
    return pcm


def _scale(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f":
        return array
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128) / 128
    if array.dtype.kind in "iu":
        return array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    try:
        return array.astype(np.float32)
    except (TypeError, ValueError):
        raise BadInputError(f"an audio chunk of dtype {array.dtype} is not numbers") from None


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise BadInputError(f"{name} is {value!r}; it must be a positive whole number")
    return int(value)


def _resample_stream(rate_in: int, rate_out: int):
    try:
        import soxr
    except ImportError:
        raise BadInputError(f"audio at {rate_in} Hz needs resampling to {rate_out} Hz: "
                            f"install soxr (pip install 'edgetune[audio]')") from None
    return soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")


def read_audio_file(path: str | os.PathLike, rate: int,
                    block: float = FILE_BLOCK) -> Iterator[np.ndarray]:
    """A WAV/FLAC/OGG file as float32 mono chunks of about ``block`` seconds at ``rate``
    (resampled on the fly), decoded block by block: memory does not grow with the file."""
    try:
        import soundfile
    except ImportError:
        raise BadInputError("reading audio files needs soundfile: pip install "
                            "'edgetune[audio]'") from None
    name = os.fspath(path)
    try:
        handle = soundfile.SoundFile(name)
    except (RuntimeError, OSError) as e:  # LibsndfileError is a RuntimeError
        if isinstance(e, FileNotFoundError) or not os.path.exists(name):
            raise BadInputError(f"audio file {name} does not exist") from None
        raise BadInputError(f"audio file {name} cannot be decoded ({e}); use WAV, FLAC or "
                            f"OGG") from None
    with handle:
        resampler = None if handle.samplerate == rate else \
            _resample_stream(handle.samplerate, rate)
        frames = max(1, round(block * handle.samplerate))
        try:
            for data in handle.blocks(blocksize=frames, dtype="float32", always_2d=True):
                pcm = data.mean(axis=1).astype(np.float32)
                yield pcm if resampler is None else resampler.resample_chunk(pcm, last=False)
        except RuntimeError as e:
            raise BadInputError(f"audio file {name} is damaged ({e})") from None
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def read_raw_pcm(stream: BinaryIO, rate: int, encoding: str = "s16",
                 block: float = 0.1) -> Iterator[np.ndarray]:
    """Headerless mono PCM from a binary stream (stdin), ``s16`` (16-bit little-endian
    integers) or ``f32`` (32-bit little-endian floats), as float32 chunks of about
    ``block`` seconds at its own ``rate``. A trailing partial sample is dropped."""
    if encoding not in ENCODINGS:
        raise BadInputError(f"encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    dtype = ENCODINGS[encoding]
    size = max(1, round(block * rate)) * dtype.itemsize
    pending = b""
    while True:
        data = stream.read(size)
        if not data:
            break
        data = pending + data
        usable = len(data) - len(data) % dtype.itemsize
        pending = data[usable:]
        if usable:
            yield to_pcm(np.frombuffer(data[:usable], dtype))
