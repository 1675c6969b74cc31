"""Real synthesized speech for the speech tests: words spoken by espeak-ng and flite.

espeak-ng writes 22.05 kHz mono WAV, flite 16 kHz (slt, rms, awb) or 8 kHz (kal); the
clips are kept at their own rates, so the tests exercise the preparer's resampling.
Room noise (pink-ish, seeded) is mixed in at a given signal-to-noise ratio. Clips are
written once per directory (a session's tmp dir) and reused.

    clip = speak("lights", "en+m3", folder)                  # Path of a WAV file
    paths = corpus(folder, WORDS, VOICES_A, snr_db=20)       # {(word, voice): Path}
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

WORDS = ("lights", "music", "weather", "stop")
MORE_WORDS = ("lights", "music", "weather", "stop", "timer", "hello", "yes", "no",
              "volume", "kitchen")
# (engine, voice, words per minute, pitch 0..99). Two disjoint sets of voices: the
# enrollment voices (A) and the held-out voices (B).
VOICES_A = (("espeak", "en+m3", 150, 40), ("espeak", "en+f2", 170, 60),
            ("espeak", "en-us+klatt", 140, 50), ("flite", "slt", 0, 0),
            ("espeak", "en-gb-scotland+m1", 160, 45), ("espeak", "en-us+f4", 150, 70))
VOICES_B = (("espeak", "en+m1", 165, 35), ("espeak", "en-us+f3", 145, 65),
            ("flite", "rms", 0, 0), ("espeak", "en-gb-x-rp+m5", 155, 50),
            ("flite", "awb", 0, 0), ("espeak", "en+f5", 175, 55))


def available() -> str | None:
    """None when espeak-ng and flite are installed, else what is missing."""
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (apt-get install espeak-ng flite)" \
        if missing else None


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    return data, rate


def _noise(n: int, seed: int) -> np.ndarray:
    """Room-like noise: white noise through a one-pole low-pass (more energy low)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(n + 64)
    out = np.empty_like(white)
    acc = 0.0
    for i, v in enumerate(white):  # small n (a few 10k): fine
        acc = 0.97 * acc + v
        out[i] = acc
    out = out[64:] - out[64:].mean()
    return (out / (out.std() + 1e-12)).astype(np.float32)


def speak(word: str, voice: tuple, folder: Path, *, snr_db: float | None = 20.0,
          seed: int = 0) -> Path:
    """A WAV file of `word` spoken by `voice` (an entry of VOICES_A/B), with room noise
    at `snr_db` (None: clean), padded with 0.3 s of noise before and after."""
    import soundfile as sf

    engine, name, speed, pitch = voice
    key = hashlib.sha1(repr((word, voice, snr_db, seed)).encode()).hexdigest()[:12]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{word}-{name.replace('+', '_')}-{key}.wav"
    if out.is_file():
        return out
    raw = folder / f".raw-{key}.wav"
    if engine == "espeak":
        cmd = ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word]
    else:
        cmd = ["flite", "-voice", name, "-t", word, "-o", str(raw)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    speech, rate = _read_wav(raw)
    raw.unlink()
    if speech.ndim > 1:
        speech = speech.mean(axis=1)
    pad = np.zeros(int(0.3 * rate), np.float32)
    signal = np.concatenate([pad, speech, pad]).astype(np.float32)
    peak = np.abs(signal).max()
    signal *= 0.5 / max(peak, 1e-6)
    if snr_db is not None:
        voiced = signal[np.abs(signal) > 0.02]
        power = float(np.mean(voiced ** 2)) if voiced.size else 1e-4
        noise = _noise(len(signal), int(key[:8], 16) + seed)
        signal = signal + noise * np.sqrt(power / 10 ** (snr_db / 10))
    signal = np.clip(signal, -0.99, 0.99)
    sf.write(str(out), signal, rate, subtype="PCM_16")
    return out


def corpus(folder: Path, words=WORDS, voices=VOICES_A, *, snr_db: float | None = 20.0,
           seed: int = 0) -> dict[tuple[str, tuple], Path]:
    """Every word spoken by every voice: {(word, voice): path}."""
    return {(w, v): speak(w, v, folder, snr_db=snr_db, seed=seed)
            for w in words for v in voices}


def class_folder(root: Path, clips: dict[tuple[str, tuple], Path]) -> Path:
    """A folder of class folders, root/<word>/<clip>.wav, holding copies of `clips`."""
    for (word, _), path in clips.items():
        (root / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / word / path.name)
    return root


# -- one cache per test process (shared by the test modules) ----------------------------
_SESSION: dict[str, object] = {}


def session_dir() -> Path:
    """A temporary folder for this process's clips and bundles (removed at exit)."""
    if "dir" not in _SESSION:
        import atexit
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="edgetune-speech-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _SESSION["dir"] = path
    return _SESSION["dir"]


def skip_reason() -> str | None:
    """Why the speech tests cannot run here (None: they can)."""
    import importlib.util

    missing = available()
    if missing:
        return missing
    for module in ("soundfile", "soxr", "livekit.wakeword"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed (pip install -e '.[build,audio]')"
    return None


def enroll_clips() -> dict:
    """4 words x 6 voices (A), 10 dB SNR room noise: {(word, voice): path}."""
    return corpus(session_dir() / "clips", WORDS, VOICES_A, snr_db=10)


def heldout_clips() -> dict:
    """The same 4 words by 6 other voices (B)."""
    return corpus(session_dir() / "clips", WORDS, VOICES_B, snr_db=10)


def speech_bundle() -> Path:
    """The speech-embedding bundle with a softmax head, built once per process."""
    if "bundle" not in _SESSION:
        import edgetune as et

        path = session_dir() / "speech.edgetune"
        et.convert(base="speech-embedding", head="softmax", classes=len(WORDS)).save(path)
        _SESSION["bundle"] = path
    return _SESSION["bundle"]
