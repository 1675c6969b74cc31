"""Fleet fixtures: Fashion-MNIST features from the default base (EfficientNet-Lite0),
computed once per session (and kept in the bases' cache). A plugin of tests/conftest.py,
not a conftest.py of its own: tests import `conftest` by name, and a second one would
shadow it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

DATA = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "boot")
TRAIN_PER_CLASS = 60
TEST_IMAGES = 500


def read_idx(name: str) -> np.ndarray:
    raw = gzip.decompress((DATA / name).read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.fixture(scope="session")
def fashion_bundle(edgetune_cache, tmp_path_factory) -> str:
    from edgetune.converter.convert import convert

    built = convert("efficientnet-lite0", "softmax", "adam", classes=10,
                    cache_dir=edgetune_cache)
    return str(built.save(tmp_path_factory.mktemp("fleet") / "fashion.edgetune"))


@pytest.fixture(scope="session")
def fashion(fashion_bundle, edgetune_cache, tmp_path_factory) -> dict:
    """{"X", "labels"}: TRAIN_PER_CLASS training images of each class; {"X_test",
    "test_labels"}: the first TEST_IMAGES of t10k; features of the bundle's base."""
    from edgetune.runtime.personalizer import Personalizer

    cache = Path(edgetune_cache) / f"fleet-fashion-{TRAIN_PER_CLASS}-{TEST_IMAGES}.npz"
    if not cache.exists():
        images, y = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
        rng = np.random.default_rng(0)
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), TRAIN_PER_CLASS,
                                          replace=False) for c in range(10)])
        test = read_idx("t10k-images-idx3-ubyte.gz")[:TEST_IMAGES]
        test_y = read_idx("t10k-labels-idx1-ubyte.gz")[:TEST_IMAGES]
        with Personalizer(fashion_bundle, profile=tmp_path_factory.mktemp("features")) as p:
            X = np.concatenate([p.features(list(images[pick[i:i + 64]]))
                                for i in range(0, len(pick), 64)])
            X_test = np.concatenate([p.features(list(test[i:i + 64]))
                                     for i in range(0, len(test), 64)])
        np.savez(cache, X=X, y=y[pick], X_test=X_test, test_y=test_y)
    data = np.load(cache)
    return {"X": data["X"], "labels": [NAMES[i] for i in data["y"]],
            "X_test": data["X_test"], "test_labels": [NAMES[i] for i in data["test_y"]]}
