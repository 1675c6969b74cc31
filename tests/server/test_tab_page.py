"""The teachable camera in the tab (the default mode), end to end with the real base
(EfficientNet-Lite0) in headless Chromium: three classes recorded from a fake camera
playing real photos, trained and predicted in the tab, while the request log shows that
nothing but GETs of the page, the bundle and onnxruntime-web ever reaches the server
(no frame, no sample, no WebSocket).

The clip shows three photos (scikit-image's chelsea, coffee and rocket) for four
seconds each, in a loop; the test tells which one is on screen from the preview's mean
color and holds each class's record button while its photo shows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from edgetune.server import default_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py, test_web.py
from test_web import crops, photo, write_y4m  # noqa: E402
from web_browser import (  # noqa: E402
    FAKE_MEDIA,
    NEEDS_CHROMIUM,
    assert_nothing_sent,
    browser,
    log_requests,
    page_of,
    playwright_driver,
    running,
)

sys.path.pop(0)

expect = playwright_api.expect
pytestmark = NEEDS_CHROMIUM
pw = playwright_driver  # the fixture

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
FPS = 10
SEGMENT = 40  # frames of each photo: 4 s

MEAN_COLOR = """() => {
    const video = document.getElementById("video");
    if (video.readyState < 2) return null;
    const canvas = document.createElement("canvas");
    canvas.width = 32; canvas.height = 24;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(video, 0, 0, 32, 24);
    const data = ctx.getImageData(0, 0, 32, 24).data;
    const mean = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) mean[c] += data[i + c];
    return mean.map((v) => v / (32 * 24));
}"""


def _showing(page, means: dict) -> str | None:
    color = page.evaluate(MEAN_COLOR)
    if color is None:
        return None
    return min(means, key=lambda name: float(np.sum((np.asarray(color) - means[name]) ** 2)))


def _wait_for(page, means, name: str, timeout: float = 30.0) -> None:
    """Until the clip has just switched to `name`'s photo."""
    deadline = time.monotonic() + timeout
    before = _showing(page, means)
    while time.monotonic() < deadline:
        now = _showing(page, means)
        if now == name and before != name:
            return
        before = now
        time.sleep(0.05)
    raise AssertionError(f"the clip never switched to {name}")


def test_the_page_personalizes_in_the_tab_and_sends_no_image(pw, edgetune_cache, tmp_path):
    frames, means = [], {}
    for i, (name, picture) in enumerate(PHOTOS.items()):
        shots = crops(photo(picture), SEGMENT, (320, 240), seed=20 + i, scale=(0.85, 1.0))
        frames += shots
        means[name] = np.mean([s.reshape(-1, 3).mean(0) for s in shots], axis=0)
    clip = write_y4m(tmp_path / "three.y4m", frames, fps=FPS)
    bundle = default_bundle(cache_dir=edgetune_cache)
    errors = []
    with running(bundle, tmp_path / "profile") as (server, personalizer), \
            browser(pw, *FAKE_MEDIA, f"--use-file-for-fake-video-capture={clip}",
                    user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors)
        requests, sockets = log_requests(page)
        page.goto(server.url)
        expect(page.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)
        expect(page.locator("#status")).to_have_text("No classes yet")
        expect(page.locator("#camera-state")).to_contain_text("Camera on")
        for name in PHOTOS:
            page.get_by_label("New class").fill(name)
            page.get_by_label("New class").press("Enter")
            expect(page.get_by_role("button", name=f"Hold to record {name}")).to_be_enabled()

        for name in PHOTOS:
            _wait_for(page, means, name)
            page.get_by_role("button", name=f"Hold to record {name}").hover()
            page.mouse.down()
            time.sleep(2.0)
            page.mouse.up()
        page.wait_for_timeout(500)
        counts = {c: page.locator(f"li.class-card[data-name='{c}'] .count").text_content()
                  for c in PHOTOS}
        assert all(int(text.split()[0]) >= 3 for text in counts.values()), counts
        assert personalizer.counts() == {}, "samples reached the server"

        expect(page.locator("#status")).to_have_text("Ready to train")
        page.get_by_role("button", name="Train").click()
        expect(page.locator("#status")).to_have_text("Trained", timeout=60_000)
        expect(page.locator("#train-log")).to_contain_text("Done")

        for name in PHOTOS:
            _wait_for(page, means, name)
            page.wait_for_timeout(700)
            expect(page.locator("#prediction-source")).to_contain_text("trained model")
            expect(page.locator("#prediction")).to_have_text(name, timeout=2_000)

        with page.expect_download() as download:
            page.get_by_role("link", name="Download ONNX model").click()
        model = tmp_path / "personal.onnx"
        download.value.save_as(model)
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["edgetune.classes"]) == list(PHOTOS)
    assert not errors, errors
    # blob: URLs (the download made in the tab) never leave the browser
    paths = assert_nothing_sent(requests, sockets, server)
    assert any(path == "bundle/base.onnx" for _, path, _ in paths)
