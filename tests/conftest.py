"""Shared test helpers: real data and a trainer for built graphs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgetune.runtime.trainer import GraphTrainer

# Fixtures of a test folder live in a plugin module there (a second conftest.py would
# shadow this one, which tests import by name).
pytest_plugins = ["fleet.fleet_data"]


def pytest_sessionfinish(session, exitstatus):
    """`make test` sets EDGETUNE_REQUIRE_ALL=1: there a skipped test fails the run, since
    the set-up installs everything every test needs (the reasons are listed by -ra)."""
    if not os.environ.get("EDGETUNE_REQUIRE_ALL") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"EDGETUNE_REQUIRE_ALL: {len(skipped)} tests were skipped; "
                            f"`make test` must run every test", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled handwritten digits: 1797 real 8x8 images, 10 classes,
    scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32) / 16.0, data.target.astype(np.int64)


def trainer_for(graphs, lr: float = 0.01, threads: int = 1, params=None) -> GraphTrainer:
    """A GraphTrainer for TrainingGraphs, starting from their initial values (or
    `params`, by parameter name)."""
    return GraphTrainer.for_bundle(graphs.as_bundle(params), lr=lr, threads=threads)


def shuffled_epochs(trainer: GraphTrainer, x, y, epochs: int, batch_size: int,
                    seed: int = 0) -> list[float]:
    """Train `epochs` epochs, each on a fresh shuffle of (x, y); the mean loss of each."""
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        losses.append(float(trainer.epoch(x[order], y[order], batch_size=batch_size).mean()))
    return losses


PHOTO_CLASSES = ("chelsea", "coffee", "astronaut", "rocket")


def photo_crops(per_class: int = 8, size: int = 224, seed: int = 0,
                classes=PHOTO_CLASSES):
    """Real photos: random crops (60-100% of the short side) and flips of scikit-image's
    bundled pictures, one class per picture, resized with Pillow. uint8 [n, size, size, 3]."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(classes):
        photo = getattr(data, name)()
        h, w = photo.shape[:2]
        for _ in range(per_class):
            side = int(min(h, w) * rng.uniform(0.6, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[top:top + side, left:left + side])
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(np.asarray(crop.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int64)


@pytest.fixture(scope="session")
def photos():
    return photo_crops()


@pytest.fixture(scope="session")
def edgetune_cache(tmp_path_factory):
    """Bases are built once per test session, in a cache outside the repository."""
    path = os.environ.get("EDGETUNE_CACHE") or str(tmp_path_factory.mktemp("cache"))
    return path


def bundle_trainer(bundle, lr=None, threads=1):
    """A GraphTrainer for a loaded or built Bundle, from its manifest alone."""
    return GraphTrainer.for_bundle(bundle, lr=lr, threads=threads)


def tiny_base(path, size=16, features=8):
    """A small image base: uint8 NHWC -> (x - 127) / 128 -> Conv -> pool -> [N, F]."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [features, 3, 3, 3],
                           rng.standard_normal(features * 27).astype(np.float32) * 0.3)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", ["f", "c127"], ["centered"]),
        helper.make_node("Div", ["centered", "c128"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["emb"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", onnx.TensorProto.UINT8,
                                                      ["N", size, size, 3])],
        [helper.make_tensor_value_info("emb", onnx.TensorProto.FLOAT, ["N", features])],
        [w, helper.make_tensor("c127", onnx.TensorProto.FLOAT, [], [127.0]),
         helper.make_tensor("c128", onnx.TensorProto.FLOAT, [], [128.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
