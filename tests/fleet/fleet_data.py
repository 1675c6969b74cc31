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


def fashion_features(bundle: str, per_class: int, test: int, path: Path) -> dict:
    """{"X", "labels"}: `per_class` training images of each class (seeded draw); {"X_test",
    "test_labels"}: the first `test` images of t10k; features of the bundle's base, kept
    in `path` (.npz) once computed. bench/fleet.py uses it too."""
    import tempfile

    from edgetune.runtime.personalizer import Personalizer

    if not path.exists():
        images, y = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
        rng = np.random.default_rng(0)
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                               for c in range(10)])
        t_images = read_idx("t10k-images-idx3-ubyte.gz")[:test]
        t_y = read_idx("t10k-labels-idx1-ubyte.gz")[:test]
        with tempfile.TemporaryDirectory() as tmp, Personalizer(bundle, profile=tmp) as p:
            X = np.concatenate([p.features(list(images[pick[i:i + 64]]))
                                for i in range(0, len(pick), 64)])
            X_t = np.concatenate([p.features(list(t_images[i:i + 64]))
                                  for i in range(0, len(t_images), 64)])
        np.savez(path, X=X, y=y[pick], X_test=X_t, test_y=t_y)
    d = np.load(path)
    return {"X": d["X"], "labels": [NAMES[i] for i in d["y"]], "X_test": d["X_test"],
            "test_labels": [NAMES[i] for i in d["test_y"]]}


@pytest.fixture(scope="session")
def fashion(fashion_bundle, edgetune_cache) -> dict:
    """fashion_features of TRAIN_PER_CLASS training images of each class and the first
    TEST_IMAGES of t10k, computed once (kept in the bases' cache)."""
    return fashion_features(fashion_bundle, TRAIN_PER_CLASS, TEST_IMAGES,
                            Path(edgetune_cache) / f"fleet-fashion-{TRAIN_PER_CLASS}-"
                                                   f"{TEST_IMAGES}.npz")
