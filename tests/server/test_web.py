"""The teachable camera end to end, in headless Chromium (the system browser, driven by
Playwright), against the real server on uvicorn.

Camera: Chromium's fake camera plays a .y4m clip made of real photos (scikit-image's
chelsea and coffee). Each photo gets its own clip and its own browser, both on one
server: the "cat" browser records with the mouse, the "coffee" browser with the
keyboard (Space held on the focused button), then trains; afterwards each browser's
live prediction must name its own photo.

Files: a browser with no camera records nothing; image files are added per class, the
model is trained, and test images (other crops) are predicted from files.

Screenshots of the trained pages go to artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py
from web_browser import (  # noqa: E402
    ARTIFACTS,
    FAKE_MEDIA,
    NEEDS_CHROMIUM,
    browser,
    default_bundle_fixture,
    hold,
    page_of,
    playwright_driver,
    running,
)

sys.path.pop(0)

expect = playwright_api.expect

pytestmark = NEEDS_CHROMIUM
pw, default_bundle_path = playwright_driver, default_bundle_fixture  # the fixtures


# ----------------------------------------------------------------------- real photos


def photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def crops(image: np.ndarray, n: int, size: tuple[int, int], seed: int,
          scale=(0.8, 1.0)) -> list[np.ndarray]:
    """Random crops (aspect ratio of `size`, `scale` of the short side) resized to size."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        ch = int(min(h, w * size[1] / size[0]) * rng.uniform(*scale))
        cw = int(ch * size[0] / size[1])
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(image[top:top + ch, left:left + cw])
        out.append(np.asarray(crop.resize(size, Image.Resampling.BILINEAR).convert("RGB")))
    return out


def photo_files(folder: Path, names, n: int = 5, seed: int = 30) -> dict[str, list[str]]:
    """`n` 224x224 JPEG crops of each named photo written to `folder`: {name: [paths]}."""
    files = {}
    for i, name in enumerate(names):
        files[name] = []
        for j, image in enumerate(crops(photo(name), n, (224, 224), seed=seed + i)):
            path = folder / f"{name}-{j}.jpg"
            Image.fromarray(image).save(path)
            files[name].append(str(path))
    return files


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """A YUV4MPEG2 clip (4:2:0, BT.601 studio range) of RGB frames, for Chromium's fake
    camera (--use-file-for-fake-video-capture)."""
    h, w = frames[0].shape[:2]
    assert h % 2 == 0 and w % 2 == 0
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
            u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
            v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
            f.write(b"FRAME\n")
            for plane in (y, _half(u), _half(v)):
                f.write(np.clip(np.round(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def _half(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def check_screenshot(path: Path) -> None:
    """The screenshot shows a page, not a blank: varied pixels, many colors."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image.std() > 20, f"{path} looks blank (pixel std {image.std():.1f})"
    colors = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    assert colors > 200, f"{path} has only {colors} distinct colors"


def add_class(page, name: str) -> None:
    page.get_by_label("New class").fill(name)
    page.get_by_label("New class").press("Enter")
    expect(page.get_by_role("button", name=f"Hold to record {name}")).to_be_visible()


# ----------------------------------------------------------------------- tests


def test_camera_record_train_and_predict_in_two_browsers(pw, default_bundle_path, tmp_path):
    t0 = time.monotonic()
    clips = {name: write_y4m(tmp_path / f"{name}.y4m", crops(photo(name), 8, (320, 240), i))
             for i, name in enumerate(("chelsea", "coffee"))}
    errors: list[str] = []
    with running(default_bundle_path, tmp_path / "profile") as (server, personalizer), \
            browser(pw, *FAKE_MEDIA, f"--use-file-for-fake-video-capture={clips['chelsea']}",
                    user_data=tmp_path / "ua") as ctx_cat, \
            browser(pw, *FAKE_MEDIA, f"--use-file-for-fake-video-capture={clips['coffee']}",
                    user_data=tmp_path / "ub") as ctx_coffee:
        cat, coffee = page_of(ctx_cat, errors), page_of(ctx_coffee, errors)
        cat.goto(server.url + "?mode=server")
        expect(cat.locator("#status")).to_have_text("No classes yet")
        expect(cat.locator("#classes-empty")).to_be_visible()
        expect(cat.locator("#camera-state")).to_contain_text("Camera on")

        add_class(cat, "cat")
        add_class(cat, "coffee")
        expect(cat.locator("#status")).to_have_text("Too few samples")
        expect(cat.get_by_role("button", name="Train")).to_be_disabled()
        coffee.goto(server.url + "?mode=server")  # sees the classes made in the other browser
        expect(coffee.get_by_role("button", name="Hold to record coffee")).to_be_enabled()
        expect(coffee.locator("#camera-state")).to_contain_text("Camera on")

        hold(cat, cat.get_by_role("button", name="Hold to record cat"), 1.2)
        hold(coffee, coffee.get_by_role("button", name="Hold to record coffee"), 1.2,
             keyboard=True)
        time.sleep(0.3)
        counts = personalizer.counts()
        assert counts["cat"] >= 3 and counts["coffee"] >= 3, counts
        sample_text = coffee.locator("li.class-card[data-name='cat'] .count")
        expect(sample_text).to_have_text(f"{counts['cat']} samples")  # pushed to the other page

        expect(coffee.locator("#status")).to_have_text("Ready to train")
        coffee.get_by_role("button", name="Train").click()
        expect(coffee.locator("#status")).to_have_text("Trained", timeout=30_000)
        expect(coffee.locator("#train-log")).to_contain_text("Done")
        assert "epochs, from" in coffee.locator("#loss").get_attribute("aria-label")

        for page, label in ((coffee, "coffee"), (cat, "cat")):
            expect(page.locator("#prediction-source")).to_contain_text("trained model",
                                                                       timeout=10_000)
            expect(page.locator("#prediction")).to_have_text(label)
            expect(page.locator("#bars li.best .name")).to_have_text(label)

        ARTIFACTS.mkdir(exist_ok=True)
        coffee.wait_for_timeout(400)  # the confidence bars finish their transition
        shot = ARTIFACTS / "teachable-camera-trained.png"
        coffee.screenshot(path=str(shot), full_page=True)
        check_screenshot(shot)

        with coffee.expect_download() as download:
            coffee.get_by_role("link", name="Download ONNX model").click()
        model = tmp_path / "personal.onnx"
        download.value.save_as(model)
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["edgetune.classes"]) == ["cat", "coffee"]

        coffee.set_viewport_size({"width": 380, "height": 800})  # a narrow window
        narrow = ARTIFACTS / "teachable-camera-narrow.png"
        coffee.screenshot(path=str(narrow), full_page=True)
        check_screenshot(narrow)
        width = coffee.evaluate("document.documentElement.scrollWidth")
        assert width <= 380, f"the page scrolls sideways in a narrow window ({width} px)"
    assert not errors, errors
    assert time.monotonic() - t0 < 90


def test_no_camera_upload_files_train_and_predict_a_file(pw, default_bundle_path, tmp_path):
    t0 = time.monotonic()
    files = {}
    for i, name in enumerate(("astronaut", "rocket")):
        folder = tmp_path / name
        folder.mkdir()
        images = crops(photo(name), 5, (224, 224), seed=10 + i, scale=(0.6, 1.0))
        files[name] = []
        for j, image in enumerate(images):
            path = folder / f"{name}-{j}.{'jpg' if j % 2 else 'png'}"
            Image.fromarray(image).save(path)
            files[name].append(str(path))
        test_image = crops(photo(name), 1, (300, 240), seed=99 + i, scale=(0.7, 0.9))[0]
        Image.fromarray(test_image).save(tmp_path / f"test-{name}.jpg")

    errors: list[str] = []
    with running(default_bundle_path, tmp_path / "profile") as (server, personalizer), \
            browser(pw, user_data=tmp_path / "ua") as context:  # no fake camera: none at all
        page = page_of(context, errors)
        page.goto(server.url + "?mode=server")
        expect(page.locator("#camera-state")).to_contain_text("image files")
        expect(page.locator("#camera-message")).to_contain_text("No camera")

        add_class(page, "astronaut")
        add_class(page, "rocket")
        expect(page.get_by_role("button", name="Hold to record rocket")).to_be_disabled()

        # rename with the keyboard: Rename, type, Enter
        page.get_by_role("button", name="Rename rocket").click()
        page.get_by_label("New name for rocket").fill("spaceship")
        page.get_by_label("New name for rocket").press("Enter")
        expect(page.get_by_role("button", name="Hold to record spaceship")).to_be_visible()
        assert personalizer.classes() == ["astronaut", "spaceship"]

        page.get_by_label("Add image files to astronaut").set_input_files(files["astronaut"])
        expect(page.locator("li.class-card[data-name='astronaut'] .count")).to_have_text(
            "5 samples")
        page.get_by_label("Add image files to spaceship").set_input_files(files["rocket"][:2])
        expect(page.locator("#status")).to_have_text("Too few samples")
        expect(page.locator("#train-hint")).to_contain_text("spaceship (2)")
        page.get_by_label("Add image files to spaceship").set_input_files(files["rocket"][2:])
        expect(page.locator("li.class-card[data-name='spaceship'] .count")).to_have_text(
            "5 samples")

        page.get_by_role("button", name="Train").click()
        expect(page.locator("#status")).to_have_text("Trained", timeout=30_000)

        for name, label in (("rocket", "spaceship"), ("astronaut", "astronaut")):
            page.locator("#predict-file").set_input_files(str(tmp_path / f"test-{name}.jpg"))
            expect(page.locator("#file-caption")).to_contain_text(f"test-{name}.jpg: {label}")
            expect(page.locator("#prediction")).to_have_text(label)
            expect(page.locator("#prediction-source")).to_contain_text("trained model")

        ARTIFACTS.mkdir(exist_ok=True)
        page.wait_for_timeout(400)  # the confidence bars finish their transition
        shot = ARTIFACTS / "teachable-camera-files.png"
        page.screenshot(path=str(shot), full_page=True)
        check_screenshot(shot)
        assert personalizer.counts() == {"astronaut": 5, "spaceship": 5}
    assert not errors, errors
    assert time.monotonic() - t0 < 60


def test_upload_review_and_delete_samples_settings_and_held_out_accuracy(pw, default_bundle_path,
                                                                         tmp_path):
    """Server mode, no camera: a batch with a bad file and a 42-megapixel photo (over the
    server's 40-megapixel limit: the page downscales it first) adds the good ones and
    names the bad one; thumbnails show, one sample is deleted; bad settings are refused
    on the page; training shows per-class accuracy on held-out samples; a class added
    after training holds Download back."""
    files = photo_files(tmp_path, ("astronaut", "rocket", "coffee"))
    huge = tmp_path / "huge-rocket.jpg"
    Image.fromarray(photo("rocket")).resize((7500, 5600)).save(huge, quality=80)
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"shopping list: milk, eggs")

    errors: list[str] = []
    with running(default_bundle_path, tmp_path / "profile") as (server, personalizer), \
            browser(pw, user_data=tmp_path / "ub") as context:
        page = page_of(context, errors)
        page.goto(server.url + "?mode=server")
        add_class(page, "astronaut")
        add_class(page, "rocket")
        page.get_by_label("Add image files to astronaut").set_input_files(files["astronaut"])
        page.get_by_label("Add image files to rocket").set_input_files(
            files["rocket"] + [str(bad), str(huge)])
        toast = page.locator("#toast")
        expect(toast).to_contain_text("Added 6 of 7 images to rocket", timeout=20_000)
        expect(toast).to_contain_text("notes.jpg: not a readable image file")
        rocket = page.locator("li.class-card[data-name='rocket']")
        expect(rocket.locator(".count")).to_have_text("6 samples")
        expect(rocket.locator(".thumbs img")).to_have_count(6)
        page.wait_for_function("""() => [...document.querySelectorAll('.thumbs img')]
                                  .every((img) => img.complete && img.naturalWidth === 96)""")
        # remove one sample: the newest, the downscaled photo
        newest = max(s.id for s in personalizer.samples())
        page.get_by_role("button", name=f"Remove sample {newest} of rocket").click()
        expect(rocket.locator(".count")).to_have_text("5 samples")
        expect(rocket.locator(".thumbs img")).to_have_count(5)
        assert newest not in [s.id for s in personalizer.samples()]

        page.get_by_text("Advanced settings").click()
        for field, value, words in (("#epochs", "2.5", "Epochs must be a whole number"),
                                    ("#epochs", "0", "from 1 to 10000"),
                                    ("#epochs", "99999", "from 1 to 10000"),
                                    ("#lr", "-1", "Learning rate must be a number above 0"),
                                    ("#batch-size", "0", "Batch size must be")):
            if field != "#epochs":
                page.locator("#epochs").fill("40")
            page.locator(field).fill(value)
            page.get_by_role("button", name="Train").click()
            expect(page.locator("#settings-error")).to_contain_text(words)
            expect(page.locator(field)).to_have_attribute("aria-invalid", "true")
            page.locator(field).fill("")
        assert not personalizer.is_training and not personalizer.trained
        page.locator("#epochs").fill("40")
        page.locator("#batch-size").fill("4")
        page.locator("#lr").fill("0.005")
        page.get_by_role("button", name="Train").click()
        expect(page.locator("#settings-error")).to_be_hidden()
        expect(page.locator("#status")).to_have_text("Trained", timeout=30_000)
        expect(page.locator("#accuracy")).to_be_visible(timeout=30_000)
        expect(page.locator("#accuracy-list li")).to_have_count(2)
        expect(page.locator("#accuracy-note")).to_contain_text("of 2 held-out samples right")
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "false")

        add_class(page, "coffee")
        page.get_by_label("Add image files to coffee").set_input_files(files["coffee"])
        expect(page.locator("#download")).to_have_attribute("aria-disabled", "true")
        expect(page.locator("#download-hint")).to_contain_text("coffee was added after training")
        expect(page.locator("#status")).to_have_text("Trained · new samples")
    assert not errors, errors
