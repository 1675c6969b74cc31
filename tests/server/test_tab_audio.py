"""edgetune.js with an audio bundle in headless Chromium (Playwright) against the
Python runtime on the same bundle and real speech (espeak-ng and flite words, room
noise): at the bundle's 16 kHz the tab's rows equal Python's bit for bit (Float32Array,
Int16Array) and the features agree within 1e-4; a trained head ends within 1e-3 of
Python's parameters, predicts the same and exports a model that agrees with Python's.
At 48 and 44.1 kHz (and a 22.05 kHz WAV file, a stereo AudioBuffer) the tab resamples
with its own windowed-sinc filter where Python uses soxr: the rows stay within 30 dB
(measured 50), the features close, every prediction the same. Open set:
predict(x, {openSet: true}) answers "unknown" exactly where Python's
predict(x, open_set=True) does (a tone and noise among held-out words), with the same
distances and thresholds; a head-only copy (open(url, {base: false})) sees the same
samples and the profile's recorded open-set default."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
ort = pytest.importorskip("onnxruntime")

from edgetune.runtime.personalizer import Personalizer  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "speech")]
import speech_synth as synth  # noqa: E402
from tab_parity import (  # noqa: E402
    BATCH,
    EPOCHS,
    FIT_BETWEEN_PREDICTIONS,
    VALUES,
    check_export,
    check_open_set,
    check_training,
    orders,
    run_in_tab,
)
from web_browser import NEEDS_CHROMIUM, playwright_driver  # noqa: E402

del sys.path[:2]

pytestmark = NEEDS_CHROMIUM
pw = playwright_driver  # the fixture


def _pcm(path: Path, rate: int) -> np.ndarray:
    import soundfile as sf
    import soxr

    data, native = sf.read(str(path), dtype="float32")
    return np.asarray(soxr.resample(data, native, rate, quality="HQ"), np.float32) \
        if native != rate else data


def _tone_and_noise(rate: int = 16000) -> list[np.ndarray]:
    t = np.arange(int(1.2 * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.8 * t)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(5).standard_normal(len(t))).astype(np.float32)
    return [tone, noise]


def test_audio_bundles_in_the_tab_as_in_python(pw, tmp_path):
    enroll = {k: v for k, v in synth.enroll_clips().items() if k[1] in synth.VOICES_A[:3]}
    heldout = {k: v for k, v in synth.heldout_clips().items() if k[1] in synth.VOICES_B[:3]}
    keys, tests = sorted(enroll), sorted(heldout)
    labels = [k[0] for k in keys]
    train16 = [_pcm(enroll[k], 16000) for k in keys]
    test16 = [_pcm(heldout[k], 16000) for k in tests] + _tone_and_noise()
    test48 = [_pcm(heldout[k], 48000) for k in tests[:6]]
    test44 = [_pcm(heldout[k], 44100) for k in tests[6:]]
    wav = heldout[tests[0]]  # espeak-ng's 22.05 kHz, read and resampled in the tab

    int16 = np.round(test16[0] * 32767).astype(np.int16)
    python = Personalizer(synth.speech_bundle(), profile=tmp_path / "py", seed=0)
    rows = np.stack([python.preparer.prepare((x, 16000)) for x in train16])
    python.add_samples([(x, 16000) for x in train16], labels)
    X = python.store.features_and_labels()[0]
    before = python.predict_many([(x, 16000) for x in test16], open_set=True)
    python.fit(epochs=EPOCHS, batch_size=BATCH, early_stop=False)
    after = python.predict_many([(x, 16000) for x in test16], open_set=True)
    resampled = python.predict_many([(x, 48000) for x in test48]
                                    + [(x, 44100) for x in test44] + [wav])
    inputs = [(x, 48000) for x in test48] + [(x, 44100) for x in test44] + [wav]
    features_resampled = python.features(inputs)
    rows_resampled = np.stack([python.preparer.prepare(x) for x in inputs])
    result = run_in_tab(pw, synth.speech_bundle(), tmp_path, f"""
        const p = await Personalizer.open("/bundle/", {{ profile: "audio" }});
        const pcm = (a) => Float32Array.from(a), input = pcm;
        const rows = [], features = [];
        for (const [i, x] of arg.train.entries()) {{
            rows.push(Array.from(await p.prepare(pcm(x))));
            const prepared = await p.features(pcm(x));  // what addSample does
            features.push(Array.from(prepared.features));
            await p.addPrepared(prepared, arg.labels[i]);
        }}
        {FIT_BETWEEN_PREDICTIONS}
        const resampled = [], featuresResampled = [], rowsResampled = [];
        const others = [...arg.test48.map((x) => [pcm(x), {{ sampleRate: 48000 }}]),
                        ...arg.test44.map((x) => [pcm(x), {{ sampleRate: 44100 }}]),
                        [new Blob([Uint8Array.from(arg.wav)], {{ type: "audio/wav" }}), {{}}]];
        for (const [x, options] of others) {{
            const prepared = await p.features(x, options);  // what predict does
            featuresResampled.push(Array.from(prepared.features));
            rowsResampled.push(Array.from(prepared.pcm));
            resampled.push((await p.predictFeatures(prepared.features, 1))[0]);
        }}
        const bytes = await p.exportOnnx();
        let model = "";  // base64: a 2.4 MB model as a JSON array is slow to pass
        for (let i = 0; i < bytes.length; i += 8192) {{
            model += String.fromCharCode(...bytes.subarray(i, i + 8192));
        }}
        model = btoa(model);
        // other sources: a stereo AudioBuffer at 48 kHz, int16 samples at 16 kHz
        const x48 = pcm(arg.test48[0]);
        const buffer = new AudioBuffer({{ length: x48.length, sampleRate: 48000,
                                         numberOfChannels: 2 }});
        buffer.copyToChannel(x48, 0);
        buffer.copyToChannel(x48, 1);
        const sources = {{
            buffer: Array.from(await p.prepare(buffer)),
            int16: Array.from(await p.prepare(Int16Array.from(arg.int16))),
        }};
        let silent = null, clipped = null;
        try {{ await p.addSample(new Float32Array(16000), "stop"); }}
        catch (e) {{ silent = e.code; }}
        try {{ await p.addSample(pcm(arg.train[0]).map((v, i) => (i % 50 ? v : 1)), "stop"); }}
        catch (e) {{ clipped = e.message; }}
        // a head-only copy of the profile: its stored data, the profile's open-set default
        await p.setOpenSet(true);
        const q = await Personalizer.open("/bundle/", {{ profile: "audio", base: false }});
        const mineData = p.trainingData(), theirData = q.trainingData();
        const probe = Float32Array.from(featuresResampled[0]);
        const headOnly = {{
            sameData: mineData.classes.join() === theirData.classes.join()
                && mineData.X.every((v, i) => v === theirData.X[i])
                && mineData.y.every((v, i) => v === theirData.y[i]),
            n: theirData.y.length, openSet: q.openSet,
            mine: (await p.predictFeatures(probe, 1))[0],
            theirs: (await q.predictFeatures(probe, 1))[0],
        }};
        try {{ await q.predict(pcm(arg.tests[0])); }} catch (e) {{ headOnly.refused = e.code; }}
        q.close();
        p.close();
        return {{ rows, features, before, after, resampled, featuresResampled, rowsResampled,
                 silent, clipped, headOnly, sources, model,
                 values: {VALUES}, step: p.step, classes: p.classes() }};
    """, {"train": [x.tolist() for x in train16], "labels": labels,
          "tests": [x.tolist() for x in test16], "test48": [x.tolist() for x in test48],
          "test44": [x.tolist() for x in test44], "wav": list(wav.read_bytes()),
          "int16": int16.tolist(),
          "epochs": EPOCHS, "batch": BATCH, "orders": orders(len(keys))})
    # at 16 kHz: the same rows, bit for bit, and the same features within 1e-4
    assert np.array_equal(np.asarray(result["rows"], np.float32), rows)
    diff = float(np.abs(np.asarray(result["features"], np.float32) - X).max())
    print(f"audio features at 16 kHz: max |tab - python| = {diff:.2e}")
    assert diff < 1e-4
    check_open_set(result["before"], before)
    check_open_set(result["after"], after)
    assert [a["source"] for a in result["after"]] == ["head"] * len(after)
    for a, b in zip(result["after"], after):
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in b["scores"]) < 1e-3
    check_training(python, result)
    check_export(python, base64.b64decode(result["model"]), tmp_path,
                  {"audio": np.stack([python.preparer.prepare((x, 16000)) for x in test16])})
    # resampled in the tab (48, 44.1, 22.05 kHz): close features, the same predictions
    mine = np.asarray(result["featuresResampled"], np.float32)
    relative = np.linalg.norm(mine - features_resampled, axis=1) / np.linalg.norm(
        features_resampled, axis=1)
    print(f"audio features, resampled in the tab vs soxr: relative L2 difference median "
          f"{np.median(relative):.2e}, max {relative.max():.2e}")
    assert relative.max() < 0.05
    error = np.asarray(result["rowsResampled"], np.float32) - rows_resampled
    snr = 10 * np.log10((rows_resampled ** 2).sum(1) / (error ** 2).sum(1))
    print(f"audio rows, resampled in the tab vs soxr: max |diff| {np.abs(error).max():.2e}, "
          f"SNR min {snr.min():.1f} dB (48 kHz: {snr[:len(test48)].min():.1f}, 44.1 kHz: "
          f"{snr[len(test48):-1].min():.1f}, 22.05 kHz WAV: {snr[-1]:.1f})")
    assert snr.min() > 30
    assert [r["label"] for r in result["resampled"]] == [r["label"] for r in resampled]
    assert result["silent"] == "bad_input"
    assert "is clipped: 2.0% of its samples" in result["clipped"]
    assert np.array_equal(np.asarray(result["sources"]["int16"], np.float32),
                          python.preparer.prepare((int16, 16000)))
    assert np.array_equal(np.asarray(result["sources"]["buffer"], np.float32),
                          np.asarray(result["rowsResampled"][0], np.float32))  # stereo = mono
    head_only = result["headOnly"]
    assert head_only["sameData"] and head_only["n"] == len(keys) and head_only["openSet"]
    assert head_only["mine"] == head_only["theirs"] and "unknown" in head_only["theirs"]
    assert head_only["refused"] == "no_base"
    python.close()
