"""Few-shot accuracy on Fashion-MNIST through the real EfficientNet-Lite0 bundle.

10 classes; 1, 5, 10 and 20 training samples per class drawn from the training set
with 3 seeds (the k-shot draw is the first k of the seed's 20 per class); test set: the
first 1000 images of t10k. Each 28x28 grayscale image becomes RGB 224x224 through the
runtime's `prepare` (Lanczos), and the bundle's base graph computes its 1280 features
once; every method then works on those same features:

- prototypes: what `Personalizer.predict` answers before training (cosine to class means);
- softmax head trained by `Personalizer.fit()` with its defaults, once for a bundle built
  with SGD (lr 0.01, `convert()`'s default before issue 12) and once with Adam (lr 1e-3);
- scikit-learn `LogisticRegression` (C=1.0, lbfgs, max_iter=1000) on the raw features.

Writes the section "Few-shot accuracy on Fashion-MNIST" of BENCHMARKS.md.

    .venv/bin/python bench/fashion_accuracy.py
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import os
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import BENCHMARKS, cpu_busy, machine, revision, wait_quiet, write_section

DATA = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot")
SHOTS = (1, 5, 10, 20)
HEADING = "## Few-shot accuracy on Fashion-MNIST"


def read_idx(name: str) -> np.ndarray:
    """An idx file (gzip) as a numpy array: uint8 [n, 28, 28] images or [n] labels."""
    raw = gzip.decompress((DATA / name).read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` samples of each class, class by class, for one seed."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                     for c in range(len(NAMES))])  # [classes, per_class]


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def accuracy(results: list[dict], truth: np.ndarray) -> float:
    return float(np.mean([NAMES.index(r["label"]) == t for r, t in zip(results, truth)]))


def bundle_for(optimizer, directory: Path) -> Path:
    from edgetune.converter.convert import convert
    from edgetune.converter.heads import SoftmaxClassifier

    bundle = convert(base="efficientnet-lite0", head=SoftmaxClassifier(len(NAMES)),
                     optimizer=optimizer)
    return bundle.save(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=1000, help="first N images of t10k")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(BENCHMARKS))
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from edgetune.converter.optimizers import SGD, Adam
    from edgetune.inputs.image import prepare
    from edgetune.runtime.personalizer import Personalizer
    from edgetune.runtime.store import SampleStore

    train_x, train_y = read_idx("train-images-idx3-ubyte.gz"), read_idx(
        "train-labels-idx1-ubyte.gz")
    test_x = read_idx("t10k-images-idx3-ubyte.gz")[:args.test]
    test_y = read_idx("t10k-labels-idx1-ubyte.gz")[:args.test].astype(np.int64)
    draws = [draw(train_y, max(SHOTS), seed) for seed in range(args.seeds)]
    train_ids = np.unique(np.concatenate([d.ravel() for d in draws]))

    tmp = Path(tempfile.mkdtemp(prefix="edgetune-fashion-"))
    atexit.register(shutil.rmtree, tmp, True)  # profiles hold bundle copies (13 MB each)
    t0 = time.perf_counter()
    bundles = {
        "SGD lr 0.01": bundle_for(SGD(), tmp / "sgd.edgetune"),  # convert()'s default
        "Adam lr 1e-3": bundle_for(Adam(lr=1e-3), tmp / "adam.edgetune"),
    }
    convert_s = time.perf_counter() - t0

    # Features once, through the bundle's base graph (Personalizer.features). prepare()
    # needs min_size lowered: its default (32) rejects 28x28 images, and so does
    # Personalizer.add_samples, which has no way to pass it.
    extractor = Personalizer(bundles["SGD lr 0.01"], tmp / "features-profile",
                             threads=args.threads)
    t0 = time.perf_counter()
    pixels = [prepare(img, (224, 224), min_size=28) for img in
              np.concatenate([test_x, train_x[train_ids]])]
    prepare_s = time.perf_counter() - t0
    wait_quiet()  # the timing is only informative, but a shared machine distorts it
    busy, own, t0 = cpu_busy(), _self_cpu(), time.perf_counter()
    feats = extractor.features(pixels)
    features_s = time.perf_counter() - t0
    others = max(0.0, (cpu_busy() - busy - (_self_cpu() - own)) / features_s)
    extractor.close()
    del pixels
    test_f = feats[:len(test_x)]
    train_f = dict(zip(train_ids.tolist(), feats[len(test_x):]))
    n_images = len(feats)
    print(f"{n_images} images: prepare {prepare_s:.1f} s, base {features_s:.1f} s "
          f"({features_s / n_images * 1e3:.1f} ms/image, {args.threads} threads)")

    methods = ["prototypes (predict before fit)",
               *(f"softmax head, fit() defaults, {name}" for name in bundles),
               "LogisticRegression (sklearn)"]
    acc = {(m, k): [] for m in methods for k in SHOTS}
    fit_info = {name: {"seconds": [], "epochs": [], "rollbacks": []} for name in bundles}
    for seed, ids in enumerate(draws):
        for k in SHOTS:
            chosen = ids[:, :k].ravel()  # class by class
            X = np.stack([train_f[i] for i in chosen.tolist()])
            y = train_y[chosen].astype(np.int64)
            labels = [NAMES[c] for c in y]
            for b, (name, path) in enumerate(bundles.items()):
                profile = tmp / f"s{seed}-k{k}-{b}"
                profile.mkdir()
                # The store gets the features first, so the Personalizer opens it with
                # its classes (store.add on an open Personalizer does not sync them).
                with SampleStore(profile / "samples.sqlite", feature_shape=(1280,)) as store:
                    store.add(X, labels)
                p = Personalizer(path, profile, threads=args.threads, seed=seed)
                if b == 0:
                    answers = p.predict_features(test_f)
                    assert answers[0]["source"] == "prototypes"
                    acc[(methods[0], k)].append(accuracy(answers, test_y))
                t0 = time.perf_counter()
                records = p.fit()
                fit_info[name]["seconds"].append(time.perf_counter() - t0)
                fit_info[name]["epochs"].append(max(r.get("epoch", 0) for r in records))
                fit_info[name]["rollbacks"].append(
                    sum(r.get("event") == "rollback" for r in records))
                answers = p.predict_features(test_f)
                assert answers[0]["source"] == "head"
                acc[(methods[1 + b], k)].append(accuracy(answers, test_y))
                p.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs convergence notes at 1000 iterations
                clf = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
            acc[(methods[-1], k)].append(float((clf.predict(test_f) == test_y).mean()))
            print(f"seed {seed} k={k}: " + ", ".join(
                f"{m.split(',')[-1].strip()} {acc[(m, k)][-1]:.3f}" for m in methods))

    def mean(m, k):
        return statistics.fmean(acc[(m, k)])

    def cell(m, k):
        values = acc[(m, k)]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"

    ref = methods[-1]
    shots_cols = " | ".join(f"{k}/class" for k in SHOTS)
    lines = [
        HEADING,
        "",
        machine("onnxruntime", "numpy", "scikit-learn", "Pillow") +
        f" onnxruntime with {args.threads} threads.",
        f"Code: {revision()}. Reproduce: `.venv/bin/python bench/fashion_accuracy.py` "
        f"(about {round(time.perf_counter() - START, -1):.0f} s here).",
        "",
        f"Training samples: k per class from the 60k training set, {args.seeds} seeds "
        f"(seed s draws 20 per class with `numpy.random.default_rng(s)`; k-shot uses the first "
        f"k of them). Test: the first {args.test} images of t10k, the same for every run. "
        "Each 28x28 grayscale image is repeated into RGB and resized to 224x224 by "
        "`edgetune.inputs.image.prepare` (Lanczos; `min_size=28`, since its default of 32 "
        "rejects 28x28 images), then the bundle's base graph computes its 1280 features "
        f"(`Personalizer.features`, batches of 16): {n_images} images in {features_s:.1f} s, "
        f"{features_s / n_images * 1e3:.1f} ms per image (plus {prepare_s:.1f} s of `prepare`; "
        f"other processes on the shared machine used {others:.2f} cores meanwhile). "
        "Features are computed once and reused; every method below sees the same features. "
        "The samples go into each profile's `SampleStore` before the `Personalizer` opens it, "
        "and predictions go through `Personalizer.predict_features`; so no timing here "
        "includes the base's forward pass.",
        "",
        "Accuracy relative to LogisticRegression on the same features (mean over seeds "
        "of each method divided by LogisticRegression's mean):",
        "",
        f"| method | {shots_cols} |",
        "|---" + "|---:" * len(SHOTS) + "|",
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{mean(m, k) / mean(ref, k):.2f}x"
                                               for k in SHOTS) + " |")
    lines += [
        "",
        f"Accuracy in % on {args.test} test images, mean ± standard deviation over "
        f"{args.seeds} seeds:",
        "",
        f"| method | {shots_cols} |",
        "|---" + "|---:" * len(SHOTS) + "|",
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(m, k) for k in SHOTS) + " |")
    fits = []
    for name, info in fit_info.items():
        fits.append(f"{name}: stopped after {min(info['epochs'])}-{max(info['epochs'])} epochs, "
                    f"median {statistics.median(info['seconds']):.2f} s per fit, "
                    f"{sum(info['rollbacks'])} rollbacks in all")
    lines += [
        "",
        "Settings. Bundles: `convert(base=\"efficientnet-lite0\", "
        "head=SoftmaxClassifier(10), optimizer=...)` with `SGD()` (lr 0.01, `convert()`'s "
        "default optimizer then) and with `Adam(lr=1e-3)` (the DESIGN.md example); built in "
        f"{convert_s:.1f} s. `fit()` defaults: at most 20 epochs, batch size min(32, samples), "
        "the bundle's lr, class-balanced sample weights, early stop after 5 epochs without a "
        "0.1% loss improvement; the head starts from weights imprinted from the class means "
        "(so before the first step it answers like the prototypes). " + "; ".join(fits) + ". "
        "Prototypes: `PrototypeClassifier` (cosine to the normalized class mean, temperature "
        "0.1), as `Personalizer.predict` answers before any training. LogisticRegression: "
        "scikit-learn defaults (L2, C=1.0, lbfgs, multinomial) with max_iter=1000, on the raw "
        "(unscaled) features.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(Path(args.out), HEADING, section)


START = time.perf_counter()

if __name__ == "__main__":
    main()
