"""The contract every registered head, loss and optimizer keeps, like scikit-learn's
check_estimator: the registries are read when the tests are collected, so a new entry
is checked without anyone remembering to add it here.

Each entry, combined with defaults for the other two parts, must: build training
graphs that pass the ONNX checker; train in onnxruntime through the runtime's own
trainer (`GraphTrainer.for_bundle(graphs.as_bundle())`) with the loss falling on real
data (scikit-learn's digits) and parameters staying finite; keep the class dimension
symbolic (the same graphs train 3 classes, then 5); and describe itself with a
`config()` that, through JSON as in a manifest, rebuilds an equal object.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune.converter.heads import CLASSES, HEADS, Head, SoftmaxClassifier
from edgetune.converter.losses import LOSSES, Loss
from edgetune.converter.optimizers import OPTIMIZERS, SGD, Adam, Optimizer
from edgetune.converter.train_graph import build_training_graphs
from edgetune.runtime.trainer import GraphTrainer

FIRST, SECOND = 3, 5  # classes before and after the class dimension grows
EPOCHS = 4

# Each registry entry with the default parts it is combined with: (head, loss, optimizer).
CASES = [pytest.param("head", name, id=f"head-{name}") for name in HEADS]
CASES += [pytest.param("loss", name, id=f"loss-{name}") for name in LOSSES]
CASES += [pytest.param("optimizer", name, id=f"optimizer-{name}") for name in OPTIMIZERS]


def _parts(kind: str, name: str) -> tuple[Head, Loss, Optimizer, float]:
    """The entry under test and defaults for the rest; the learning rate to train at."""
    if kind == "head":
        head = HEADS[name](classes=FIRST)
        return head, head.default_loss(), Adam(lr=0.01), 0.01
    if kind == "loss":
        return SoftmaxClassifier(classes=FIRST), LOSSES[name](), Adam(lr=0.01), 0.01
    optimizer = OPTIMIZERS[name]()
    # Plain gradient steps need a larger rate than their default to show progress in
    # a few epochs; adaptive ones train at their own default.
    lr = 0.5 if isinstance(optimizer, SGD) or name == "momentum" else optimizer.lr
    return SoftmaxClassifier(classes=FIRST), SoftmaxClassifier().default_loss(), optimizer, lr


def _subset(digits, classes: int, n: int = 300):
    x, y = digits
    keep = np.flatnonzero(y < classes)[:n]
    rng = np.random.default_rng(classes)
    keep = rng.permutation(keep)
    return x[keep], y[keep]


def _train(trainer: GraphTrainer, x, y, epochs: int = EPOCHS) -> list[float]:
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        losses.append(float(trainer.epoch(x[order], y[order], batch_size=32).mean()))
    return losses


def _finite(trainer: GraphTrainer) -> bool:
    return all(np.isfinite(v).all() for v in trainer.values.values())


def _roundtrip(obj, registry: dict) -> object:
    config = json.loads(json.dumps(obj.config()))
    by_class = {cls.__name__: cls for cls in registry.values()}
    name = config.pop("name")
    assert name in by_class, f"config name {name!r} names no class of the registry"
    return by_class[name](**config)


@pytest.mark.parametrize("kind,name", CASES)
def test_registry_entry_keeps_the_contract(kind, name, digits):
    head, loss, optimizer, lr = _parts(kind, name)
    features_dim = digits[0].shape[1]

    # The graphs build and pass the checker.
    model, shapes = head.build([features_dim])
    graphs = build_training_graphs(model, loss, optimizer, param_shapes=shapes)
    for graph in (graphs.train, graphs.train_epoch, graphs.infer):
        onnx.checker.check_model(graph, full_check=True)

    # The class dimension is symbolic: declared "classes" on the output layer.
    weight, bias = head.output_params
    shape_of = {p.name: p.shape for p in graphs.params}
    assert CLASSES in shape_of[weight] and shape_of[bias] == [CLASSES]

    # It trains in onnxruntime, through the runtime's trainer, on real data.
    bundle = graphs.as_bundle()
    trainer = GraphTrainer.for_bundle(bundle, lr=lr, threads=1)
    x, y = _subset(digits, FIRST)
    losses = _train(trainer, x, y)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.9 * losses[0], losses
    assert _finite(trainer)

    # The same graphs train more classes: grow the class dimension of every parameter
    # and slot (new rows start at zero), keep training.
    grown = {}
    for spec in bundle.params + bundle.state:
        value = trainer.values[spec["train_input"]]
        pad = [(0, SECOND - FIRST) if d == CLASSES else (0, 0) for d in spec["shape"]]
        grown[spec["train_input"]] = np.pad(value, pad)
    trainer = GraphTrainer.for_bundle(bundle, grown, lr=lr, threads=1)
    x5, y5 = _subset(digits, SECOND)
    more = _train(trainer, x5, y5)
    assert all(np.isfinite(more)), more
    assert more[-1] < more[0], more
    assert _finite(trainer)
    assert trainer.values[weight].shape[shape_of[weight].index(CLASSES)] == SECOND

    # infer gives one probability row per sample over the grown classes.
    session = ort.InferenceSession(graphs.infer.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {"features": x5[:7]}
    feeds.update({p.infer_input: trainer.values[p.train_input] for p in graphs.params})
    probabilities = session.run(["probabilities"], feeds)[0]
    assert probabilities.shape == (7, SECOND) and np.isfinite(probabilities).all()

    # config() round-trips (through JSON, as in a manifest) into an equal object.
    assert _roundtrip(head, HEADS) == head
    assert _roundtrip(loss, LOSSES) == loss
    assert _roundtrip(optimizer, OPTIMIZERS) == optimizer


def test_the_registries_are_not_empty():
    assert HEADS and LOSSES and OPTIMIZERS
    assert all(issubclass(c, Head) for c in HEADS.values())
    assert all(issubclass(c, Loss) for c in LOSSES.values())
    assert all(issubclass(c, Optimizer) for c in OPTIMIZERS.values())
