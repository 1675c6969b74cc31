"""Shared by the browser tests (test_web*.py, test_tab*.py): the real server on
uvicorn and headless Chromium (the system browser, driven by Playwright).

    pytestmark = NEEDS_CHROMIUM
    pw = playwright_driver  # the fixture `pw` (its import alone would look unused)

    with running(bundle, profile) as (server, personalizer), \\
            browser(pw, *FAKE_MEDIA, "--use-file-for-fake-...", user_data=tmp / "u") as ctx:
        page = page_of(ctx, errors)
        requests, sockets = log_requests(page)
    assert_nothing_sent(requests, sockets)  # the page in the tab: only GETs
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from edgetune.runtime.personalizer import Personalizer
from edgetune.server.app import create_app
from edgetune.server.testing import BackgroundServer

CHROMIUM = os.environ.get("EDGETUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
NO_CHROMIUM = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# a fake camera and microphone, allowed without asking (pass a file with
# --use-file-for-fake-video-capture= or --use-file-for-fake-audio-capture=)
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def has_chromium() -> bool:
    return Path(CHROMIUM).exists()


NEEDS_CHROMIUM = pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)


@pytest.fixture(scope="module", name="pw")
def playwright_driver():
    """Playwright (sync API), started once per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session", name="default_bundle_path")
def default_bundle_fixture(edgetune_cache):
    """The default image bundle (EfficientNet-Lite0), built once into the test cache."""
    from edgetune.server import default_bundle

    return default_bundle(cache_dir=edgetune_cache)


@contextlib.contextmanager
def running(bundle, profile):
    """The web app of a Personalizer of `bundle`, served on uvicorn in the background."""
    personalizer = Personalizer(bundle, profile=profile)
    try:
        with BackgroundServer(create_app(personalizer)) as server:
            yield server, personalizer
    finally:
        personalizer.close()


@contextlib.contextmanager
def browser(pw, *args, user_data: Path):
    """Chromium with a fresh profile directory (a persistent context is how Playwright
    passes --user-data-dir) and these extra command-line `args`."""
    context = pw.chromium.launch_persistent_context(
        str(user_data), executable_path=CHROMIUM, headless=True, args=[*FLAGS, *args],
        viewport={"width": 1280, "height": 900})
    try:
        yield context
    finally:
        context.close()


def page_of(context, errors: list):
    """The context's page; its uncaught JavaScript errors go to `errors`."""
    page = context.pages[0] if context.pages else context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def hold(page, button, seconds: float, keyboard: bool = False) -> None:
    """Hold `button` down for `seconds`: the mouse, or Space on the focused button."""
    if keyboard:
        button.focus()
        page.keyboard.down("Space")
        time.sleep(seconds)
        page.keyboard.up("Space")
    else:
        button.hover()
        page.mouse.down()
        time.sleep(seconds)
        page.mouse.up()


def log_requests(page) -> tuple[list, list]:
    """Lists that collect every request the page makes, as (method, URL, body), and the
    URL of every WebSocket it opens."""
    requests, sockets = [], []
    page.on("request", lambda r: requests.append((r.method, r.url, r.post_data_buffer)))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    return requests, sockets


def assert_nothing_sent(requests: list, sockets: list, server=None) -> list:
    """The page in the tab sent nothing to the server: no WebSocket, and nothing but
    body-less GETs (or HEADs) of the page, static/, bundle/ and api/state; with `server`,
    its blob: URLs (made in the tab, as a download) stay on the server's origin. Returns
    the (method, path, body) of the requests that reached the server."""
    assert not sockets, f"the page opened WebSockets: {sockets}"
    if server is not None:
        local = [url for _, url, _ in requests if url.startswith("blob:")]
        assert all(url.startswith(f"blob:{server.url.rstrip('/')}/") for url in local), local
    paths = [(method, url.split("/", 3)[3], body) for method, url, body in requests
             if not url.startswith("blob:")]
    assert all(method in ("GET", "HEAD") and not body for method, _, body in paths), \
        [(m, p) for m, p, b in paths if m not in ("GET", "HEAD") or b]
    others = [path for _, path, _ in paths
              if not (path == "" or path.startswith(("static/", "bundle/", "api/state")))]
    assert not others, others
    return paths
