"""Listening in the tab (static/listen.js) against the Python runtime's streaming
Detector (runtime/stream.py) on the same profile and real speech: espeak-ng says
"lights" every 1.6 s over room noise, then a second of silence. Both profiles hold the
same features (the tab's are Python's, through addFeatures), both detectors get the
same 0.1 s chunks; after every chunk they have scored the same windows with the same
smoothed scores (within 1e-3: the base runs in wasm in the tab), and they fire the same
detections at the same times, the padded last window included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from edgetune.errors import EdgetuneError  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server import default_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py, test_web_audio.py
from test_web_audio import RATE, keyword_track, room  # noqa: E402
from web_browser import NO_CHROMIUM, browser, has_chromium, page_of, running  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)
CHUNK = RATE // 10

LISTEN = """async (arg) => {
    const { Personalizer } = await import("/static/edgetune.js");
    const { Detector } = await import("/static/listen.js");
    const p = await Personalizer.open("/bundle/", { profile: "listen" });
    for (const name of arg.classes) await p.addClass(name);
    await p.addFeatures(Float32Array.from(arg.X), arg.labels);
    const d = new Detector(p, { rate: arg.rate });
    const steps = [];
    for (let i = 0; i < arg.pcm.length; i += arg.chunk) {
        d.take(Float32Array.from(arg.pcm.slice(i, i + arg.chunk)));
        const found = await d.advance();
        steps.push({ windows: d.windows, scores: d.scores, found });
    }
    const last = await d.flush();
    steps.push({ windows: d.windows, scores: d.scores, found: last });
    return steps;
}"""


def test_the_tab_detector_hears_what_the_python_detector_hears(edgetune_cache, tmp_path):
    try:
        bundle = default_bundle(cache_dir=edgetune_cache, base="speech-embedding")
    except (EdgetuneError, ImportError, OSError) as e:
        pytest.skip(f"no speech-embedding base here ({e})")
    track = keyword_track(tmp_path, repeats=6)
    words = [track[round(1.6 * i * RATE):round((1.6 * i + 1.5) * RATE)] for i in range(3)]
    noise = [room(1.5, seed=30 + i, level=0.004 * (i + 1)) for i in range(3)]
    # ... a second of silence, half a word, and an end that no whole window covers
    pcm = np.concatenate([track, np.zeros(RATE, np.float32), track[:RATE // 2 + CHUNK // 2]])

    with Personalizer(bundle, profile=tmp_path / "py") as python:
        python.add_samples([(x, RATE) for x in words + noise], ["lights"] * 3 + ["none"] * 3)
        X, y = python.store.features_and_labels()
        classes = python.classes()
        detector = python.stream(rate=RATE, hop=0.1)
        expected = []
        for i in range(0, len(pcm), CHUNK):
            found = detector.feed(pcm[i:i + CHUNK])
            expected.append({"windows": detector.windows, "scores": detector.scores,
                             "found": found})
        last = detector.flush()
        expected.append({"windows": detector.windows, "scores": detector.scores, "found": last})

    with playwright_api.sync_playwright() as pw, \
            running(bundle, tmp_path / "server") as (server, _), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        steps = page.evaluate(LISTEN, {
            "classes": classes, "X": X.ravel().tolist(), "labels": [classes[k] for k in y],
            "rate": RATE, "chunk": CHUNK, "pcm": pcm.tolist()})
    assert not errors, errors

    assert len(steps) == len(expected)
    worst = 0.0
    for mine, theirs in zip(steps, expected):
        assert mine["windows"] == theirs["windows"]
        assert set(mine["scores"]) == set(theirs["scores"])
        for name, value in theirs["scores"].items():
            worst = max(worst, abs(mine["scores"][name] - value))
        assert [d["label"] for d in mine["found"]] == [d["label"] for d in theirs["found"]]
        for a, b in zip(mine["found"], theirs["found"]):
            assert a["start"] == pytest.approx(b["start"], abs=1e-4)
            assert a["end"] == pytest.approx(b["end"], abs=1e-4)
            assert a["score"] == pytest.approx(b["score"], abs=1e-3)
    print(f"max |smoothed score tab - python| = {worst:.2e}")
    assert worst < 1e-3
    fired = [d["label"] for s in expected for d in s["found"]]
    assert 3 <= fired.count("lights") <= 7, fired  # six words, the half word at the end
    assert expected[-1]["windows"] > expected[-2]["windows"]  # a padded last window
