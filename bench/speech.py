"""Speech keywords and a wake word on the speech-embedding base (issue #13), in one run.

1. Keyword accuracy: 10 words (tests/speech/speech_synth.py MORE_WORDS) enrolled with 3,
   5 and 10 utterances per word by enrollment voices, tested on voices never enrolled.
   edgetune's softmax head (`Personalizer.fit()` defaults) against scikit-learn
   LogisticRegression on the same features and against the prototype head (`predict`
   before training). Several random draws of the enrollment utterances per size.
2. Wake word "hey jarvis" + a background class "none" (room noise and other speech):
   the streaming Detector over an hour of negative audio (false accepts per hour) and
   over a stream of keyword occurrences by held-out voices (detection rate), threshold
   swept; the detection rate at 0.5 false accepts per hour.
3. Time and peak memory to personalize the wake word from raw PCM (base features of the
   enrollment clips + training the head), edgetune against PyTorch eager on the same
   embedding (run by onnxruntime in both: there is no offline ONNX -> torch converter),
   each in a fresh subprocess.
4. Real-time factor of streaming detection on one core at hops 0.1 and 0.25 s.

Speech is synthesized with espeak-ng (voice variants, speed and pitch varied) and flite
(its voices; speed varied by resampling), mixed with room noise. Negative speech is
sentences from Debian's fortunes files. Needs, for this benchmark only (the tests need
espeak-ng and flite only): `apt-get install -y espeak-ng flite fortunes fortunes-min`,
and the venv's soundfile, soxr, scipy, scikit-learn, torch. Generated audio is cached
in $EDGETUNE_BENCH_CACHE (default /tmp/edgetune-cache)/speech.

    .venv/bin/python bench/speech.py            # writes the section of BENCHMARKS.md
    .venv/bin/python bench/speech.py --no-write
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # a child's clock starts before any import it pays for

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from common import (  # noqa: E402
    BENCHMARKS,
    ROOT,
    machine,
    median_best,
    memory_mib,
    personalize_phases,
    revision,
    wait_quiet,
    write_section,
)

HEADING = "## Speech: keywords and a wake word"
CACHE = Path(os.environ.get("EDGETUNE_BENCH_CACHE", "/tmp/edgetune-cache")) / "speech"
RATE = 16000
WAKE = "hey jarvis"
FORTUNES = Path("/usr/share/games/fortunes")

# Voices: (engine, name). Enrollment and test voices share no espeak-ng variant and no
# flite voice.
ENROLL_VOICES = [("espeak", v) for v in ("en+m3", "en+f2", "en-us+klatt", "en-gb-scotland+m1",
                                         "en-us+f4", "en+m2", "en-us+f1", "en+klatt2")] + \
    [("flite", "slt"), ("flite", "kal")]
TEST_VOICES = [("espeak", v) for v in ("en+m1", "en-us+f3", "en-gb-x-rp+m5", "en+f5",
                                       "en-us+m4", "en-gb+klatt3", "en+m7", "en-us+steph")] + \
    [("flite", "rms"), ("flite", "awb")]
POOL = 15  # enrollment utterances per word to draw from
TEST_PER_WORD = 20  # 2 per test voice
SIZES = (3, 5, 10)
DRAWS = 5
WAKE_SIZES = (3, 5, 10)
NONE_NOISE, NONE_SPEECH = 20, 30
HOP = 0.25  # the wake-word streams
OCCURRENCES = 60
SEGMENT = 8.0  # seconds of stream per occurrence
TARGET_FA = 0.5
THRESHOLDS = sorted({round(float(t), 4) for t in
                     [*[0.3 + 0.05 * i for i in range(12)], *[0.9 + 0.01 * i for i in range(9)],
                      0.99, 0.995, 0.998, 0.999, 1.0]})
REPEATS = 5  # personalization runs per pipeline
RTF_SECONDS = 60.0
RTF_REPEATS = 3
SPEECH_SECONDS = 600  # distinct negative speech


# -- synthesis ----------------------------------------------------------------------------
def _synth():
    sys.path.insert(0, str(ROOT / "tests" / "speech"))
    import speech_synth

    return speech_synth


def _voice(engine: str, name: str, rng) -> tuple:
    if engine == "flite":
        return ("flite", name, 0, 0)
    return ("espeak", name, int(rng.integers(125, 190)), int(rng.integers(25, 76)))


def _at_rate(data, rate: int, speed: float):
    """Samples at `rate` -> 16 kHz, `speed` times faster (pitch moves with it)."""
    import numpy as np
    import soxr

    if data.ndim > 1:
        data = data.mean(axis=1)
    return np.asarray(soxr.resample(data.astype(np.float32), rate, round(RATE / speed)),
                      np.float32)


def utterance(text: str, voice: tuple, rng, *, snr_db: float | None, seed: int):
    """`text` spoken by `voice` (jittered), room noise at `snr_db`, speed 0.9-1.1: 16 kHz."""
    import soundfile as sf

    path = _synth().speak(text, voice, CACHE / "clips", snr_db=snr_db, seed=seed)
    data, rate = sf.read(str(path), dtype="float32")
    import numpy as np

    return np.clip(_at_rate(data, rate, float(rng.uniform(0.9, 1.1))), -0.99, 0.99)


def sentence_audio(text: str, voice: tuple, index: int):
    """A sentence spoken by `voice`, clean, 16 kHz (cached as WAV)."""
    import hashlib

    import soundfile as sf

    key = hashlib.sha1(repr((text, voice)).encode()).hexdigest()[:16]
    out = CACHE / "sentences" / f"{index:04d}-{key}.wav"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        raw = out.with_suffix(".raw.wav")
        engine, name, speed, pitch = voice
        cmd = (["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", str(raw),
                "--stdin"] if engine == "espeak" else
               ["flite", "-voice", name, "-t", text, "-o", str(raw)])
        subprocess.run(cmd, input=text, text=True, check=True, capture_output=True, timeout=120)
        data, rate = sf.read(str(raw), dtype="float32")
        raw.unlink()
        sf.write(str(out), _at_rate(data, rate, 1.0), RATE, subtype="PCM_16")
    data, _ = sf.read(str(out), dtype="float32")
    return data


def noise(n: int, rng, kind: str):
    """Unit-variance noise: room (low-passed), fan (pink-ish), white, hum (mains + room)."""
    import numpy as np
    from scipy.signal import lfilter

    white = rng.standard_normal(n + 512)
    if kind == "room":
        out = lfilter([1.0], [1.0, -0.97], white)
    elif kind == "fan":
        out = lfilter([1.0], [1.0, -0.7], white)
    elif kind == "hum":
        t = np.arange(n + 512) / RATE
        out = lfilter([1.0], [1.0, -0.97], white)
        out = out / out.std() + 2 * np.sin(2 * np.pi * 50 * t) + np.sin(2 * np.pi * 150 * t)
    else:
        out = white
    out = out[512:] - out[512:].mean()
    return (out / (out.std() + 1e-12)).astype(np.float32)


NOISE_KINDS = ("room", "fan", "white", "hum")


def rms(x) -> float:
    import numpy as np

    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def fortune_sentences(rng) -> list[str]:
    import re

    texts = []
    for path in sorted(FORTUNES.glob("*")):
        if path.suffix or not path.is_file():  # skip *.dat, *.u8
            continue
        for entry in path.read_text(errors="ignore").split("\n%\n"):
            text = " ".join(entry.split())
            words = text.split()
            if not 4 <= len(words) <= 30 or not re.fullmatch(r"[A-Za-z ,.;:'!?\-]+", text):
                continue
            if "jarvis" in text.lower():
                continue
            texts.append(text)
    texts = sorted(set(texts))
    rng.shuffle(texts)
    return texts


def negative_hour(sentences: list[str], rng):
    """>= 1 h of 16 kHz audio without the wake word: ~11 min of distinct sentences
    (espeak-ng and flite, all voices) with 0.2-1.5 s pauses, played 6 times at other
    speeds, gains and noises (one with overlapping babble), 30 s of noise between plays."""
    import numpy as np

    path = CACHE / "negative-hour.npy"
    meta = CACHE / "negative-hour.json"
    if path.is_file() and meta.is_file():
        return np.load(path, mmap_mode="r"), json.loads(meta.read_text())
    begun = time.perf_counter()
    voices = ENROLL_VOICES + TEST_VOICES
    parts, total, used = [], 0, 0
    while total < SPEECH_SECONDS * RATE:  # 10 min of speech
        text = sentences[used]
        speech = sentence_audio(text, _voice(*voices[used % len(voices)], rng), used)
        used += 1
        if len(speech) < RATE // 2:
            continue
        speech = speech * (0.3 / max(rms(speech), 1e-6) * 0.1)  # -20 dBFS-ish
        parts += [speech, np.zeros(int(rng.uniform(0.2, 1.5) * RATE), np.float32)]
        total += len(speech)
    track = np.concatenate(parts)
    synth_seconds = time.perf_counter() - begun
    plays = [(1.0, -26, "room", 20), (0.92, -32, "fan", 10), (1.08, -20, "white", 15),
             (0.96, -30, "hum", 5), (1.04, -24, "room", 0), (1.0, -28, "fan", 10)]
    hour = []
    for i, (speed, level, kind, snr) in enumerate(plays):
        speech = _at_rate(track, RATE, speed) if speed != 1.0 else track.copy()
        speech *= 10 ** (level / 20) / max(rms(speech), 1e-9)
        if i == len(plays) - 1:  # babble: the track again, shifted, 10 dB down
            other = np.roll(track, len(track) // 3)[:len(speech)]
            speech = speech + other * (0.3 * rms(speech) / max(rms(other), 1e-9))
        level_noise = rms(speech) / 10 ** (snr / 20)
        hour.append(speech + noise(len(speech), rng, kind) * level_noise)
        hour.append(noise(30 * RATE, rng, NOISE_KINDS[i % 4]) * level_noise * 2)
    audio = np.clip(np.concatenate(hour), -1, 1).astype(np.float32)
    info = {"distinct_speech_s": total / RATE, "sentences": used,
            "track_s": len(track) / RATE, "seconds": len(audio) / RATE,
            "synth_seconds": synth_seconds, "build_seconds": time.perf_counter() - begun}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, audio)
    meta.write_text(json.dumps(info))
    return np.load(path, mmap_mode="r"), info


# -- the children -------------------------------------------------------------------------
def child_record(args) -> None:
    """Run the Detector over a slice of an .npy stream; save each window's features."""
    import numpy as np

    from edgetune.runtime.personalizer import Personalizer

    audio = np.load(args.audio, mmap_mode="r")[args.start:args.end]
    p = Personalizer(profile=args.profile, read_only=True, threads=1)
    feats, keep, ref = [], [], {}
    predict = p.predict_features

    def recording(x, open_set=None):
        results = predict(x)
        for row, r in zip(np.asarray(x), results):
            ref[id(r["scores"])] = len(feats)
            feats.append(row)
            keep.append(r["scores"])
        return results

    p.predict_features = recording
    detector = p.stream(hop=args.hop, threshold=1.0)
    windows = []
    decide = detector._decide

    def recorded(start, scores):
        windows.append((start, ref.get(id(scores), -1)))
        keep.append(scores)
        return decide(start, scores)

    detector._decide = recorded
    for i in range(0, len(audio), RATE):
        detector.feed(np.asarray(audio[i:i + RATE]))
    detector.flush()
    starts, index = (np.array(c, np.int64) for c in zip(*windows))
    np.savez(args.out, starts=starts, index=index,
             feats=np.array(feats, np.float32).reshape(-1, 96), **detector.stats)
    p.close()


def child_rtf(args) -> None:
    """Detector.stats real-time factor over RTF_SECONDS of the negative stream, one core."""
    import numpy as np

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    audio_seconds = args.end / RATE if args.end else RTF_SECONDS
    from edgetune.runtime.personalizer import Personalizer

    audio = np.asarray(np.load(args.audio, mmap_mode="r")[:int(audio_seconds * RATE)])
    with Personalizer(profile=args.profile, read_only=True, threads=1) as p:
        detector = p.stream(hop=args.hop)
        for i in range(0, len(audio), 1600):  # 0.1 s chunks, as a microphone delivers
            detector.feed(audio[i:i + 1600])
        detector.flush()
        print(json.dumps(detector.stats))


def child_personalize(args) -> None:
    """One pipeline, from [n, 24000] PCM in an .npy to a trained head; JSON to stdout."""
    phases = {}

    def mark(name):
        phases[name] = {"t": time.perf_counter() - T0, **memory_mib()}

    import numpy as np

    data = json.loads(Path(args.data).read_text())
    if args.pipeline == "edgetune":
        from edgetune.runtime.personalizer import Personalizer

        mark("imports")
        pcm = np.load(data["pcm"])
        p = Personalizer(data["bundle"], args.profile, threads=1)
        p._sessions.base()
        mark("model load")
        p.add_samples(list(pcm), data["labels"])
        mark("features")
        records = p.fit()
        mark("training")
        epochs = sum(1 for r in records if "epoch" in r and "event" not in r)
        p.close()
    else:
        import onnxruntime as ort
        import torch

        mark("imports")
        torch.set_num_threads(1)
        pcm = np.load(data["pcm"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(data["base"], options, providers=["CPUExecutionProvider"])
        mark("model load")
        name = session.get_inputs()[0].name
        feats = np.concatenate([session.run(None, {name: pcm[i:i + 4]})[0]
                                for i in range(0, len(pcm), 4)])
        mark("features")
        classes = sorted(set(data["labels"]))
        y = torch.tensor([classes.index(label) for label in data["labels"]])
        x = torch.from_numpy(feats)
        counts = torch.bincount(y).float()
        head = torch.nn.Linear(x.shape[1], len(classes))
        optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
        loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(classes) * counts))
        generator = torch.Generator().manual_seed(0)
        epochs = args.epochs
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(32):
                optimizer.zero_grad()
                loss_fn(head(x[batch]), y[batch]).backward()
                optimizer.step()
        mark("training")
        # Again in the same process: the first torch.optim.Adam() step pays one-time lazy
        # imports (torch._dynamo); not part of the pipeline's figures above.
        head = torch.nn.Linear(x.shape[1], len(classes))
        optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
        warm = time.perf_counter()
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(32):
                optimizer.zero_grad()
                loss_fn(head(x[batch]), y[batch]).backward()
                optimizer.step()
        phases["warm_training"] = time.perf_counter() - warm
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"phases": phases, "epochs": epochs, "peak_mib": memory_mib()["VmHWM"],
                      "cpu": usage.ru_utime + usage.ru_stime}))


# -- the parent ---------------------------------------------------------------------------
def run_child(*argv: str, env_threads: bool = True) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS="1") if env_threads else None
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def keyword_accuracy(tmp: Path, rng) -> tuple[dict, dict]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import edgetune as et
    from edgetune.runtime.personalizer import Personalizer

    synth = _synth()
    words = synth.MORE_WORDS
    begun = time.perf_counter()
    enroll = {w: [utterance(w, _voice(*ENROLL_VOICES[i % len(ENROLL_VOICES)], rng), rng,
                            snr_db=float(rng.uniform(5, 20)), seed=i) for i in range(POOL)]
              for w in words}
    test = {w: [utterance(w, _voice(*TEST_VOICES[i % len(TEST_VOICES)], rng), rng,
                          snr_db=float(rng.uniform(5, 20)), seed=100 + i)
                for i in range(TEST_PER_WORD)] for w in words}
    synth_s = time.perf_counter() - begun
    bundle = tmp / "words.edgetune"
    et.convert(base="speech-embedding", head="softmax", classes=len(words)).save(bundle)
    extractor = Personalizer(bundle, tmp / "extractor", threads=2)
    enroll_x = {w: extractor.features(enroll[w]) for w in words}
    test_x = np.concatenate([extractor.features(test[w]) for w in words])
    test_y = [w for w in words for _ in range(TEST_PER_WORD)]
    extractor.close()
    results = {k: {"prototypes": [], "edgetune": [], "logreg": []} for k in SIZES}
    for k in SIZES:
        for draw in range(DRAWS):
            picks = {w: rng.choice(POOL, k, replace=False) for w in words}
            x = np.concatenate([enroll_x[w][picks[w]] for w in words])
            y = [w for w in words for _ in range(k)]
            with Personalizer(bundle, tmp / f"k{k}-d{draw}", threads=2) as p:
                p.add_features(x, y)

                def accuracy(person=p):
                    answers = person.predict_features(test_x)
                    return float(np.mean([a["label"] == t for a, t in zip(answers, test_y)]))

                results[k]["prototypes"].append(accuracy())
                p.fit()
                results[k]["edgetune"].append(accuracy())
            model = LogisticRegression(max_iter=2000).fit(x, y)
            results[k]["logreg"].append(float(np.mean(model.predict(test_x) == np.array(test_y))))
    return results, {"synth_s": synth_s, "test": len(test_y)}


def wake_word(tmp: Path, rng, sentences: list[str]) -> dict:
    import numpy as np

    import edgetune as et
    from edgetune.runtime.personalizer import Personalizer

    hour, hour_info = negative_hour(sentences[NONE_SPEECH:], rng)
    # Enrollment: the wake word by enrollment voices; "none": room noise and other speech.
    wake = [utterance(WAKE, _voice(*ENROLL_VOICES[i % len(ENROLL_VOICES)], rng), rng,
                      snr_db=float(rng.uniform(10, 20)), seed=i) for i in range(max(WAKE_SIZES))]
    none = []
    for i in range(NONE_NOISE):
        level = 10 ** (rng.uniform(-45, -25) / 20)
        none.append(np.clip(noise(int(1.5 * RATE), rng, NOISE_KINDS[i % 4]) * level, -0.99, 0.99))
    for i in range(NONE_SPEECH):
        speech = sentence_audio(sentences[i], _voice(*ENROLL_VOICES[i % len(ENROLL_VOICES)],
                                                     rng), 5000 + i)
        start = int(rng.integers(0, max(1, len(speech) - int(1.5 * RATE))))
        clip = speech[start:start + int(1.5 * RATE)]
        clip = clip * (10 ** (rng.uniform(-30, -20) / 20) / max(rms(clip), 1e-9))
        none.append(np.clip(clip + noise(len(clip), rng, "room") * rms(clip) / 10, -0.99, 0.99))
    bundle = tmp / "wake.edgetune"
    et.convert(base="speech-embedding", head="softmax", classes=2).save(bundle)
    profiles = {}
    for k in WAKE_SIZES:
        path = tmp / f"wake-{k}"
        with Personalizer(bundle, path, threads=2) as p:
            p.add_samples(wake[:k] + none, [WAKE] * k + ["none"] * len(none))
            p.fit()
        profiles[k] = path

    # The positive stream: one occurrence per 8 s segment, held-out voices, noise; every
    # other segment starts with 2 s of other speech.
    occurrences, segments = [], []
    for i in range(OCCURRENCES):
        seg = noise(int(SEGMENT * RATE), rng, NOISE_KINDS[i % 4]) * \
            10 ** (rng.uniform(-50, -35) / 20)
        if i % 2:
            at = int(rng.integers(0, len(hour) - 2 * RATE))
            other = np.asarray(hour[at:at + 2 * RATE])
            seg[:len(other)] += other
        clip = utterance(WAKE, _voice(*TEST_VOICES[i % len(TEST_VOICES)], rng), rng,
                         snr_db=float(rng.uniform(5, 20)), seed=200 + i)
        clip = clip * (10 ** (rng.uniform(-28, -18) / 20) / max(rms(clip), 1e-9))
        at = int(rng.uniform(2.5, SEGMENT - 1.5 - len(clip) / RATE) * RATE)
        seg[at:at + len(clip)] += clip
        t0 = i * SEGMENT + at / RATE
        occurrences.append((t0, t0 + len(clip) / RATE))
        segments.append(seg)
    positive = np.clip(np.concatenate(segments), -1, 1).astype(np.float32)
    np.save(tmp / "positive.npy", positive)

    # The base over both streams, once (windows and features do not depend on the head).
    half = len(hour) // 2
    jobs = {"negative-1": (CACHE / "negative-hour.npy", 0, half),
            "negative-2": (CACHE / "negative-hour.npy", half, len(hour)),
            "positive": (tmp / "positive.npy", 0, len(positive))}
    begun = time.perf_counter()

    def record(name):
        audio, start, end = jobs[name]
        run_child("record", "--profile", str(profiles[max(WAKE_SIZES)]), "--audio", str(audio),
                  "--start", str(start), "--end", str(end), "--hop", str(HOP),
                  "--out", str(tmp / f"{name}.npz"))
        return dict(np.load(tmp / f"{name}.npz"))

    with ThreadPoolExecutor(2) as pool:
        recorded = dict(zip(jobs, pool.map(record, jobs)))
    record_s = time.perf_counter() - begun

    def replay(p, rec, threshold, smoothing):
        """The Detector's own decisions (Detector._decide) over recorded window scores."""
        scores = p.predict_features(rec["feats"]) if len(rec["feats"]) else []
        silent = {c: float(c == "none") for c in p.classes()}
        found = []
        for threshold_ in threshold:
            d = p.stream(hop=HOP, threshold=threshold_, smoothing=smoothing)
            hits = []
            for start, index in zip(rec["starts"], rec["index"]):
                hit = d._decide(int(start), scores[index]["scores"] if index >= 0 else silent)
                if hit is not None:
                    hits.append(hit)
            found.append(hits)
        return found

    neg_hours = sum(float(recorded[n]["audio_seconds"]) for n in ("negative-1", "negative-2")) \
        / 3600
    out = {"profiles": {}, "hour": hour_info, "neg_hours": neg_hours, "record_s": record_s,
           "positive_s": len(positive) / RATE, "occurrences": len(occurrences)}
    for k, path in profiles.items():
        with Personalizer(profile=path, read_only=True, threads=2) as p:
            for smoothing in ((1, 3, 5) if k == max(WAKE_SIZES) else (3,)):
                rows = []
                pos = replay(p, recorded["positive"], THRESHOLDS, smoothing)
                negs = [replay(p, recorded[n], THRESHOLDS, smoothing)
                        for n in ("negative-1", "negative-2")]
                for t, hits, n1, n2 in zip(THRESHOLDS, pos, *negs):
                    hits = [h for h in hits if h["label"] == WAKE]
                    found = sum(any(h["start"] < b + 0.5 and h["end"] > a - 0.5 for h in hits)
                                for a, b in occurrences)
                    stray = sum(not any(h["start"] < b + 0.5 and h["end"] > a - 0.5
                                        for a, b in occurrences) for h in hits)
                    fa = sum(h["label"] == WAKE for h in n1 + n2)
                    rows.append({"threshold": t, "detected": found / len(occurrences),
                                 "fa": fa, "fa_per_hour": fa / neg_hours, "stray": stray})
                out["profiles"][(k, smoothing)] = rows
    # The real run of the recording child was at threshold 1.0: check the replay agrees
    # with a real Detector over the positive stream at the default threshold.
    with Personalizer(profile=profiles[max(WAKE_SIZES)], read_only=True, threads=2) as p:
        real = [d for d in p.stream(positive, hop=HOP, threshold=0.6)]
        again = replay(p, recorded["positive"], [0.6], 3)[0]
        out["replay_check"] = [(d["label"], d["start"]) for d in real] == \
            [(d["label"], d["start"]) for d in again]
    out["bundle"], out["profiles_path"] = bundle, profiles
    out["enroll_pcm"] = wake, none
    return out


def personalize(tmp: Path, bundle: Path, wake: list, none: list) -> dict:
    import numpy as np

    from edgetune.bundle import Bundle
    from edgetune.inputs import preparer_for

    spec = Bundle.load(bundle).manifest["input"]
    preparer = preparer_for(spec)
    clips = wake[:10] + none
    pcm = np.stack([preparer.prepare(c) for c in clips])
    np.save(tmp / "enroll.npy", pcm)
    data = tmp / "enroll.json"
    data.write_text(json.dumps({"pcm": str(tmp / "enroll.npy"), "bundle": str(bundle),
                                "base": str(bundle / "base.onnx"),
                                "labels": [WAKE] * 10 + ["none"] * len(none)}))
    runs = {"edgetune": [], "torch": []}
    epochs = None
    for rep in range(REPEATS + 1):
        order = ("edgetune", "torch") if rep % 2 == 0 else ("torch", "edgetune")
        for pipeline in order:
            wait_quiet(0.3, 10)
            profile = tmp / f"time-{pipeline}-{rep}"
            r = run_child("personalize", "--pipeline", pipeline, "--data", str(data),
                          "--profile", str(profile), "--epochs", str(epochs or 100))
            shutil.rmtree(profile, ignore_errors=True)
            if pipeline == "edgetune" and epochs is None:
                epochs = r["epochs"]
            if rep > 0:  # the first round is the uncounted warm-up
                runs[pipeline].append(r)
    return {"runs": runs, "epochs": epochs, "n": len(clips)}


def realtime(profile: Path) -> dict:
    out = {}
    for _ in range(RTF_REPEATS):
        for hop in (0.1, 0.25):
            wait_quiet(0.3, 10)
            r = run_child("rtf", "--profile", str(profile), "--hop", str(hop),
                          "--audio", str(CACHE / "negative-hour.npy"),
                          "--end", str(int(RTF_SECONDS * RATE)))
            out.setdefault(hop, []).append(r)
    return out


# -- the section --------------------------------------------------------------------------
def fmt_acc(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def section(acc, acc_info, ww, pers, rtf, elapsed) -> str:
    lines = [HEADING, "",
             machine("onnxruntime", "torch", "scikit-learn", "numpy", "soxr"),
             f"Code: {revision()}. Reproduce: `.venv/bin/python bench/speech.py` (about "
             f"{elapsed / 60:.0f} min here, audio generation included; needs Debian espeak-ng, "
             f"flite, fortunes, fortunes-min; the generated audio is cached under "
             f"/tmp/edgetune-cache/speech). The machine was shared with other jobs.", ""]
    # 1
    lines += ["### Keyword accuracy on voices never enrolled", "",
              f"10 words ({', '.join(_synth().MORE_WORDS)}). Enrollment utterances are drawn "
              f"from a pool of {POOL} per word spoken by 10 enrollment voices (8 espeak-ng "
              f"voice variants: {', '.join(v for e, v in ENROLL_VOICES if e == 'espeak')}; "
              f"flite slt, kal), each with random speed (125-190 wpm for espeak-ng, and 0.9-1.1x "
              f"by resampling for all) and pitch, in room noise at 5-20 dB SNR. The test set is "
              f"{acc_info['test']} utterances ({TEST_PER_WORD} per word) by 10 other voices "
              f"(espeak-ng {', '.join(v for e, v in TEST_VOICES if e == 'espeak')}; flite rms, "
              f"awb), varied the same way. Accuracy is the mean over {DRAWS} random draws of "
              f"the enrollment utterances (min-max in brackets). The same base features feed "
              f"all three: **edgetune** `Personalizer.fit()` with its defaults (softmax head, "
              f"Adam lr 0.01, batch 32, up to 100 epochs, early stop, class-balanced, "
              f"imprinted start); **prototypes**: `predict` before training (nearest class "
              f"mean); **LogisticRegression**: scikit-learn's defaults (L2, C=1, lbfgs).", "",
              "| utterances per word | edgetune softmax head | prototypes (before training) "
              "| scikit-learn LogisticRegression |", "|---|---:|---:|---:|"]
    for k in SIZES:
        r = acc[k]
        lines.append(f"| {k} | {fmt_acc(r['edgetune'])} | {fmt_acc(r['prototypes'])} | "
                     f"{fmt_acc(r['logreg'])} |")
    # 2
    hour = ww["hour"]
    lines += ["", "### Wake word: detection rate and false accepts per hour", "",
              f"Profile: \"{WAKE}\" spoken by enrollment voices (3, 5 or 10 utterances, "
              f"10-20 dB SNR) and a background class `none` of {NONE_NOISE} noise clips (room, "
              f"fan, white, mains hum at -45 to -25 dBFS) and {NONE_SPEECH} 1.5 s cuts of "
              f"other sentences by enrollment voices; `fit()` defaults. Streams go through "
              f"`p.stream(hop={HOP})` (the Detector's defaults otherwise: smoothing 3 "
              f"windows, refractory one window).",
              "",
              f"Negative audio: {ww['neg_hours']:.2f} h without the wake word. "
              f"{hour['distinct_speech_s'] / 60:.1f} min of distinct speech ({hour['sentences']} "
              f"sentences from Debian's fortunes files, spoken by all 20 voices with jittered "
              f"speed and pitch, 0.2-1.5 s pauses; synthesis took {hour['synth_seconds']:.0f} s) "
              f"is played 6 times, each at another speed (0.92-1.08x), level (-32 to -20 dBFS) "
              f"and noise (room, fan, white, hum at 0-20 dB SNR; the last play overlaps a "
              f"shifted copy of itself as babble), with 30 s of noise alone between plays: so "
              f"the hour repeats the same sentences, not 60 min of distinct speech. Positive "
              f"stream: {ww['occurrences']} occurrences of \"{WAKE}\" by the 10 held-out "
              f"voices, one per {SEGMENT:g} s segment of noise (-50 to -35 dBFS), every other "
              f"segment starting with 2 s of other speech; an occurrence is detected when a "
              f"\"{WAKE}\" detection's window overlaps it (0.5 s slack).",
              "",
              f"Method: the base runs once per stream: the Detector (hop {HOP} s) runs over "
              f"each stream in a subprocess (the hour split in two halves) and the features of "
              f"every window are recorded; the threshold sweep then replays the window scores "
              f"of each profile through the same Detector's decision code (`Detector._decide`:"
              f" smoothing, re-arming, refractory) at each threshold. At threshold 0.6 the "
              f"replay gives the same detections as a full `p.stream(...)` run over the "
              f"positive stream: {'yes' if ww['replay_check'] else 'NO'}. Recording "
              f"{ww['neg_hours'] + ww['positive_s'] / 3600:.2f} h of windows took "
              f"{ww['record_s']:.0f} s on 2 processes.", "",
              "| enrollment utterances | smoothing | detection rate at <= 0.5 FA/h (threshold) "
              "| at <= 1 FA/h | at threshold 0.6 (default): detected, FA/h | "
              "false accepts at threshold 1.0 |", "|---:|---:|---:|---:|---:|---:|"]
    for (k, smoothing), rows in ww["profiles"].items():
        def best(limit, rows=rows):
            ok = [r for r in rows if r["fa_per_hour"] <= limit]
            if not ok:
                return "not reached"
            r = max(ok, key=lambda r: (r["detected"], -r["threshold"]))
            return f"{r['detected']:.3f} ({r['threshold']:g})"
        default = next(r for r in rows if abs(r["threshold"] - 0.6) < 1e-9)
        lines.append(f"| {k} | {smoothing} | {best(TARGET_FA)} | {best(1.0)} | "
                     f"{default['detected']:.3f}, {default['fa_per_hour']:.1f} | "
                     f"{rows[-1]['fa']} |")
    k10 = ww["profiles"][(max(WAKE_SIZES), 3)]
    lines += ["", f"The sweep for {max(WAKE_SIZES)} utterances, smoothing 3 (threshold: "
              f"detection rate / false accepts per hour / detections outside occurrences in "
              f"the positive stream): " +
              "; ".join(f"{r['threshold']:g}: {r['detected']:.2f} / {r['fa_per_hour']:.1f} / "
                        f"{r['stray']}" for r in k10 if r["threshold"] >= 0.5) + "."]
    # 3
    e, t = pers["runs"]["edgetune"], pers["runs"]["torch"]

    rows = personalize_phases(f"{pers['n']} clips", pers["epochs"])
    lines += ["", "### Time and memory to personalize the wake word from raw PCM", "",
              f"{pers['n']} clips of 1.5 s PCM (10 \"{WAKE}\" + {pers['n'] - 10} `none`, the "
              f"profile above) from float32 [n, 24000] rows in memory to a trained head, each "
              f"pipeline in a fresh subprocess, one thread (`threads=1` / intra-op 1, "
              f"`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`), {REPEATS} runs each "
              f"alternating which goes first, after one uncounted warm-up of each. **edgetune**: "
              f"`Personalizer(bundle, new profile, threads=1)`, `add_samples` (preparer, the "
              f"base graph 4 clips per call, SQLite store), `fit()` defaults (up to 100 "
              f"epochs, early stop; {pers['epochs']} epochs in the warm-up run). "
              f"**PyTorch eager**: there is no offline ONNX -> torch converter for the speech "
              f"embedding, so the *same* base "
              f"ONNX runs in onnxruntime (4 clips per call) in both pipelines and only the head "
              f"training is PyTorch eager: `Linear(96, 2)`, Adam lr 0.01, batch 32, "
              f"class-balanced cross-entropy, {pers['epochs']} epochs (as many as edgetune "
              f"ran). Peak memory is each subprocess's `VmHWM`.", "",
              "| seconds: median (best) | edgetune | onnxruntime base + PyTorch eager head "
              "| ratio of medians |",
              "|---|---:|---:|---:|"]
    for name, f in rows:
        (me, be), (mt, bt) = median_best(e, f), median_best(t, f)
        lines.append(f"| {name} | {me:.3f} ({be:.3f}) | {mt:.3f} ({bt:.3f}) | "
                     f"{me / mt if mt else float('nan'):.2f}x |")
    (me, be), (mt, bt) = (median_best(runs, lambda r: r["peak_mib"]) for runs in (e, t))
    lines.append(f"| peak RSS (VmHWM), MiB | {me:.0f} ({be:.0f}) | {mt:.0f} ({bt:.0f}) | "
                 f"{me / mt:.2f}x |")
    warm = statistics.median(r["phases"]["warm_training"] for r in t)
    lines.append(f"| PyTorch head training again in the same process (warm: without the "
                 f"first Adam step's one-time lazy imports) |  | {warm:.3f} |  |")
    (me, _), (mt, _) = median_best(e, lambda r: r["cpu"]), median_best(t, lambda r: r["cpu"])
    lines.append(f"| CPU time of the whole subprocess (user + sys), s | {me:.2f} | {mt:.2f} | "
                 f"{me / mt:.2f}x |")
    # 4
    lines += ["", "### Real-time factor of streaming detection, one core", "",
              f"`Detector.stats[\"real_time_factor\"]` (compute seconds per second of audio) "
              f"over the first {RTF_SECONDS:g} s of the negative stream (speech in room noise: "
              f"no window is skipped as silent), fed in 0.1 s chunks, profile of "
              f"{max(WAKE_SIZES)} utterances, `threads=1`, the subprocess pinned to one CPU "
              f"(`sched_setaffinity`); {RTF_REPEATS} runs per hop, alternating.", "",
              "| hop (s) | windows | real-time factor: median (best) | compute ms per window |",
              "|---:|---:|---:|---:|"]
    for hop, rs in rtf.items():
        v = [r["real_time_factor"] for r in rs]
        ms = statistics.median(r["compute_seconds"] / r["windows"] * 1000 for r in rs)
        lines.append(f"| {hop:g} | {rs[0]['windows']} | {statistics.median(v):.3f} "
                     f"({min(v):.3f}) | {ms:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child")
    parser.add_argument("--profile")
    parser.add_argument("--audio")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--end", type=int, default=0)
    parser.add_argument("--hop", type=float, default=HOP)
    parser.add_argument("--out")
    parser.add_argument("--pipeline")
    parser.add_argument("--data")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, "
                        "a separate cache, nothing written")
    args = parser.parse_args()
    if args.quick:
        global CACHE, SPEECH_SECONDS, DRAWS, OCCURRENCES, REPEATS, RTF_SECONDS, RTF_REPEATS
        global TEST_PER_WORD
        CACHE, SPEECH_SECONDS, DRAWS, OCCURRENCES = CACHE / "quick", 20, 1, 4
        REPEATS, RTF_SECONDS, RTF_REPEATS, TEST_PER_WORD, args.no_write = 1, 5, 1, 10, True
    if args.child:
        {"record": child_record, "rtf": child_rtf, "personalize": child_personalize}[
            args.child](args)
        return
    import numpy as np

    if not FORTUNES.is_dir():
        sys.exit("bench/speech.py needs Debian's fortunes: apt-get install -y fortunes "
                 "fortunes-min")
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-speech-bench-"))
    try:
        rng = np.random.default_rng(13)
        sentences = fortune_sentences(rng)
        print(f"{len(sentences)} fortune sentences", flush=True)
        acc, acc_info = keyword_accuracy(tmp, rng)
        print("accuracy", {k: {h: round(statistics.mean(v), 3) for h, v in r.items()}
                           for k, r in acc.items()}, flush=True)
        ww = wake_word(tmp, rng, sentences)
        print("wake word done", flush=True)
        pers = personalize(tmp, ww["bundle"], *ww["enroll_pcm"])
        print("personalize done", flush=True)
        rtf = realtime(ww["profiles_path"][max(WAKE_SIZES)])
        text = section(acc, acc_info, ww, pers, rtf, time.perf_counter() - began)
        print(text)
        if not args.no_write:
            write_section(BENCHMARKS, HEADING, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
