"""edgetune.js in headless Chromium (the system browser, Playwright) against the Python
runtime on the same work, side by side.

- Predictions per second at batch 1, from a 320x240 camera-sized frame (the tab's
  Lanczos resize, the base, the head): onnxruntime-web's wasm backend with 1 and 2
  threads (the page is cross-origin isolated), fp32 and int8 bases; Python's
  `Personalizer.predict` on the same frames with 1 and 2 onnxruntime threads.
- Seconds to personalize 4 classes x 20 samples from frames: `addSample` of 80 frames,
  then `fit()` with its defaults (early stop), in the tab; `add_samples` + `fit()` in
  Python.

One bundle: EfficientNet-Lite0, softmax head, `convert()`'s default optimizer, quantized
(`quantize=` 32 photo crops) so it has both bases. Frames: random crops of four
scikit-image photos as JPEG, decoded before any timing. Repeats alternate the runtimes;
median and best. Writes the section "In the browser" of BENCHMARKS.md.

    .venv/bin/python bench/browser.py [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BENCHMARKS, jpeg_crops, machine, revision, write_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## In the browser (edgetune.js)"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
PER_CLASS = 20
PREDICTIONS = 30

SETUP = """async ([jpegs, threads, precision, profile]) => {
    const { Personalizer } = await import("/static/edgetune.js");
    await Personalizer.removeProfile(profile);
    window.frames_ = [];
    for (const b64 of jpegs) {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }));
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = canvas.getContext("2d");
        ctx.drawImage(bitmap, 0, 0);
        window.frames_.push(ctx.getImageData(0, 0, bitmap.width, bitmap.height));
    }
    const t0 = performance.now();
    window.p_ = await Personalizer.open("/bundle/", { profile, threads, precision });
    return { open: (performance.now() - t0) / 1000, isolated: crossOriginIsolated };
}"""

PERSONALIZE = """async (labels) => {
    const p = window.p_;
    const t0 = performance.now();
    for (const [i, label] of labels.entries()) await p.addSample(window.frames_[i], label);
    const t1 = performance.now();
    const records = await p.fit();
    const t2 = performance.now();
    return { add: (t1 - t0) / 1000, fit: (t2 - t1) / 1000, epochs: records.at(-2).epoch };
}"""

PREDICT = """async (n) => {
    const p = window.p_;
    for (let i = 0; i < 3; i++) await p.predict(window.frames_[i]);  // warm
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await p.predict(window.frames_[i % window.frames_.length]);
    return n / ((performance.now() - t0) / 1000);
}"""


def frames(seed: int) -> tuple[list[bytes], list[str]]:
    """80 camera-sized (320x240) JPEG crops: 20 of each photo."""
    from PIL import Image

    jpegs, labels = [], []
    for i, photo in enumerate(PHOTOS):
        for data in jpeg_crops(photo, PER_CLASS, seed=seed + i, size=240):
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((320, 240))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=90)
            jpegs.append(out.getvalue())
            labels.append(photo)
    return jpegs, labels


def make_bundle(tmp: Path) -> Path:
    from edgetune.converter.convert import convert

    calib = tmp / "calibration"
    calib.mkdir()
    for photo in PHOTOS:
        for j, data in enumerate(jpeg_crops(photo, 8, seed=101)):
            (calib / f"{photo}{j}.jpg").write_bytes(data)
    return convert("efficientnet-lite0", "softmax", classes=len(PHOTOS),
                   quantize=calib).save(tmp / "bench.edgetune")


def python_runs(bundle: Path, tmp: Path, arrays: list, labels: list, threads: int,
                precision: str = "fp32") -> dict:
    from edgetune.runtime.personalizer import Personalizer

    profile = tmp / f"py-{threads}-{precision}-{time.monotonic_ns()}"
    with Personalizer(bundle, profile=profile, threads=threads, precision=precision) as p:
        t0 = time.perf_counter()
        p.add_samples(arrays, labels)
        t1 = time.perf_counter()
        records = p.fit()
        t2 = time.perf_counter()
        for frame in arrays[:3]:
            p.predict(frame)
        t3 = time.perf_counter()
        for i in range(PREDICTIONS):
            p.predict(arrays[i % len(arrays)])
        rate = PREDICTIONS / (time.perf_counter() - t3)
    return {"add": t1 - t0, "fit": t2 - t1, "epochs": records[-2]["epoch"], "rate": rate}


def tab_runs(pw, server, jpegs, labels, threads: int, precision: str, tmp: Path,
             personalize: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "server"))
    from web_browser import browser, page_of

    with browser(pw, user_data=tmp / f"u-{time.monotonic_ns()}") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        encoded = [base64.b64encode(j).decode() for j in jpegs]
        setup = page.evaluate(SETUP, [encoded, threads, precision, f"bench-{threads}-{precision}"])
        out = {"open": setup["open"], "isolated": setup["isolated"]}
        if personalize:
            out.update(page.evaluate(PERSONALIZE, labels))
        else:
            page.evaluate("async (labels) => { for (const [i, l] of labels.entries()) "
                          "await window.p_.addSample(window.frames_[i], l); }", labels[::10])
        out["rate"] = page.evaluate(PREDICT, PREDICTIONS)
        if errors:
            raise RuntimeError(f"page errors: {errors}")
    return out


def stats(values: list[float], higher_is_better: bool) -> tuple[float, float]:
    return statistics.median(values), (max(values) if higher_is_better else min(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    from edgetune.runtime.personalizer import Personalizer
    from edgetune.server.app import create_app
    from edgetune.server.testing import BackgroundServer

    tmp = Path(tempfile.mkdtemp(prefix="edgetune-browser-"))
    atexit.register(shutil.rmtree, tmp, True)
    bundle = make_bundle(tmp)
    jpegs, labels = frames(seed=7)
    arrays = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]

    rates: dict[str, list[float]] = {}
    work: dict[str, list[float]] = {}
    epochs: dict[str, list[int]] = {}
    served = Personalizer(bundle, profile=tmp / "server")
    with BackgroundServer(create_app(served)) as server, sync_playwright() as pw:
        for _ in range(args.repeats):
            for threads in (1, 2):
                for precision in ("fp32", "int8"):
                    personalize = precision == "fp32"
                    tab = tab_runs(pw, server, jpegs, labels, threads, precision, tmp,
                                   personalize)
                    assert tab["isolated"], "the page is not cross-origin isolated"
                    rates.setdefault(f"tab {precision} {threads}", []).append(tab["rate"])
                    py = python_runs(bundle, tmp, arrays if personalize else arrays[::10],
                                     labels if personalize else labels[::10], threads,
                                     precision)
                    rates.setdefault(f"python {precision} {threads}", []).append(py["rate"])
                    if personalize:
                        for who, r in (("tab", tab), ("python", py)):
                            work.setdefault(f"{who} {threads}", []).append(r["add"] + r["fit"])
                            epochs.setdefault(f"{who} {threads}", []).append(r["epochs"])
                    print(f"threads {threads} {precision}: tab {tab['rate']:.1f}/s, "
                          f"python {py['rate']:.1f}/s" + (
                              f"; 4x20 tab {tab['add']:.1f}+{tab['fit']:.1f} s, python "
                              f"{py['add']:.1f}+{py['fit']:.1f} s" if personalize else ""),
                          flush=True)
    served.close()

    from importlib.metadata import version

    ort_web = (ROOT / "src/edgetune/server/web/package.json").read_text()
    chromium = shutil.which("chromium") or "chromium"
    lines = [HEADING, "",
             machine("onnxruntime", "playwright") + f" Chromium: {chromium} (headless); "
             f"onnxruntime-web {'1.30.0' if '1.30.0' in ort_web else '?'} (wasm, SIMD).",
             f"{revision()}. Reproduce: `.venv/bin/python bench/browser.py --repeats "
             f"{args.repeats} --write` (under the heavy-run lock; the machine is shared).", "",
             "One bundle (EfficientNet-Lite0, softmax head, default optimizer, quantized on 32 "
             "photo crops). Frames: 320x240 crops of four scikit-image photos. The tab runs "
             "edgetune.js in a cross-origin isolated page (wasm threads), Python the "
             "`Personalizer` (onnxruntime " + version("onnxruntime") + "); each prediction "
             "includes the resize to 224x224, the base and the head.", "",
             "| predictions per second, batch 1 | threads | tab median | tab best | Python "
             "median | Python best | tab / Python |", "|---|---:|---:|---:|---:|---:|---:|"]
    for precision in ("fp32", "int8"):
        for threads in (1, 2):
            tab_m, tab_b = stats(rates[f"tab {precision} {threads}"], True)
            py_m, py_b = stats(rates[f"python {precision} {threads}"], True)
            lines.append(f"| {precision} base | {threads} | {tab_m:.1f} | {tab_b:.1f} | "
                         f"{py_m:.1f} | {py_b:.1f} | {tab_m / py_m:.2f}x |")
    lines += ["", "| personalize 4 classes x 20 frames (add + fit) | threads | tab median (s) | "
              "tab best | Python median (s) | Python best | tab / Python |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for threads in (1, 2):
        tab_m, tab_b = stats(work[f"tab {threads}"], False)
        py_m, py_b = stats(work[f"python {threads}"], False)
        lines.append(f"| fp32 base, fit() defaults (epochs run: tab "
                     f"{statistics.median(epochs[f'tab {threads}']):.0f}, Python "
                     f"{statistics.median(epochs[f'python {threads}']):.0f}) | {threads} | "
                     f"{tab_m:.1f} | {tab_b:.1f} | {py_m:.1f} | {py_b:.1f} | "
                     f"{tab_m / py_m:.2f}x |")
    lines += ["", "Targets (issue 15): at least 10 predictions per second in the tab, and 4 x 20 "
              "samples personalized in at most 10 s. A ratio above 1 means the tab takes that "
              "many times longer (personalize) or makes that many times more predictions "
              "per second (predictions).", ""]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(BENCHMARKS, HEADING, section)


if __name__ == "__main__":
    main()
