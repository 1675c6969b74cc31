"""The page in the tab (the default mode) as a new user tries it, with files instead of a
camera, in headless Chromium with the real base (EfficientNet-Lite0):

- the advanced settings show the tab's defaults and bounds, and bad values are refused;
- an upload with a bad file adds the good ones and names the bad one in one toast;
- training shows per-class accuracy on held-out samples, computed in the tab;
- a renamed class stays trained; a class added after training holds Download back;
- a reload in the middle of a run (still training just before it) keeps the classes and
  the trained head (Trained, not stale), and Download then exports the three classes;
- nothing but GETs of the page, the bundle and onnxruntime-web reaches the server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py, test_web.py
from test_web import add_class, photo_files  # noqa: E402
from web_browser import (  # noqa: E402
    NEEDS_CHROMIUM,
    assert_nothing_sent,
    browser,
    default_bundle_fixture,
    log_requests,
    page_of,
    playwright_driver,
    running,
)

sys.path.pop(0)

expect = playwright_api.expect
pytestmark = NEEDS_CHROMIUM
pw, default_bundle_path = playwright_driver, default_bundle_fixture  # the fixtures

# every text the toast shows: each toast replaces the toast's text node, and the records
# keep every added node even when several toasts come before the observer runs
TOASTS = """new MutationObserver((records) => {
    for (const r of records) {
        if (r.target.id !== "toast") continue;
        for (const node of r.addedNodes) (window.toasts ||= []).push(node.textContent);
    }
}).observe(document, {subtree: true, childList: true});"""


def _toasts_naming(page, name: str) -> list[str]:
    return [text for text in page.evaluate("window.toasts || []") if name in text]


def test_tab_settings_upload_held_out_accuracy_reload_mid_run(pw, default_bundle_path, tmp_path):
    files = photo_files(tmp_path, ("astronaut", "rocket", "coffee"))
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"shopping list: milk, eggs")
    lr = json.loads((Path(default_bundle_path) / "manifest.json").read_text())["optimizer"]["lr"]

    errors = []
    with running(default_bundle_path, tmp_path / "profile") as (server, personalizer), \
            browser(pw, user_data=tmp_path / "u") as context:
        context.add_init_script(TOASTS)
        page = page_of(context, errors)
        requests, sockets = log_requests(page)
        page.goto(server.url)
        expect(page.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)

        # the advanced settings: defaults and bounds in the tab too
        page.get_by_text("Advanced settings").click()
        expect(page.locator("#epochs")).to_have_value("100")
        expect(page.locator("#batch-size")).to_have_value("32")
        assert float(page.locator("#lr").input_value()) == pytest.approx(lr)
        add_class(page, "astronaut")
        add_class(page, "rocket")
        page.get_by_label("Add image files to astronaut").set_input_files(files["astronaut"])
        count = "li.class-card[data-name='{}'] .count"
        expect(page.locator(count.format("astronaut"))).to_have_text("5 samples", timeout=30_000)
        page.evaluate("window.toasts = []")
        page.get_by_label("Add image files to rocket").set_input_files(files["rocket"] + [str(bad)])
        rocket = page.locator("li.class-card[data-name='rocket']")
        expect(rocket.locator(".count")).to_have_text("5 samples", timeout=30_000)
        expect(page.locator("#toast")).to_contain_text("Added 5 of 6 images to rocket")
        expect(rocket.locator(".thumbs img")).to_have_count(5)
        shown = _toasts_naming(page, "notes.jpg")
        assert len(shown) == 1, shown  # one toast, naming the bad file and why
        assert "notes.jpg:" in shown[0] and "Not added" in shown[0], shown

        for field, value, words in (("#epochs", "0", "from 1 to 10000"),
                                    ("#batch-size", "2.5", "Batch size must be"),
                                    ("#lr", "-1", "Learning rate must be a number above 0")):
            page.locator(field).fill(value)
            page.get_by_role("button", name="Train").click()
            expect(page.locator("#settings-error")).to_contain_text(words)
            page.get_by_role("button", name="Defaults").click()
        page.locator("#epochs").fill("40")
        page.get_by_role("button", name="Train").click()
        expect(page.locator("#status")).to_have_text("Trained", timeout=60_000)
        # held-out accuracy, computed in the tab: one of each class's 5 samples held out
        expect(page.locator("#accuracy")).to_be_visible(timeout=60_000)
        expect(page.locator("#accuracy-list li")).to_have_count(2)
        expect(page.locator("#accuracy-note")).to_contain_text(
            "of 2 held-out samples right, by a model trained the same way on the other 8 samples")
        for name in ("astronaut", "rocket"):
            expect(page.locator(f"#accuracy-list li[data-name='{name}'] .pct")).to_have_text("1/1")
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "false")

        # a renamed class is still trained (not "added after training")
        page.get_by_role("button", name="Rename astronaut").click()
        page.get_by_label("New name for astronaut").fill("person")
        page.get_by_label("New name for astronaut").press("Enter")
        expect(page.locator("li.class-card[data-name='person']")).to_be_visible()
        expect(page.locator("#accuracy-list li[data-name='person'] .pct")).to_have_text("1/1")
        expect(page.locator("#status")).to_have_text("Trained")
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "false")

        add_class(page, "coffee")
        page.get_by_label("Add image files to coffee").set_input_files(files["coffee"])
        expect(page.locator(count.format("coffee"))).to_have_text("5 samples", timeout=30_000)
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "true")
        expect(page.locator("#download-hint")).to_contain_text("coffee was added after training")
        expect(page.locator("#status")).to_have_text("Trained · new samples")

        # a long run, reloaded while it trains: the head kept so far is there after the reload
        page.locator("#epochs").fill("10000")  # a few seconds: ~1,500 epochs/s here
        page.locator("#early-stop").uncheck()
        page.get_by_role("button", name="Train again").click()
        expect(page.locator("#status")).to_contain_text("Training · epoch", timeout=30_000)
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        page.wait_for_timeout(500)
        assert page.locator("#status").get_attribute("data-state") == "training"
        page.reload()
        expect(page.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)
        expect(page.locator(count.format("coffee"))).to_have_text("5 samples")
        expect(page.locator("#status")).to_have_text("Trained")
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "false")
        with page.expect_download() as download:
            page.get_by_role("link", name="Download ONNX model").click()
        model = tmp_path / "personal.onnx"
        download.value.save_as(model)
        import onnxruntime as ort

        meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]) \
            .get_modelmeta().custom_metadata_map
        assert json.loads(meta["edgetune.classes"]) == ["person", "rocket", "coffee"]
        assert personalizer.counts() == {}, "samples reached the server"
    assert not errors, errors
    assert_nothing_sent(requests, sockets)


def test_a_second_tab_waits_for_the_first_and_takes_over(pw, default_bundle_path, tmp_path):
    """Two tabs of the page in one browser share one profile (IndexedDB): the second one
    waits and says so (nothing it does reaches the server meanwhile), and takes over with
    the first one's classes when that tab closes."""
    posts, errors = [], []
    with running(default_bundle_path, tmp_path / "profile") as (server, personalizer), \
            browser(pw, user_data=tmp_path / "u") as context:
        context.on("request", lambda r: r.method not in ("GET", "HEAD") and posts.append(r.url))
        first = page_of(context, errors)
        first.goto(server.url)
        expect(first.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)
        add_class(first, "mug")
        second = context.new_page()
        second.on("pageerror", lambda e: errors.append(str(e)))
        second.goto(server.url)
        expect(second.locator("#status")).to_have_text("Open in another tab", timeout=10_000)
        expect(second.locator("#toast")).to_contain_text("open in another tab")
        second.get_by_label("New class").fill("cup")
        second.get_by_label("New class").press("Enter")  # waits for the tab to take over
        second.wait_for_timeout(500)
        assert personalizer.classes() == [] and not posts, posts
        first.close()
        expect(second.locator("body")).to_have_attribute("data-mode", "tab", timeout=60_000)
        expect(second.locator("li.class-card[data-name='mug']")).to_be_visible()
        expect(second.locator("li.class-card[data-name='cup']")).to_be_visible()
        assert personalizer.classes() == [] and not posts, posts
    assert not errors, errors
