"""edgetune.js in headless Chromium (the system browser, Playwright) against the real
server: the tab personalizes a bundle by itself, the same way the Python runtime does.

- Pixels: the tab's resize (Pillow's Lanczos cover + center crop, in JavaScript) gives
  Python's pixels for real photos.
- Parity: the same bundle and the same features (a small conv base on real photos),
  trained in Chromium and in Python with the same mini-batch order, end within 1e-4 of
  each other, for SGD and Adam; the models both export agree on every test image.
- Persistence: a reload keeps classes, samples, thumbnails and the trained head; a
  browser killed mid-training leaves a profile that opens and predicts.

A tiny bundle keeps these fast; the end-to-end test of the page uses the real base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_crops, tiny_base

playwright_api = pytest.importorskip("playwright.sync_api")
ort = pytest.importorskip("onnxruntime")

from edgetune.converter.convert import convert  # noqa: E402
from edgetune.converter.heads import SoftmaxClassifier  # noqa: E402
from edgetune.converter.optimizers import SGD, Adam  # noqa: E402
from edgetune.inputs.image import prepare  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # web_browser.py
import tab_parity  # noqa: E402
from web_browser import (  # noqa: E402
    CHROMIUM,
    FLAGS,
    NO_CHROMIUM,
    browser,
    has_chromium,
    page_of,
    running,
)

sys.path.pop(0)

pytestmark = pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)

SIZE = 16  # the tiny base's input
CLASSES = ("chelsea", "coffee", "rocket")
EPOCHS = 12
BATCH = 8

IMPORT = """const { Personalizer } = await import("/static/edgetune.js");"""


@pytest.fixture(scope="module")
def pw():
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tab")
    base = tiny_base(root / "tiny.onnx", size=SIZE, features=8)
    out = {}
    for name, optimizer in (("sgd", SGD(lr=0.1)), ("adam", Adam(lr=0.01))):
        out[name] = convert(base, SoftmaxClassifier(3), optimizer).save(root / f"{name}.edgetune")
    return out


@pytest.fixture(scope="module")
def data():
    """Real photos, 3 classes: 10 training crops and 4 test crops each, 16x16."""
    images, labels = photo_crops(per_class=14, size=SIZE, seed=3, classes=CLASSES)
    train = np.concatenate([np.arange(c * 14, c * 14 + 10) for c in range(3)])
    test = np.concatenate([np.arange(c * 14 + 10, c * 14 + 14) for c in range(3)])
    return images[train], labels[train], images[test]


def js(page, body: str, arg=None):
    return page.evaluate(f"async (arg) => {{ {IMPORT} {body} }}", arg)


def test_the_tab_resizes_photos_as_python_does(bundles, pw, tmp_path):
    """Pillow's Lanczos cover + center crop, in JavaScript: the same pixels from real
    photos of several shapes, down (to 224 and 16) and up."""
    from skimage import data as photos

    cases = []
    for name, box, size in (("chelsea", (0, 0, 451, 300), 224),
                            ("coffee", (30, 20, 330, 420), 224),
                            ("rocket", (100, 50, 240, 120), 224),
                            ("astronaut", (0, 0, 512, 512), 100),  # 5x: no box pre-reduce
                            ("chelsea", (10, 10, 60, 40), 100)):
        image = getattr(photos, name)()[box[1]:box[3], box[0]:box[2]]
        cases.append((np.ascontiguousarray(image), size))
    with running(bundles["sgd"], tmp_path / "p") as (server, _), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        for image, size in cases:
            h, w = image.shape[:2]
            got = page.evaluate("""async ([rgb, w, h, size]) => {
                const { fitPixels } = await import("/static/edgetune/image.js");
                return Array.from(fitPixels(Uint8Array.from(rgb), w, h, size, size));
            }""", [image.ravel().tolist(), w, h, size])
            want = prepare(image, (size, size))
            diff = np.abs(np.asarray(got, np.int16).reshape(want.shape) - want.astype(np.int16))
            assert diff.max() == 0, (image.shape, size, int(diff.max()), int((diff > 0).sum()))
        assert not errors


def _train_in_python(bundle, profile, X, y) -> tuple[Personalizer, list]:
    p = Personalizer(bundle, profile=profile, seed=0)
    p.add_features(X, [CLASSES[i] for i in y])
    records = p.fit(epochs=EPOCHS, batch_size=BATCH, early_stop=False)
    return p, records


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_tab_trains_as_python_does(bundles, data, pw, tmp_path, optimizer):
    bundle = bundles[optimizer]
    images, y, test_images = data
    orders = tab_parity.orders(len(y), EPOCHS)
    with running(bundle, tmp_path / "server") as (server, served), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        X = served.features(list(images))
        python, records = _train_in_python(bundle, tmp_path / "py", X, y)
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        result = js(page, """
            const p = await Personalizer.open("/bundle/", { profile: "parity" });
            for (const [i, label] of arg.labels.entries()) {
                await p.addFeatures(Float32Array.from(arg.X[i]), [label]);
            }
            const records = await p.fit({ epochs: arg.epochs, batchSize: arg.batch,
                                          earlyStop: false, orders: arg.orders });
            const values = Object.fromEntries(Object.entries(p._values).map(
                ([k, t]) => [k, { dims: t.dims, data: Array.from(t.data) }]));
            const model = await p.exportOnnx();
            return { records, values, step: p.step, classes: p.classes(),
                     model: Array.from(model) };
        """, {"X": X.tolist(), "labels": [CLASSES[i] for i in y], "epochs": EPOCHS,
              "batch": BATCH, "orders": orders})
        assert not errors
    assert result["classes"] == list(CLASSES) == python.classes()
    assert [r.get("event") for r in result["records"]] == [r.get("event") for r in records]
    assert result["step"] == python.step
    for name, value in python._values.items():
        got = np.asarray(result["values"][name]["data"], np.float32).reshape(
            result["values"][name]["dims"])
        assert got.shape == value.shape, name
        assert np.abs(got - value).max() < 1e-4, (name, float(np.abs(got - value).max()))
    assert records[-1]["improved"] and records[-1]["objective"] < records[-1]["start"]
    for mine, theirs in zip(result["records"], records):
        if "objective" in theirs:  # the same objective after every epoch
            assert abs(mine["objective"] - theirs["objective"]) < 1e-5, (mine, theirs)
    # the exported models agree on every test image
    python.export(tmp_path / "py.onnx")
    (tmp_path / "js.onnx").write_bytes(bytes(result["model"]))
    outputs = {}
    for which in ("py", "js"):
        session = ort.InferenceSession(str(tmp_path / f"{which}.onnx"))
        name = session.get_inputs()[0].name
        outputs[which] = session.run(["probabilities"], {name: test_images})[0]
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["edgetune.classes"]) == list(CLASSES)
        assert json.loads(meta["edgetune.input"])["filter"] == "lanczos"
    assert np.abs(outputs["py"] - outputs["js"]).max() < 1e-4
    assert (outputs["py"].argmax(1) == outputs["js"].argmax(1)).all()
    python.close()


# ----------------------------------------------------------------------- persistence

RECORD = """
    const p = await Personalizer.open("/bundle/", { profile: "kept" });
    for (const [i, label] of arg.labels.entries()) {
        const data = new ImageData(Uint8ClampedArray.from(arg.rgba[i]), arg.w, arg.h);
        await p.addSample(data, label);
    }
    window.tabProfile = p;
"""

STATE = """
    const p = window.tabProfile ?? await Personalizer.open("/bundle/", { profile: "kept" });
    const thumbs = [];
    for (const s of p.samples()) {
        const bitmap = await createImageBitmap(s.thumbnail);
        thumbs.push([s.id, s.label, s.thumbnail.type, bitmap.width, bitmap.height]);
    }
    const data = new ImageData(Uint8ClampedArray.from(arg.probe), arg.w, arg.h);
    return { counts: p.counts(), trained: p.trained, step: p.step, thumbs,
             prediction: await p.predict(data) };
"""


def _rgba(images) -> list[list[int]]:
    out = np.full((*images.shape[:3], 4), 255, np.uint8)
    out[..., :3] = images
    return [row.ravel().tolist() for row in out]


@pytest.fixture(scope="module")
def larger():
    """Real photos at 48x36 (the tab resizes them to the base's 16x16)."""
    images, labels = photo_crops(per_class=6, size=48, seed=5, classes=CLASSES)
    return images[:, 6:42, :, :], labels  # 36 rows x 48 columns


def test_a_reload_keeps_classes_samples_thumbnails_and_the_head(bundles, larger, pw, tmp_path):
    images, y = larger
    arg = {"rgba": _rgba(images), "labels": [CLASSES[i] for i in y], "w": 48, "h": 36,
           "probe": _rgba(images[:1])[0]}
    with running(bundles["adam"], tmp_path / "server") as (server, _), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        js(page, RECORD + "await p.fit({ epochs: 30 });", arg)
        before = js(page, STATE, arg)
        page.reload()
        after = js(page, STATE, arg)
        assert not errors
    assert before["trained"] and before["prediction"]["source"] == "head"
    assert after == before
    assert after["counts"] == {c: 6 for c in CLASSES}
    assert all(t[2] == "image/jpeg" and t[3:] == [64, 64] for t in after["thumbs"])


def _browser_pids(user_data: Path) -> list[int]:
    """The Chromium processes started with this user data directory (ours)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(str(user_data).encode() in arg for arg in cmdline):
                pids.append(int(entry.name))
    return pids


def test_a_browser_killed_mid_training_leaves_a_profile_that_opens(bundles, larger, pw,
                                                                   tmp_path):
    import os
    import signal
    import time

    images, y = larger
    arg = {"rgba": _rgba(images), "labels": [CLASSES[i] for i in y], "w": 48, "h": 36,
           "probe": _rgba(images[:1])[0]}
    user_data = tmp_path / "u"
    with running(bundles["adam"], tmp_path / "server") as (server, _):
        ctx = pw.chromium.launch_persistent_context(
            str(user_data), executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = page_of(ctx, [])
        page.goto(server.url + "?mode=server")
        js(page, RECORD + """
            window.epochs = 0;
            p.fit({ epochs: 100000, earlyStop: false, lr: 0.001,
                    onEpoch: () => { window.epochs += 1; } });
        """, arg)
        deadline = time.monotonic() + 60  # (wait_for_function evaluates a string: CSP)
        while page.evaluate("() => window.epochs") < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        during = js(page, """  // predict() answers while the worker trains
            const data = new ImageData(Uint8ClampedArray.from(arg.probe), arg.w, arg.h);
            const result = await window.tabProfile.predict(data);
            return [window.tabProfile.isTraining, result.source, window.epochs];
        """, arg)
        assert during[0] and during[1] == "head" and during[2] >= 200, during
        pids = _browser_pids(user_data)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _browser_pids(user_data) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            ctx.close()
        except Exception:  # its browser is gone: that was the point
            pass
        with browser(pw, user_data=user_data) as ctx:
            page = page_of(ctx, errors := [])
            page.goto(server.url + "?mode=server")
            state = js(page, STATE, arg)
            again = js(page, """
                const p = await Personalizer.open("/bundle/", { profile: "kept" });
                const records = await p.fit({ epochs: 5 });
                return records.at(-1).event;
            """, arg)
            assert not errors
    assert state["counts"] == {c: 6 for c in CLASSES}
    assert state["trained"] and state["step"] > 0
    assert state["prediction"]["source"] == "head"
    assert len(state["thumbs"]) == 18
    assert again == "kept"


def test_rename_remove_and_classes_added_after_training(bundles, data, pw, tmp_path):
    """A renamed class keeps its samples and its trained column (same scores under the
    new name, after a reload too); a class added after training starts at its class
    mean and is predicted at once; removing a sample or a class is kept."""
    images, y, _ = data
    with running(bundles["adam"], tmp_path / "server") as (server, served), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        X = served.features(list(images))
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        arg = {"X": X.tolist(), "labels": [CLASSES[i] for i in y]}
        first = js(page, """
            const p = await Personalizer.open("/bundle/", { profile: "classes" });
            const add = (i) => p.addFeatures(Float32Array.from(arg.X[i]), [arg.labels[i]]);
            const rows = (keep) => arg.labels.map((l, i) => i).filter((i) => keep(arg.labels[i]));
            for (const i of rows((l) => l !== "rocket")) await add(i);
            await p.fit({ epochs: 20 });
            const probe = Float32Array.from(arg.X[0]);
            const before = (await p.predictFeatures(probe))[0];
            await p.renameClass("chelsea", "cat");
            const renamed = (await p.predictFeatures(probe))[0];
            const rockets = rows((l) => l === "rocket");
            for (const i of rockets) await add(i);
            const rocket = (await p.predictFeatures(Float32Array.from(arg.X[rockets[0]])))[0];
            const last = p.samples().filter((s) => s.label === "coffee").at(-1).id;
            await p.removeSample(last);
            return { before, renamed, rocket, counts: p.counts(), trained: p.trained };
        """, arg)
        page.reload()
        after = js(page, """
            const p = await Personalizer.open("/bundle/", { profile: "classes" });
            const renamed = (await p.predictFeatures(Float32Array.from(arg.X[0])))[0];
            await p.removeClass("coffee");
            const counts = p.counts();
            const p2 = await Personalizer.open("/bundle/", { profile: "classes" });
            return { renamed, counts, reopened: p2.counts(), classes: p2.classes() };
        """, arg)
        assert not errors
    assert first["trained"]
    assert first["before"]["label"] == "chelsea" and first["renamed"]["label"] == "cat"
    assert abs(first["renamed"]["scores"]["cat"] - first["before"]["scores"]["chelsea"]) < 1e-6
    assert first["rocket"]["label"] == "rocket"  # imprinted: predicted before any training
    assert first["counts"] == {"cat": 10, "coffee": 9, "rocket": 10}
    assert after["renamed"]["label"] == "cat"
    assert abs(after["renamed"]["scores"]["cat"] - first["renamed"]["scores"]["cat"]) < 1e-3
    assert after["counts"] == after["reopened"] == {"cat": 10, "rocket": 10}
    assert after["classes"] == ["cat", "rocket"]


def test_samples_and_classes_added_during_a_fit_join_it(bundles, data, pw, tmp_path):
    """As in Python (fitting's follow): a class added while the worker trains gets a
    column (imprinted) at the next epoch, and the fit goes on with all the samples."""
    images, y, _ = data
    with running(bundles["adam"], tmp_path / "server") as (server, served), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        X = served.features(list(images))
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        result = js(page, """
            const p = await Personalizer.open("/bundle/", { profile: "follow" });
            const add = (i) => p.addFeatures(Float32Array.from(arg.X[i]), [arg.labels[i]]);
            const rows = (keep) => arg.labels.map((l, i) => i).filter((i) => keep(arg.labels[i]));
            for (const i of rows((l) => l !== "rocket")) await add(i);
            const sizes = [];
            const fit = p.fit({ epochs: 1000000, earlyStop: false,
                                onEpoch: (r) => { if (r.samples) sizes.push(r.samples); } });
            const tick = () => new Promise((r) => setTimeout(r, 5));
            const wait = async (ok) => { while (!ok()) await tick(); };
            await wait(() => sizes.length >= 20);
            for (const i of rows((l) => l === "rocket")) await add(i);
            await wait(() => sizes.filter((n) => n === 30).length >= 20);
            p.stop();
            const records = await fit;
            const seen = records.filter((r) => r.samples).map((r) => r.samples);
            const rocket = rows((l) => l === "rocket").map((i) => arg.X[i]).flat();
            const predicted = await p.predictFeatures(Float32Array.from(rocket), 10);
            return { first: seen[0], last: seen.at(-1), kept: records.at(-1),
                     labels: predicted.map((r) => r.label), classes: p.classes() };
        """, {"X": X.tolist(), "labels": [CLASSES[i] for i in y]})
        assert not errors
    assert result["first"] == 20 and result["last"] == 30, result
    assert result["kept"]["event"] == "kept" and result["kept"]["improved"]
    assert result["classes"] == list(CLASSES)
    assert result["labels"].count("rocket") >= 8, result["labels"]
