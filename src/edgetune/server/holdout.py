"""Per-class accuracy on held-out samples: what the page shows after training.

The profile's own head is trained on every sample, so it cannot be scored on them.
Instead a copy of the training is run on part of the samples (a throwaway profile with
the same bundle, classes, cached features and settings) and scored on the rest, as
Teachable Machine does with its 85/15 split::

    report = held_out_accuracy(personalizer, epochs=30, lr=None, batch_size=None,
                               early_stop=True)
    report["per_class"]["mug"]  # {"n": 3, "correct": 3, "accuracy": 1.0}

No base runs again (the features are cached), so this costs one head fit.
"""

from __future__ import annotations

import tempfile

import numpy as np

from edgetune.runtime.personalizer import Personalizer

__all__ = ["HELD_OUT", "held_out_accuracy", "split"]

HELD_OUT = 0.2  # the part of each class's samples kept out of training


def split(y: np.ndarray, n_classes: int, fraction: float = HELD_OUT,
          seed: int = 0) -> np.ndarray:
    """A mask of held-out rows: `fraction` of each class (at least one), chosen at random
    with a fixed seed; a class with a single sample keeps it for training."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for k in range(n_classes):
        rows = np.flatnonzero(y == k)
        if len(rows) >= 2:
            take = min(len(rows) - 1, max(1, round(fraction * len(rows))))
            test[rng.choice(rows, take, replace=False)] = True
    return test


def held_out_accuracy(p: Personalizer, *, epochs: int, lr: float | None,
                      batch_size: int | None, early_stop: bool,
                      fraction: float = HELD_OUT) -> dict | None:
    """{"accuracy", "n", "train", "fraction", "per_class": {class: {"n", "correct",
    "accuracy"}}} of a head trained like `p`'s on the other samples, or None when no
    class has two samples."""
    X, y = p.store.features_and_labels()
    names = p.store.class_names()
    test = split(y, len(names), fraction)
    if not test.any():
        return None
    with tempfile.TemporaryDirectory(prefix="edgetune-holdout-") as tmp, \
            Personalizer(p.bundle, profile=tmp, threads=1,
                         precision=p.precision) as copy:
        for name in names:  # the same columns, in the same order
            copy.add_class(name)
        copy.add_features(X[~test], [names[k] for k in y[~test]])
        copy.fit(epochs=epochs, lr=lr, batch_size=batch_size, early_stop=early_stop)
        answers = copy.predict_features(X[test], open_set=False)
    truth = [names[k] for k in y[test]]
    per_class = {}
    for name in names:
        n = sum(1 for t in truth if t == name)
        correct = sum(1 for t, a in zip(truth, answers) if t == name and a["label"] == t)
        per_class[name] = {"n": n, "correct": correct,
                           "accuracy": correct / n if n else None}
    right = sum(c["correct"] for c in per_class.values())
    return {"accuracy": right / len(truth), "n": len(truth), "train": int((~test).sum()),
            "fraction": fraction, "per_class": per_class}
