"""The teachable microphone in the tab (the default mode for audio bundles), end to end
in headless Chromium with the real speech base (speech_embedding): Chromium's fake
microphone plays real speech (espeak-ng says "lights" in three voices, over room noise,
every 1.6 s); the word is recorded from the microphone, the background class from
uploaded room-noise files (WAV and FLAC, one bad file named), trained in the tab with
per-class held-out accuracy, and heard while listening, while the request log proves
that no request after the bundle's download carries audio (no POST, no body, no
WebSocket; the server's profile stays empty).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
soundfile = pytest.importorskip("soundfile")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py, test_web_audio.py
from test_web_audio import RATE, keyword_track, room, write_wav  # noqa: E402
from test_web_audio import speech_bundle as speech_bundle_fixture  # noqa: E402
from web_browser import (  # noqa: E402
    FAKE_MEDIA,
    NEEDS_CHROMIUM,
    assert_nothing_sent,
    browser,
    hold,
    log_requests,
    page_of,
    playwright_driver,
    running,
)

sys.path.pop(0)

expect = playwright_api.expect
pw, speech_bundle = playwright_driver, speech_bundle_fixture  # the fixtures
pytestmark = [
    NEEDS_CHROMIUM,
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng is not installed (apt-get install espeak-ng)"),
]


def test_the_microphone_page_personalizes_in_the_tab_and_sends_no_audio(pw, speech_bundle,
                                                                        tmp_path):
    words = write_wav(tmp_path / "lights.wav", keyword_track(tmp_path))
    noise = []
    for i in range(4):  # room noise at four levels; the last one as FLAC
        clip = room(1.5, seed=20 + i, level=0.005 * (i + 1))
        path = tmp_path / (f"room-{i}.flac" if i == 3 else f"room-{i}.wav")
        soundfile.write(str(path), clip, RATE)
        noise.append(str(path))
    bad = tmp_path / "memo.wav"
    bad.write_bytes(b"call the plumber on monday")

    errors = []
    with running(speech_bundle, tmp_path / "profile") as (server, personalizer), \
            browser(pw, *FAKE_MEDIA, f"--use-file-for-fake-audio-capture={words}",
                    user_data=tmp_path / "u") as context:
        page = page_of(context, errors)
        requests, sockets = log_requests(page)
        page.goto(server.url)
        expect(page.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)
        expect(page.locator("#app-title")).to_have_text("Teachable microphone")
        expect(page.locator("#mic-state")).to_contain_text("Microphone on")

        page.get_by_label("New class").fill("lights")
        page.get_by_label("New class").press("Enter")
        page.get_by_role("button", name="Add the background class (none)").click()
        hold_lights = page.get_by_role("button", name="Hold to record lights")
        expect(hold_lights).to_be_enabled()
        lights = page.locator("li.class-card[data-name='lights'] .count")
        for n in (1, 2):
            hold(page, hold_lights, 1.8)
            expect(lights).to_have_text(f"{n} sample{'s' if n > 1 else ''}" + " · need "
                                        f"{3 - n} more", timeout=15_000)
        page.get_by_role("button", name="Record 1.5 s of lights").click()
        expect(lights).to_have_text("3 samples", timeout=15_000)
        hold(page, hold_lights, 1.8)
        expect(lights).to_have_text("4 samples", timeout=15_000)

        page.get_by_label("Add audio files to none").set_input_files(noise + [str(bad)])
        expect(page.locator("li.class-card[data-name='none'] .count")).to_have_text(
            "4 samples", timeout=15_000)
        expect(page.locator("#toast")).to_contain_text("Added 4 of 5 clips to none")
        expect(page.locator("#toast")).to_contain_text("memo.wav: ")

        page.get_by_role("button", name="Train").click()
        expect(page.locator("#status")).to_have_text("Trained", timeout=60_000)
        expect(page.locator("#accuracy-note")).to_contain_text(
            "of 2 held-out samples right", timeout=60_000)

        page.get_by_role("button", name="Listen").click()
        expect(page.get_by_role("button", name="Stop listening")).to_be_visible()
        expect(page.locator("#prediction-source")).to_contain_text("s heard", timeout=15_000)
        first = page.locator("#detections li").first
        expect(first).to_have_attribute("data-label", "lights", timeout=20_000)
        page.get_by_role("button", name="Stop listening").click()
        expect(page.get_by_role("button", name="Listen")).to_be_visible()
        heard = page.locator("#detections li").count()
        assert personalizer.counts() == {}, "samples reached the server"
    assert not errors, errors
    assert heard >= 1
    paths = assert_nothing_sent(requests, sockets, server)
    assert any(p.startswith("bundle/") and p.endswith(".onnx") for _, p, _ in paths)
