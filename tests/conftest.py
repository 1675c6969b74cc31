"""Shared test helpers: real data and a trainer for built graphs."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.runtime.trainer import GraphTrainer


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled handwritten digits: 1797 real 8x8 images, 10 classes,
    scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32) / 16.0, data.target.astype(np.int64)


def trainer_for(graphs, lr: float = 0.01, threads: int = 1, params=None) -> GraphTrainer:
    """A GraphTrainer for TrainingGraphs, starting from their initial values."""
    params = {p.train_input: (params or graphs.initial)[p.name] for p in graphs.params}
    by_name = {p.name: p for p in graphs.params}
    state = {s.train_input: np.zeros_like(params[by_name[s.name.rsplit(".", 1)[0]].train_input])
             for s in graphs.state}
    io = {s.train_input: s.train_output for s in graphs.params + graphs.state}
    return GraphTrainer(graphs.train.SerializeToString(), params, state, io,
                        epoch=graphs.train_epoch.SerializeToString(), lr=lr, threads=threads)
