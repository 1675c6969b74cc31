"""The teachable microphone: the web app with an audio bundle (speech-embedding base).

Protocol (TestClient): /api/state says the input kind, WAV clips upload as samples,
the WebSocket's ``listen`` turns binary messages into microphone audio for a detector
that answers smoothed scores and detections.

Browser (headless Chromium, Playwright, real server): Chromium's fake microphone plays
a WAV file (``--use-file-for-fake-audio-capture``). Real speech: espeak-ng says
"lights" in three voices, with pauses, over room noise; another file is room noise
only. The "lights" browser records the word (hold to record, and a countdown
recording), the "noise" browser records the background class, trains, and listens:
noise gives no detection; then the "lights" browser listens and "lights" is detected.
A screenshot goes to artifacts/. The page runs in server mode here (``?mode=server``):
both browsers share the server's profile (test_web_tab_audio.py: the page in the tab).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")
soundfile = pytest.importorskip("soundfile")
soxr = pytest.importorskip("soxr")

from edgetune.errors import EdgetuneError  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.server import default_bundle  # noqa: E402
from edgetune.server.app import create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py
from web_browser import (  # noqa: E402
    ARTIFACTS,
    FAKE_MEDIA,
    NO_CHROMIUM,
    browser,
    has_chromium,
    hold,
    page_of,
    running,
)

sys.path.pop(0)

RATE = 16000
VOICES = ("en+m3", "en+f2", "en-us+klatt")

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng)")


# ----------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def speech_bundle(edgetune_cache):
    try:
        return default_bundle(cache_dir=edgetune_cache, base="speech-embedding")
    except (EdgetuneError, ImportError, OSError) as e:
        pytest.skip(f"no speech-embedding base here ({e})")


def espeak(word: str, voice: str, folder: Path) -> np.ndarray:
    """`word` said by espeak-ng's `voice`: float32 at RATE, peak 0.5."""
    path = folder / f"{word}-{voice.replace('+', '_')}.wav"
    if not path.is_file():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), word], check=True,
                       capture_output=True, timeout=60)
    speech, rate = soundfile.read(str(path), dtype="float32")
    speech = soxr.resample(speech, rate, RATE).astype(np.float32)
    return 0.5 * speech / np.abs(speech).max()


def room(seconds: float, seed: int, level: float = 0.01) -> np.ndarray:
    """Room noise: low-passed (more energy low), at an RMS of `level`."""
    white = np.random.default_rng(seed).standard_normal(round(seconds * RATE))
    shaped = np.fft.irfft(np.fft.rfft(white) / np.sqrt(1 + np.arange(len(white) // 2 + 1)
                                                       / 200), len(white))
    return (shaped / shaped.std() * level).astype(np.float32)


def keyword_track(folder: Path, word: str = "lights", period: float = 1.6,
                  repeats: int = 9) -> np.ndarray:
    """The word every `period` seconds (voices in turn) over room noise."""
    signal = room(period * repeats, seed=3)
    for i in range(repeats):
        speech = espeak(word, VOICES[i % len(VOICES)], folder)
        start = round((i * period + 0.2) * RATE)
        signal[start:start + len(speech)] += speech[:len(signal) - start]
    return signal


def write_wav(path: Path, signal: np.ndarray, rate: int = RATE) -> Path:
    soundfile.write(str(path), np.clip(signal, -0.99, 0.99), rate, subtype="PCM_16")
    return path


def wav_bytes(signal: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.clip(signal, -0.99, 0.99), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# ----------------------------------------------------------------------- protocol
HOST = {"host": "127.0.0.1:8321"}  # what a browser on this machine sends


def client_of(personalizer):
    from starlette.testclient import TestClient

    return TestClient(create_app(personalizer), base_url="http://127.0.0.1:8321")


def test_audio_state_upload_and_listen_over_the_websocket(speech_bundle, tmp_path):
    track = keyword_track(tmp_path)
    with Personalizer(speech_bundle, profile=tmp_path / "p") as p, \
            client_of(p) as client:
        state = client.get("/api/state").json()
        assert state["input"] == {"kind": "audio", "sample_rate": 16000, "samples": 24000,
                                  "seconds": 1.5}
        for name in ("lights", "none"):
            assert client.post("/api/classes", json={"name": name}).status_code == 201
        # three words (2 s around each) and three stretches of noise, as WAV uploads
        words = [(f"w{i}.wav", wav_bytes(track[round((1.6 * i) * RATE):
                                               round((1.6 * i + 2.0) * RATE)]))
                 for i in range(3)]
        noise = [(f"n{i}.wav", wav_bytes(room(1.5, seed=20 + i, level=0.005 * (i + 1))))
                 for i in range(3)]
        for name, files in (("lights", words), ("none", noise)):
            reply = client.post("/api/samples", data={"label": name},
                                files=[("files", (f, data, "audio/wav")) for f, data in files])
            assert reply.status_code == 200, reply.text
        assert p.counts() == {"lights": 3, "none": 3}
        # a raw audio/* body predicts
        one = client.post("/api/predict", content=words[1][1],
                          headers={"content-type": "audio/wav"})
        assert one.status_code == 200 and one.json()["label"] == "lights", one.text
        # silence is refused with a clear 400
        silent = client.post("/api/samples", data={"label": "none"},
                             files=[("files", ("s.wav", wav_bytes(np.zeros(RATE)), "audio/wav"))])
        assert silent.status_code == 400 and silent.json()["code"] == "bad_input"
        p.fit()

        with client.websocket_connect("/ws", headers=HOST) as ws:
            assert ws.receive_json()["input"]["kind"] == "audio"
            ws.send_json({"type": "listen", "rate": 44100.5})
            assert ws.receive_json()["code"] == "bad_rate"
            ws.send_json({"type": "listen", "rate": 22050})  # the page's rate: resampled
            started = ws.receive_json()
            assert started["type"] == "listening" and started["rate"] == 22050
            assert started["sample_rate"] == 16000 and started["window"] == 1.5
            assert started["background"] is True
            pcm = soxr.resample(track[:round(6.4 * RATE)], RATE, 22050).astype("<f4")
            step = 2205  # 0.1 s chunks
            for i in range(0, len(pcm), step):
                ws.send_bytes(pcm[i:i + step].tobytes())
            ws.send_json({"type": "ping"})  # answered after every chunk's reply
            scores, found = [], []
            while (reply := ws.receive_json())["type"] != "pong":
                assert reply["type"] == "scores", reply
                scores.append(reply)
                found += reply["detections"]
            assert len(scores) >= 40  # a reply per chunk that completes a window
            assert set(scores[-1]["scores"]) == {"lights", "none"}
            assert all(0 <= v <= 1 for s in scores for v in s["scores"].values())
            assert 6.0 < scores[-1]["time"] <= 6.4
            assert [d["label"] for d in found].count("lights") >= 1, \
                [s["scores"] for s in scores][::5]
            ws.send_bytes(b"\x00\x00\x00")  # not float32
            assert ws.receive_json()["code"] == "bad_audio"
            ws.send_json({"type": "listen", "rate": None})
            stopped = ws.receive_json()
            assert stopped["type"] == "listening" and stopped["rate"] is None


def test_listen_needs_samples_and_an_audio_bundle(speech_bundle, edgetune_cache, tmp_path):
    with Personalizer(speech_bundle, profile=tmp_path / "p") as p, \
            client_of(p) as client, \
            client.websocket_connect("/ws", headers=HOST) as ws:
        ws.receive_json()
        ws.send_json({"type": "listen", "rate": 16000})
        assert ws.receive_json()["code"] == "no_samples"
    image = default_bundle(cache_dir=edgetune_cache)
    with Personalizer(image, profile=tmp_path / "img") as p, \
            client_of(p) as client, \
            client.websocket_connect("/ws", headers=HOST) as ws:
        assert ws.receive_json()["input"] == {"kind": "image"}
        ws.send_json({"type": "listen", "rate": 16000})
        assert ws.receive_json()["code"] == "not_audio"


def test_serve_audio_option_picks_the_speech_bundle_and_profile(monkeypatch, tmp_path):
    import argparse

    from edgetune.server import launch
    from edgetune.server.options import add_serve_arguments
    from edgetune.server.profile import default_profile_for

    parser = add_serve_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--audio"]).base == "speech-embedding"
    assert parser.parse_args(["--base", "speech-embedding"]).base == "speech-embedding"
    assert parser.parse_args([]).base is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--audio", "--bundle", "x.edgetune"])
    monkeypatch.setenv("EDGETUNE_PROFILE", str(tmp_path / "profile"))
    assert default_profile_for(None) == tmp_path / "profile"
    assert default_profile_for("speech-embedding") == tmp_path / "speech-profile"

    seen = {}

    def fake_default_bundle(*, log=None, base=None):
        seen["base"] = base
        raise EdgetuneError("stop here")

    monkeypatch.setattr(launch, "default_bundle", fake_default_bundle)
    with pytest.raises(EdgetuneError, match="stop here"):
        launch.serve(base="speech-embedding", port=8321)
    assert seen["base"] == "speech-embedding"


# ----------------------------------------------------------------------- browser


def microphone(pw, wav: Path, user_data: Path):
    """Chromium whose microphone plays `wav`."""
    return browser(pw, *FAKE_MEDIA, f"--use-file-for-fake-audio-capture={wav}",
                   user_data=user_data)


@pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)
def test_record_words_and_background_train_and_listen_in_chromium(speech_bundle, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    t0 = time.monotonic()
    words = write_wav(tmp_path / "lights.wav", keyword_track(tmp_path))
    noise = write_wav(tmp_path / "noise.wav", room(8.0, seed=11, level=0.01)
                      * np.linspace(0.6, 1.6, round(8.0 * RATE), dtype=np.float32))
    errors: list[str] = []
    with playwright_api.sync_playwright() as pw, \
            running(speech_bundle, tmp_path / "profile") as (server, personalizer), \
            microphone(pw, words, tmp_path / "ua") as ctx_words, \
            microphone(pw, noise, tmp_path / "ub") as ctx_noise:
        page, quiet = page_of(ctx_words, errors), page_of(ctx_noise, errors)
        page.goto(server.url + "?mode=server")
        expect(page.locator("#app-title")).to_have_text("Teachable microphone")
        expect(page.locator("#mic-state")).to_contain_text("Microphone on")
        expect(page.locator("#viewport")).to_be_hidden()

        page.get_by_label("New class").fill("lights")
        page.get_by_label("New class").press("Enter")
        page.get_by_role("button", name="Add the background class (none)").click()
        hold_lights = page.get_by_role("button", name="Hold to record lights")
        expect(hold_lights).to_be_enabled()
        expect(page.get_by_role("button", name="Add the background class (none)")).to_be_hidden()

        # the word: hold to record (twice), and a countdown recording of 1.5 s
        for _ in range(2):
            hold(page, hold_lights, 1.8)
        page.get_by_role("button", name="Record 1.5 s of lights").click()
        expect(page.locator("li.class-card[data-name='lights'] .count")).to_have_text(
            "3 samples", timeout=10_000)
        hold(page, hold_lights, 1.8)
        expect(page.locator("li.class-card[data-name='lights'] .count")).to_have_text(
            "4 samples")

        # the background, from the other browser's microphone (room noise)
        quiet.goto(server.url + "?mode=server")
        expect(quiet.locator("#mic-state")).to_contain_text("Microphone on")
        quiet.get_by_role("button", name="Record 6 s of none").click()
        expect(quiet.locator("li.class-card[data-name='none'] .count")).to_have_text(
            "4 samples", timeout=15_000)
        assert personalizer.counts() == {"lights": 4, "none": 4}
        sources = [s.source for s in personalizer.samples()]
        assert all(s.startswith("upload:mic-") for s in sources), sources

        quiet.get_by_role("button", name="Train").click()
        expect(quiet.locator("#status")).to_have_text("Trained", timeout=30_000)

        # noise: the meter runs, nothing is detected
        quiet.get_by_role("button", name="Listen").click()
        expect(quiet.get_by_role("button", name="Stop listening")).to_be_visible()
        expect(quiet.locator("#prediction-source")).to_contain_text("s heard", timeout=10_000)
        expect(quiet.locator("#bars li")).to_have_count(2)
        quiet.wait_for_timeout(3000)
        expect(quiet.locator("#detections li")).to_have_count(0)
        expect(quiet.locator("#prediction")).to_have_text("none")

        # the word: detected, with a time, and the meter shows it
        page.get_by_role("button", name="Listen").click()
        first = page.locator("#detections li").first
        expect(first).to_have_attribute("data-label", "lights", timeout=15_000)
        expect(first).to_contain_text(" s")
        page.wait_for_timeout(1200)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "teachable-microphone-listening.png"
        page.screenshot(path=str(shot), full_page=True)
        quiet.get_by_role("button", name="Stop listening").click()
        expect(quiet.locator("#detections li")).to_have_count(0)
        page.get_by_role("button", name="Stop listening").click()
        expect(page.get_by_role("button", name="Listen")).to_be_visible()
        assert shot.stat().st_size > 20_000
        page.set_viewport_size({"width": 380, "height": 800})  # a narrow window
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 380, f"the page scrolls sideways in a narrow window ({width} px)"
    assert not errors, errors
    assert time.monotonic() - t0 < 75
