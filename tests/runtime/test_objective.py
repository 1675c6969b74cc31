"""The fit's objective (runtime/objective.py, numpy) is the very loss the training
graphs lower: for every loss, on real digits, the numpy rows' weighted mean equals the
train graph's loss value."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import trainer_for

from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.losses import (
    BinaryCrossEntropyWithLogits,
    MeanSquaredError,
    MultiClassHinge,
    OneVsRestHinge,
    SoftmaxCrossEntropy,
)
from edgetune.converter.optimizers import SGD
from edgetune.converter.train_graph import build_training_graphs
from edgetune.runtime.fitting import probe_loss
from edgetune.runtime.objective import row_losses

LOSSES = [SoftmaxCrossEntropy(), SoftmaxCrossEntropy(label_smoothing=0.1),
          MultiClassHinge(),
          MultiClassHinge(margin=0.5, p=2), OneVsRestHinge(), OneVsRestHinge(p=1),
          MeanSquaredError(), BinaryCrossEntropyWithLogits()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: repr(loss))
def test_objective_rows_are_the_graphs_loss(digits, loss):
    x, y = digits[0][:40], digits[1][:40]
    head, shapes = SoftmaxClassifier(classes=10).build([64])
    rng = np.random.default_rng(1)
    init = {"head.weight": (rng.standard_normal((10, 64)) * 0.3).astype(np.float32),
            "head.bias": np.linspace(-1, 1, 10).astype(np.float32)}
    weights = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    graphs = build_training_graphs(head, loss, SGD(lr=0.1), param_shapes=shapes)
    graph_loss = trainer_for(graphs, lr=0.1, params=init).step(x, y, weights)
    rows = row_losses(loss.config())
    assert rows is not None, f"the runtime does not know {type(loss).__name__}"
    ours = probe_loss(lambda chunk: chunk @ init["head.weight"].T + init["head.bias"], x, y,
                      weights, rows)
    assert ours == pytest.approx(graph_loss, rel=1e-5)
