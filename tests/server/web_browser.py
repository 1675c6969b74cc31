"""Shared by the browser tests (test_web.py, test_web_audio.py): the real server on
uvicorn and headless Chromium (the system browser, driven by Playwright).

    with running(bundle, profile) as (server, personalizer), \\
            browser(pw, *FAKE_MEDIA, "--use-file-for-fake-...", user_data=tmp / "u") as ctx:
        page = page_of(ctx, errors)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

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
