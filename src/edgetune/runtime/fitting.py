"""The fit loop: epochs over the cached features, keeping the best parameters seen.

    records = fit_epochs(trainer, Samples(X, y, columns), epochs=100, probe=probe,
                         follow=follow, accept=accept, rng=rng, stop=stop)

Each epoch runs the bundle's training graphs over the samples in a random order, then
measures the **objective**: the bundle's own loss (with its L2 term) on all of the
user's samples, with class-balanced weights (`probe`, see .objective). Why this
criterion: the user has no held-out set to spare (tens of samples), it is exactly what
the head is trained to lower, and for the convex head problem its plateau means
convergence.

- The best parameters seen, the starting ones included, are what the fit keeps: a fit
  never ends with parameters that fit the samples worse than those it started from.
  They are handed to `accept` (which publishes them) whenever they improve.
- A non-finite or exploding objective or parameter rolls back to the best parameters
  and lowers the learning rate tenfold (`"event": "rollback"`).
- Training stops when the objective has improved by less than `min_delta` (relative)
  over `patience` epochs (`"event": "early_stop"`: converged).
- The last record is `"event": "kept"`: which epoch's parameters were kept (0: the
  starting ones), their objective and the starting objective.

`follow` lets the owner bring the samples and the class columns up to date before each
epoch (samples or classes added meanwhile).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgetune.runtime.objective import row_losses
from edgetune.runtime.trainer import GraphTrainer, suggested_lr

__all__ = ["MIN_DELTA", "PATIENCE", "Samples", "balanced_weights", "divergence",
           "fit_epochs", "probe_loss", "suggested_lr"]

EXPLODE_FACTOR = 10.0  # an epoch loss this many times the one before training diverged
GROWTH_LIMIT = 1e3  # so did a parameter that grew this many times (+1) in one fit
MAX_ROLLBACKS = 3
DEFAULT_BATCH = 32
PATIENCE = 10  # epochs over which the objective must improve by MIN_DELTA
MIN_DELTA = 1e-3


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


class Permutations(Protocol):
    """Where epoch orders come from: runtime.shuffle.Shuffle, or numpy's Generator."""

    def permutation(self, n: int) -> np.ndarray: ...


def fit_epochs(trainer: GraphTrainer, samples: Samples, *, epochs: int, probe: Probe,
               follow: Follow, accept: Accept, rng: Permutations,
               stop: threading.Event, batch_size: int | None = None, balanced: bool = True,
               early_stop: bool = True, patience: int = PATIENCE,
               min_delta: float = MIN_DELTA, trainable: Sequence[str] = (),
               callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Train for up to `epochs` epochs (module doc); one record per epoch and per event.

    probe(values, X, y, weights): the samples' cross-entropy under `values`.
    follow(samples, trainer, best) -> (samples, best): called before each epoch; may
    remap `trainer.values` and `best` (the best values so far) to new class columns.
    accept(values, step, samples): parameters better than any before. trainable: the
    parameter names watched for explosion.
    """
    records: list[dict] = []

    def report(record: dict) -> None:
        records.append(record)
        if callback:
            callback(record)

    def objective(values, samples) -> float:
        weights = balanced_weights(samples.y, len(samples.columns)) if balanced else None
        value = probe(values, samples.X, samples.y, weights)
        return value if np.isfinite(value) else float("inf")

    lr = trainer.lr
    best = {k: v.copy() for k, v in trainer.values.items()}
    best_step, best_epoch, rollbacks = trainer.step_count, 0, 0
    start = best_objective = objective(best, samples)
    # What divergence is measured against: the fit before training, since a too large
    # lr can blow up the very first epoch.
    reference = start if np.isfinite(start) else 0.0
    scale = {k: float(np.abs(v).max(initial=0.0)) for k, v in best.items()}
    window: list[float] = []  # the best objective after each recent epoch
    for epoch in range(1, epochs + 1):
        if stop.is_set():
            report({"epoch": epoch - 1, "event": "stopped", "message": "stopped on request"})
            break
        t0 = time.perf_counter()
        before = samples
        samples, best = follow(samples, trainer, best)
        if samples is not before:  # new samples or classes: the objective changed
            best_objective = objective(best, samples)
            window.clear()
        X, y = samples.X, samples.y
        weights = balanced_weights(y, len(samples.columns)) if balanced else None
        size = min(batch_size or DEFAULT_BATCH, len(y))
        order = rng.permutation(len(y))
        losses = run_epoch(trainer, X[order], y[order],
                           None if weights is None else weights[order], size)
        loss = float(np.mean(losses))
        # An epoch's losses were measured before its updates: how the new parameters fit
        # all the samples decides whether they are kept (and published).
        after = probe(trainer.values, X, y, weights)
        problem = (f"the loss became {loss}" if not np.isfinite(loss) else
                   divergence(after, reference, trainer.values, scale, trainable))
        if problem:
            rollbacks += 1
            trainer.values = {k: v.copy() for k, v in best.items()}
            trainer.step_count = best_step
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
        if after < best_objective:
            best = {k: v.copy() for k, v in trainer.values.items()}
            best_step, best_epoch, best_objective = trainer.step_count, epoch, after
            accept(best, best_step, samples)
        report({"epoch": epoch, "loss": loss, "objective": after, "lr": lr,
                "samples": int(len(y)), "seconds": time.perf_counter() - t0})
        window.append(best_objective)
        if len(window) > patience:
            old = window.pop(0)
            if early_stop and old - best_objective <= min_delta * abs(old):
                report({"epoch": epoch, "event": "early_stop",
                        "message": f"converged: the objective improved by less than "
                                   f"{min_delta:.0%} in {patience} epochs"})
                break
    trainer.values = {k: v.copy() for k, v in best.items()}
    trainer.step_count = best_step
    kept = (f"kept the parameters of epoch {best_epoch} (objective {best_objective:.4g}, "
            f"from {start:.4g})" if best_epoch else
            f"kept the starting parameters: no epoch fit the samples better "
            f"(objective {start:.4g})")
    report({"epoch": best_epoch, "event": "kept", "objective": best_objective,
            "start": start, "improved": best_epoch > 0, "message": kept})
    return records


def run_epoch(trainer: GraphTrainer, X, y, weights, batch_size: int) -> np.ndarray:
    """One pass over X, y: the epoch graph in one call if the bundle has one, else one
    step call per mini-batch. The losses of the mini-batches."""
    if trainer.has_epoch_graph:
        return trainer.epoch(X, y, weights, batch_size)
    return np.array([trainer.step(X[i:i + batch_size], y[i:i + batch_size],
                                  None if weights is None else weights[i:i + batch_size])
                     for i in range(0, len(y), batch_size)])


def probe_loss(scores: Callable[[np.ndarray], np.ndarray], X, y, weights,
               rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> float:
    """How well a head fits all samples, forward only: the weighted mean of `rows(
    scores(X_chunk), y)` (the bundle's loss on the logits, see .objective), or without
    `rows` the cross-entropy of `scores` taken as probabilities."""
    out = np.concatenate([scores(X[i:i + 256]) for i in range(0, len(y), 256)])
    with np.errstate(all="ignore"):
        if rows is None:
            values = -np.log(np.clip(out[np.arange(len(y)), y], 1e-30, None))
        else:
            values = rows(out.astype(np.float64), y)
        w = np.ones(len(y)) if weights is None else weights
        return float((values * w).sum() / max(float(w.sum()), 1e-12))


class BundleProbe:
    """The fit's objective under some parameters (`probe` of fit_epochs), forward only
    through the bundle's infer graph: the bundle's loss on the logits plus the graphs'
    L2 term, or the cross-entropy of the probabilities for a loss this runtime does not
    know (.objective). The manifest is read once: a probe runs every epoch."""

    def __init__(self, bundle, session: Callable, io, trainable: Sequence[str]):
        names, outputs = io  # session(): the infer session (made when first needed)
        self.rows = row_losses(bundle.manifest.get("loss")) if "logits" in outputs else None
        self.output = outputs["logits" if self.rows else "probabilities"]
        self.features, self.session, self.trainable = names["features"], session, trainable
        self.params = [(p["infer_input"], p["train_input"]) for p in bundle.params]
        l2 = bundle.manifest.get("l2") or 0.0
        self.l2 = float(l2) if self.rows and isinstance(l2, int | float) and l2 > 0 else 0.0

    def __call__(self, values: dict, X, y, weights) -> float:
        feeds = {infer: values[train] for infer, train in self.params}

        def scores(chunk):
            return self.session().run([self.output], {self.features: chunk, **feeds})[0]

        value = probe_loss(scores, X, y, weights, self.rows)
        if self.l2:  # the graphs' L2 term
            value += 0.5 * self.l2 * sum(float(np.sum(np.square(values[n], dtype=np.float64)))
                                         for n in self.trainable)
        return value


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
