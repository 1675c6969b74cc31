"""End-to-end example: build training graphs, then train with onnxruntime alone.

Build time: a softmax head over 64 features, cross-entropy and Adam fused into plain
ONNX graphs. Run time: scikit-learn's bundled handwritten digits (real 8x8 scans)
train the head through the epoch graph, 20 samples per class, and the inference graph
is scored on held-out digits.

    python -m edgetune.examples.quickstart
"""

from __future__ import annotations

import time

import numpy as np

import edgetune as et
from edgetune.runtime.trainer import GraphTrainer, make_session


def load_digits_split(per_class: int = 20, seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float32) / 16.0, data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                            for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)
    return x[train], y[train], x[test], y[test]


def main(epochs: int = 30) -> dict:
    t0 = time.perf_counter()
    head = et.heads.SoftmaxClassifier(classes=10)
    model, shapes = head.build([64])
    graphs = et.build_training_graphs(model, head.default_loss(), et.optim.Adam(lr=0.05),
                                      param_shapes=shapes)
    build_s = time.perf_counter() - t0
    print(f"built train, train_epoch and infer graphs in {build_s:.2f} s "
          f"({len(graphs.train.graph.node)} nodes in the step)")

    x, y, x_test, y_test = load_digits_split()
    trainer = GraphTrainer.for_bundle(graphs.as_bundle(), lr=0.05)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        loss = float(trainer.epoch(x[order], y[order], batch_size=32).mean())
        if epoch == 1 or epoch % 10 == 0:
            print(f"epoch {epoch:3d}  loss {loss:.4f}")
    train_s = time.perf_counter() - t0

    infer = make_session(graphs.infer.SerializeToString())
    feeds = {"features": x_test, **{p.infer_input: trainer.values[p.train_input]
                                    for p in graphs.params}}
    accuracy = float((infer.run(["probabilities"], feeds)[0].argmax(1) == y_test).mean())
    print(f"trained {epochs} epochs on {len(x)} digits in {train_s:.2f} s; "
          f"accuracy on {len(y_test)} held-out digits: {accuracy:.3f}")
    return {"loss": loss, "accuracy": accuracy}


if __name__ == "__main__":
    main()
