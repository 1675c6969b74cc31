"""Server mode, two real Chromium pages on one server: a run started in the first page is
followed by the second one (its pill says Training with the epoch, Stop shows, the loss
curve grows), the second page stops it, and both end Trained.

The server broadcasts the training state to every socket (session.py); the socket-level
check is in test_server_studio.py, this one is what a person sees in the other tab.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from PIL import Image

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from edgetune.server import default_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py, test_web.py
from test_web import add_class, crops, photo  # noqa: E402
from web_browser import NEEDS_CHROMIUM, browser, page_of, playwright_driver, running  # noqa: E402

sys.path.pop(0)

expect = playwright_api.expect
pytestmark = NEEDS_CHROMIUM
pw = playwright_driver  # the fixture

EPOCHS = re.compile(r"Training loss per epoch: (\d+) epochs")


def _epochs_drawn(page) -> int:
    match = EPOCHS.match(page.locator("#loss").get_attribute("aria-label") or "")
    return int(match.group(1)) if match else 0


def test_a_second_tab_follows_and_stops_a_run_started_in_the_first(pw, edgetune_cache, tmp_path):
    files = {}
    for i, name in enumerate(("astronaut", "rocket")):
        files[name] = []
        for j, image in enumerate(crops(photo(name), 4, (224, 224), seed=40 + i)):
            path = tmp_path / f"{name}-{j}.jpg"
            Image.fromarray(image).save(path)
            files[name].append(str(path))
    bundle = default_bundle(cache_dir=edgetune_cache)
    errors: list[str] = []
    with running(bundle, tmp_path / "profile") as (server, personalizer), \
            browser(pw, user_data=tmp_path / "u") as context:
        first = page_of(context, errors)
        first.goto(server.url + "?mode=server")
        for name in files:
            add_class(first, name)
            first.get_by_label(f"Add image files to {name}").set_input_files(files[name])
            expect(first.locator(f"li.class-card[data-name='{name}'] .count")) \
                .to_have_text("4 samples", timeout=30_000)
        second = context.new_page()
        second.on("pageerror", lambda e: errors.append(str(e)))
        second.goto(server.url + "?mode=server")
        expect(second.locator("#status")).to_have_text("Ready to train", timeout=30_000)
        expect(second.get_by_role("button", name="Stop")).to_be_hidden()

        # a long run (no early stop), started in the first page
        first.locator("#epochs").fill("10000")
        first.get_by_text("Advanced settings").click()
        first.locator("#early-stop").uncheck()
        first.get_by_role("button", name="Train").click()

        expect(second.locator("#status")).to_have_text(re.compile(r"Training · epoch \d+"),
                                                       timeout=20_000)
        assert second.locator("#status").get_attribute("data-state") == "training"
        expect(second.get_by_role("button", name="Stop")).to_be_visible()
        expect(second.locator("#train")).to_be_disabled()
        expect(second.locator("#train-hint")).to_contain_text("Training in the background")
        drawn = _epochs_drawn(second)
        second.wait_for_function(
            f"""() => {{
                const label = document.getElementById("loss").getAttribute("aria-label");
                const m = /(\\d+) epochs/.exec(label);
                return m && Number(m[1]) > {drawn} + 5;
            }}""", timeout=20_000)
        assert personalizer.is_training

        second.get_by_role("button", name="Stop").click()
        for page in (first, second):
            expect(page.locator("#status")).to_have_text("Trained", timeout=30_000)
            expect(page.get_by_role("button", name="Stop")).to_be_hidden()
            expect(page.locator("#train-log")).to_contain_text("Done")
        assert not personalizer.is_training and personalizer.trained
        assert _epochs_drawn(second) > drawn
    assert not errors, errors
