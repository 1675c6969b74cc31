"""The fit loop: epochs over the cached features, with rollback and early stopping.

    records = fit_epochs(trainer, Samples(X, y, columns), epochs=20, probe=probe,
                         follow=follow, accept=accept, rng=rng, stop=stop)

Each epoch runs the bundle's training graphs over the samples in a random order. Its
new parameters are accepted (handed to `accept`, which publishes them) only if the
samples still fit: a non-finite or exploding cross-entropy (`probe`) or parameter
rolls back to the last accepted parameters and lowers the learning rate tenfold, and
says so in a record (`"event": "rollback"`). Training stops early when the loss has
not improved for `patience` epochs. `follow` lets the owner bring the samples and the
class columns up to date before each epoch (samples or classes added meanwhile).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgetune.bundle import Bundle
from edgetune.runtime.trainer import GraphTrainer

__all__ = ["Samples", "balanced_weights", "divergence", "fit_epochs", "probe_loss",
           "suggested_lr"]

EXPLODE_FACTOR = 10.0  # an epoch loss this many times the one before training diverged
GROWTH_LIMIT = 1e3  # so did a parameter that grew this many times (+1) in one fit
MAX_ROLLBACKS = 3
DEFAULT_BATCH = 32


@dataclass
class Samples:
    """What a fit trains on: features [n, ...], labels [n] (class indices) and the class
    names of the parameters' columns."""

    X: np.ndarray
    y: np.ndarray
    columns: list[str]


Probe = Callable[[dict, np.ndarray, np.ndarray, np.ndarray | None], float]
Follow = Callable[[Samples, GraphTrainer, dict], tuple[Samples, dict]]
Accept = Callable[[dict, int, Samples], None]


def fit_epochs(trainer: GraphTrainer, samples: Samples, *, epochs: int, probe: Probe,
               follow: Follow, accept: Accept, rng: np.random.Generator,
               stop: threading.Event, batch_size: int | None = None, balanced: bool = True,
               early_stop: bool = True, patience: int = 5, min_delta: float = 1e-3,
               trainable: Sequence[str] = (),
               callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Train for up to `epochs` epochs (module doc); one record per epoch and per event.

    probe(values, X, y, weights): the samples' cross-entropy under `values`.
    follow(samples, trainer, good) -> (samples, good): called before each epoch; may
    remap `trainer.values` and `good` (the last accepted values) to new class columns.
    accept(values, step, samples): a good epoch's parameters. trainable: the parameter
    names watched for explosion.
    """
    records: list[dict] = []

    def report(record: dict) -> None:
        records.append(record)
        if callback:
            callback(record)

    lr = trainer.lr
    good = {k: v.copy() for k, v in trainer.values.items()}
    good_step, rollbacks, stale, best = trainer.step_count, 0, 0, None
    weights = balanced_weights(samples.y, len(samples.columns)) if balanced else None
    # What divergence is measured against: the fit before training, since a too large
    # lr can blow up the very first epoch.
    reference = probe(trainer.values, samples.X, samples.y, weights)
    reference = reference if np.isfinite(reference) else 0.0
    scale = {k: float(np.abs(v).max(initial=0.0)) for k, v in good.items()}
    for epoch in range(1, epochs + 1):
        if stop.is_set():
            break
        t0 = time.perf_counter()
        samples, good = follow(samples, trainer, good)
        X, y = samples.X, samples.y
        weights = balanced_weights(y, len(samples.columns)) if balanced else None
        size = min(batch_size or DEFAULT_BATCH, len(y))
        order = rng.permutation(len(y))
        losses = run_epoch(trainer, X[order], y[order],
                           None if weights is None else weights[order], size)
        loss = float(np.mean(losses))
        # An epoch's losses were measured before its updates: how the new parameters fit
        # the samples decides whether they are accepted (and published).
        after = probe(trainer.values, X, y, weights)
        problem = (f"the loss became {loss}" if not np.isfinite(loss) else
                   divergence(after, reference, trainer.values, scale, trainable))
        if problem:
            rollbacks += 1
            trainer.values = {k: v.copy() for k, v in good.items()}
            trainer.step_count = good_step
            trainer.lr = lr = lr * 0.1
            record = {"epoch": epoch, "event": "rollback", "loss": loss, "lr": lr,
                      "message": f"{problem}; rolled back to the last good parameters "
                                 f"and lowered the learning rate to {lr:.3g}"}
            warnings.warn(record["message"], RuntimeWarning, stacklevel=3)
            report(record)
            if rollbacks >= MAX_ROLLBACKS:
                report({"epoch": epoch, "event": "stopped",
                        "message": f"stopped after {rollbacks} rollbacks"})
                break
            continue
        good = {k: v.copy() for k, v in trainer.values.items()}
        good_step = trainer.step_count
        accept(good, good_step, samples)
        report({"epoch": epoch, "loss": loss, "lr": lr, "samples": int(len(y)),
                "seconds": time.perf_counter() - t0})
        if best is None or loss < best * (1 - min_delta):
            best, stale = loss, 0
        else:
            stale += 1
            if early_stop and stale >= patience:
                report({"epoch": epoch, "event": "early_stop",
                        "message": f"loss has not improved for {patience} epochs"})
                break
    return records


def run_epoch(trainer: GraphTrainer, X, y, weights, batch_size: int) -> np.ndarray:
    """One pass over X, y: the epoch graph in one call if the bundle has one, else one
    step call per mini-batch. The losses of the mini-batches."""
    if trainer.has_epoch_graph:
        return trainer.epoch(X, y, weights, batch_size)
    return np.array([trainer.step(X[i:i + batch_size], y[i:i + batch_size],
                                  None if weights is None else weights[i:i + batch_size])
                     for i in range(0, len(y), batch_size)])


def probe_loss(probabilities: Callable[[np.ndarray], np.ndarray], X, y, weights) -> float:
    """How well a head fits all samples, forward only: the weighted cross-entropy of
    `probabilities(X_chunk)`. A divergence check, not the training loss (whatever loss
    the bundle trains with)."""
    probs = np.concatenate([probabilities(X[i:i + 256]) for i in range(0, len(y), 256)])
    with np.errstate(all="ignore"):
        picked = np.clip(probs[np.arange(len(y)), y], 1e-30, None)
        rows = -np.log(picked)
        w = np.ones(len(y)) if weights is None else weights
        return float((rows * w).sum() / max(float(w.sum()), 1e-12))


def divergence(fit: float, reference: float, values: dict, scale: dict,
               trainable: Sequence[str]) -> str | None:
    """Why an epoch diverged, or None: the samples' cross-entropy became non-finite or
    exploded, or a parameter did."""
    if not np.isfinite(fit):
        return f"the loss became {fit}"
    if fit > EXPLODE_FACTOR * (reference + 1.0):
        return (f"the cross-entropy on the samples exploded to {fit:.4g} (it was "
                f"{reference:.4g} before training)")
    for name in trainable:
        value = values[name]
        if not np.isfinite(value).all():
            return f"parameter {name} became non-finite"
        peak = float(np.abs(value).max(initial=0.0))
        if peak > GROWTH_LIMIT * (1.0 + scale[name]):
            return f"parameter {name} exploded to {peak:.3g} (it was {scale[name]:.3g})"
    return None


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights so every present class counts equally: n / (classes present * count)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    present = max(int((counts > 0).sum()), 1)
    return (len(y) / (present * counts[y])).astype(np.float32)


def suggested_lr(bundle: Bundle) -> float:
    """The learning rate the bundle was made with (its manifest), else 0.01."""
    optimizer = bundle.manifest.get("optimizer")
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    return float(lr) if isinstance(lr, int | float) and lr > 0 else 0.01
