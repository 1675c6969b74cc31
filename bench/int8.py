"""The int8 base against the fp32 one, side by side in one run: speed, size, load time
and few-shot accuracy through `Personalizer(..., precision=...)`.

One bundle: EfficientNet-Lite0, softmax head, `convert()`'s default optimizer, with
`quantize=` a calibration folder of 32 photo crops and 32 Fashion-MNIST training
images that no evaluation uses (the device calibrates on its user's images). Then, for
`fp32` (graph `base`) and `int8` (graph `base_int8`):

- base images per second at batch 1 and batch 4, one onnxruntime thread: each repeat
  runs the base over the same 16 real photo crops; median and best of the repeats,
  the precisions alternating;
- the size of the base graph and of the standalone model `Personalizer.export` writes;
- load time: creating the onnxruntime session for the base (median of 5);
- few-shot accuracy (also of a second bundle, `quantize=True`: the int8 base
  calibrated on the images that ship with edgetune, what `edgetune convert` and the
  server's default bundle use): k = 5, 10, 20 samples per class, 3 seeds, on Fashion-MNIST (10
  classes, first 1000 images of t10k) and on the photo crops (4 classes, 30 held-out
  crops per class). Each precision computes its own features
  (`Personalizer.features` of a profile opened with that precision), and each run is a
  new profile of that precision: `add_features`, `fit()` with its defaults,
  `predict_features` on the test set.

Writes the section "int8 base" of BENCHMARKS.md.

    .venv/bin/python bench/int8.py
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    BENCHMARKS,
    cpu_busy,
    jpeg_crops,
    machine,
    revision,
    wait_quiet,
    write_section,
)
from fashion_accuracy import NAMES as FASHION
from fashion_accuracy import draw, read_idx

HEADING = "## int8 base"
PRECISIONS = ("fp32", "int8")
SHIPPED = "int8, shipped calibration"  # the default of `edgetune convert`
ROLES = {"fp32": "base", "int8": "base_int8"}
SHOTS = (5, 10, 20)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def calibration(folder: Path, fashion_x: np.ndarray, exclude: set[int]) -> int:
    """32 photo crops (seed 101) and 32 Fashion-MNIST training images outside the draws."""
    from PIL import Image

    folder.mkdir()
    n = 0
    for photo in PHOTOS:
        for data in jpeg_crops(photo, 8, seed=101):
            (folder / f"photo{n:02d}.jpg").write_bytes(data)
            n += 1
    free = [i for i in range(len(fashion_x)) if i not in exclude][:32]
    for i in free:
        Image.fromarray(fashion_x[i]).save(folder / f"fashion{i}.png")
        n += 1
    return n


def speed(sessions: dict, images: np.ndarray, batch: int, repeats: int) -> dict:
    """Images per second over `images` in batches of `batch`: per precision, the list of
    repeats (precisions alternate, so a busy moment of the machine hits both)."""
    out = {k: [] for k in sessions}
    for _ in range(repeats):
        for precision, (session, name, output) in sessions.items():
            t0 = time.perf_counter()
            for i in range(0, len(images), batch):
                session.run([output], {name: images[i:i + batch]})
            out[precision].append(len(images) / (time.perf_counter() - t0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=1000, help="first N images of t10k")
    parser.add_argument("--repeats", type=int, default=7, help="speed repeats")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for feature extraction (speed uses one)")
    parser.add_argument("--out", default=str(BENCHMARKS))
    args = parser.parse_args()

    from edgetune.bundle import Bundle
    from edgetune.converter.convert import convert
    from edgetune.runtime.personalizer import Personalizer
    from edgetune.runtime.trainer import make_session

    tmp = Path(tempfile.mkdtemp(prefix="edgetune-int8-"))
    atexit.register(shutil.rmtree, tmp, True)

    train_x = read_idx("train-images-idx3-ubyte.gz")
    train_y = read_idx("train-labels-idx1-ubyte.gz")
    test_x = read_idx("t10k-images-idx3-ubyte.gz")[:args.test]
    test_y = read_idx("t10k-labels-idx1-ubyte.gz")[:args.test].astype(np.int64)
    draws = [draw(train_y, max(SHOTS), seed) for seed in range(args.seeds)]
    train_ids = np.unique(np.concatenate([d.ravel() for d in draws]))

    n_calib = calibration(tmp / "calibration", train_x, set(train_ids.tolist()))
    t0 = time.perf_counter()
    path = convert("efficientnet-lite0", "softmax", classes=len(FASHION),
                   quantize=tmp / "calibration").save(tmp / "int8.edgetune")
    convert_s = time.perf_counter() - t0
    bundle = Bundle.load(path)
    quant = bundle.manifest["quantization"]
    print(f"bundle with int8 base in {convert_s:.1f} s: {quant}")
    shipped_path = convert("efficientnet-lite0", "softmax", classes=len(FASHION),
                           quantize=True).save(tmp / "shipped.edgetune")
    shipped_quant = Bundle.load(shipped_path).manifest["quantization"]
    print(f"bundle calibrated on the shipped images: {shipped_quant}")
    variants = {"fp32": (path, "fp32"), "int8": (path, "int8"),
                SHIPPED: (shipped_path, "int8")}

    # -- speed, size, load time (one thread) --
    speed_images = np.stack([np.asarray(_decode(b)) for photo in PHOTOS
                             for b in jpeg_crops(photo, 4, seed=202)])
    sizes = {p: len(bundle.graph(ROLES[p])) for p in PRECISIONS}
    load = {p: [] for p in PRECISIONS}
    for _ in range(5):
        for p in PRECISIONS:
            data = bundle.graph(ROLES[p])
            t0 = time.perf_counter()
            make_session(data, threads=1)
            load[p].append(time.perf_counter() - t0)
    sessions = {}
    for p in PRECISIONS:
        inputs, outputs = bundle.io(ROLES[p])
        session = make_session(bundle.graph(ROLES[p]), threads=1)
        session.run([outputs["features"]], {inputs["image"]: speed_images[:4]})  # warm-up
        sessions[p] = (session, inputs["image"], outputs["features"])
    wait_quiet()
    busy, own, t0 = cpu_busy(), _self_cpu(), time.perf_counter()
    rates = {b: speed(sessions, speed_images, b, args.repeats) for b in (1, 4)}
    others = max(0.0, (cpu_busy() - busy - (_self_cpu() - own)) / (time.perf_counter() - t0))
    del sessions
    for b, r in rates.items():
        print(f"batch {b}: " + ", ".join(f"{p} {statistics.median(v):.1f} img/s"
                                         for p, v in r.items()))

    # -- features at each precision --
    from edgetune.inputs.image import prepare

    fashion_pixels = [prepare(img, (224, 224)) for img in
                      np.concatenate([test_x, train_x[train_ids]])]
    photo_train = {s: [(c, b) for c in PHOTOS for b in jpeg_crops(c, max(SHOTS), seed=s)]
                   for s in range(args.seeds)}
    photo_test = [(c, b) for c in PHOTOS for b in jpeg_crops(c, 30, seed=303)]
    feats, feature_s = {}, {}
    for p, (bundle_path, precision) in variants.items():
        extractor = Personalizer(bundle_path, tmp / f"features-{p}", threads=args.threads,
                                 precision=precision)
        t0 = time.perf_counter()
        f = extractor.features(fashion_pixels)
        feats[p] = {
            "fashion_test": f[:len(test_x)],
            "fashion_train": dict(zip(train_ids.tolist(), f[len(test_x):])),
            "photo_test": extractor.features([b for _, b in photo_test]),
            "photo_train": {s: extractor.features([b for _, b in items])
                            for s, items in photo_train.items()},
        }
        feature_s[p] = time.perf_counter() - t0
        extractor.close()
        print(f"{p}: features in {feature_s[p]:.1f} s")
    del fashion_pixels
    cosine = _cosine(feats["fp32"]["fashion_test"], feats["int8"]["fashion_test"])

    # -- few-shot accuracy --
    acc = {(task, p, k): [] for task in ("fashion", "photos") for p in variants
           for k in SHOTS}
    agree = {(task, k): [] for task in ("fashion", "photos") for k in SHOTS}
    fit_s = {p: [] for p in PRECISIONS}
    photo_truth = [c for c, _ in photo_test]
    run = 0
    for seed in range(args.seeds):
        for k in SHOTS:
            chosen = draws[seed][:, :k].ravel()
            per_class = [i for c in range(len(PHOTOS)) for i in range(c * max(SHOTS),
                                                                       c * max(SHOTS) + k)]
            for task in ("fashion", "photos"):
                labels = ([FASHION[c] for c in train_y[chosen]] if task == "fashion"
                          else [photo_train[seed][i][0] for i in per_class])
                truth = ([FASHION[c] for c in test_y] if task == "fashion" else photo_truth)
                answers = {}
                for p, (bundle_path, precision) in variants.items():
                    f = feats[p]
                    X = (np.stack([f["fashion_train"][i] for i in chosen.tolist()])
                         if task == "fashion" else f["photo_train"][seed][per_class])
                    test = f["fashion_test"] if task == "fashion" else f["photo_test"]
                    run += 1
                    with Personalizer(bundle_path, tmp / f"run{run}", threads=args.threads,
                                      seed=seed, precision=precision) as person:
                        person.add_features(X, labels)
                        t0 = time.perf_counter()
                        person.fit()
                        fit_s.setdefault(p, []).append(time.perf_counter() - t0)
                        answers[p] = [r["label"] for r in person.predict_features(test)]
                    acc[(task, p, k)].append(float(np.mean(
                        [a == t for a, t in zip(answers[p], truth)])))
                agree[(task, k)].append(float(np.mean(
                    [a == b for a, b in zip(answers["fp32"], answers["int8"])])))
            print(f"seed {seed} k={k}: " + ", ".join(
                f"{task} {p} {acc[(task, p, k)][-1]:.3f}" for task in ("fashion", "photos")
                for p in variants))

    # -- the section --
    def med(values):
        return statistics.median(values)

    def cell(task, p, k):
        values = acc[(task, p, k)]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"

    exported = _export_sizes(path, tmp, feats, train_y, draws[0], Personalizer)
    lines = [
        HEADING,
        "",
        machine("onnxruntime", "numpy", "Pillow") + " Speed and load time with one "
        f"onnxruntime thread; feature extraction and training with {args.threads}.",
        f"Code: {revision()}. Reproduce: `.venv/bin/python bench/int8.py` (about "
        f"{round(time.perf_counter() - START, -1):.0f} s here).",
        "",
        "One bundle (EfficientNet-Lite0, softmax head, `convert()`'s default optimizer) "
        f"with `quantize=` a folder of {n_calib} calibration images (32 photo crops and 32 "
        "Fashion-MNIST training images, none of them used below): QDQ, per channel, "
        f"quantized in {quant.get('seconds', 0):.1f} s; on the calibration "
        f"images its features have mean cosine {quant.get('mean_cosine', 0):.4f} to the "
        f"fp32 ones (on the {len(test_x)} Fashion-MNIST test images: mean "
        f"{cosine.mean():.4f}, min {cosine.min():.4f}). `fp32` is "
        "`Personalizer(..., precision=\"fp32\")` (graph `base`), `int8` is "
        "`precision=\"int8\"` (graph `base_int8`, a new profile's default on a bundle "
        "that has it). A second bundle, `quantize=True`, has its int8 base calibrated on "
        f"the {shipped_quant['calibration_images']} images that ship with edgetune "
        "(`edgetune.converter.calibration`: scikit-image's sample pictures, whole and "
        "cropped; what `edgetune convert` and the server's default bundle do by default; "
        f"features' mean cosine {shipped_quant['mean_cosine']:.4f} to fp32 on them): its "
        f"rows \"{SHIPPED}\" in the accuracy table.",
        "",
        "| | fp32 | int8 | int8/fp32 |",
        "|---|---:|---:|---:|",
    ]

    def row(what, a, b, fmt):
        lines.append(f"| {what} | {fmt(a)} | {fmt(b)} | {b / a:.2f}x |")

    for b in (1, 4):
        r = rates[b]
        row(f"base images/s, batch {b}, median of {args.repeats}", med(r["fp32"]),
            med(r["int8"]), lambda v: f"{v:.1f}")
        row(f"base images/s, batch {b}, best of {args.repeats}", max(r["fp32"]),
            max(r["int8"]), lambda v: f"{v:.1f}")
    row("base graph size (MB)", sizes["fp32"] / 1e6, sizes["int8"] / 1e6, lambda v: f"{v:.2f}")
    row("exported standalone model (MB)", exported["fp32"] / 1e6, exported["int8"] / 1e6,
        lambda v: f"{v:.2f}")
    row("session load time (ms), median of 5", 1e3 * med(load["fp32"]),
        1e3 * med(load["int8"]), lambda v: f"{v:.0f}")
    row(f"features of {len(test_x) + len(train_ids)} Fashion-MNIST + "
        f"{len(photo_test) + sum(len(v) for v in photo_train.values())} photos (s, "
        f"{args.threads} threads)", feature_s["fp32"], feature_s["int8"],
        lambda v: f"{v:.1f}")
    row("fit() (s, median)", med(fit_s["fp32"]), med(fit_s["int8"]), lambda v: f"{v:.2f}")

    shots = " | ".join(f"{k}/class" for k in SHOTS)
    lines += [
        "",
        f"Few-shot accuracy in %, mean ± standard deviation over {args.seeds} seeds; "
        "`fit()` with its defaults on each precision's own features; agreement: the "
        "fraction of test images on which the fp32 and int8 profiles give the same label "
        "(mean over seeds):",
        "",
        f"| task | precision | {shots} |",
        "|---|---" + "|---:" * len(SHOTS) + "|",
    ]
    tasks = {"fashion": f"Fashion-MNIST (10 classes, {len(test_x)} test)",
             "photos": f"photo crops (4 classes, {len(photo_test)} test)"}
    for task, name in tasks.items():
        for p in variants:
            lines.append(f"| {name} | {p} | " + " | ".join(cell(task, p, k) for k in SHOTS)
                         + " |")
        for p in ("int8", SHIPPED):
            ratios = [statistics.fmean(acc[(task, p, k)])
                      / statistics.fmean(acc[(task, "fp32", k)]) for k in SHOTS]
            lines.append(f"| {name} | {p}/fp32 | " + " | ".join(f"{r:.3f}x" for r in ratios)
                         + " |")
        lines.append(f"| {name} | agreement | " + " | ".join(
            f"{100 * statistics.fmean(agree[(task, k)]):.1f}" for k in SHOTS) + " |")
    lines += [
        "",
        "Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist` (k-shot draws "
        "as in the Fashion-MNIST section: seed s draws 20 per class, k-shot takes the first "
        "k; 28x28 grayscale to RGB 224x224 by `edgetune.inputs.image.prepare`); photo crops: "
        "`bench/common.py` `jpeg_crops` (random 60-100% crops of scikit-image's `chelsea`, "
        "`coffee`, `astronaut`, `rocket`, 224x224 JPEG q85; training seeds 0 to "
        f"{args.seeds - 1}, test seed 303; an easy task, since each class is one picture). "
        "Speed: 16 other crops (seed 202), the base session alone (no preparing), "
        f"one warm-up call; other processes on the shared machine used {others:.2f} of its "
        f"{os.cpu_count()} cores meanwhile (on average). The exported model is "
        "`Personalizer.export` of a profile trained on the first seed's 20-shot "
        "Fashion-MNIST features.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(Path(args.out), HEADING, section)


def _self_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _decode(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _export_sizes(path, tmp: Path, feats, train_y, ids, Personalizer) -> dict:
    out = {}
    chosen = ids.ravel().tolist()
    for p in PRECISIONS:
        with Personalizer(path, tmp / f"export-{p}", precision=p) as person:
            person.add_features(np.stack([feats[p]["fashion_train"][i] for i in chosen]),
                                [FASHION[c] for c in train_y[chosen]])
            person.fit()
            out[p] = person.export(tmp / f"{p}.onnx").stat().st_size
    return out


START = time.perf_counter()

if __name__ == "__main__":
    main()
