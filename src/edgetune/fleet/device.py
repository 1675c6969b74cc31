"""One device of a fleet, without Flower: local training and evaluation of a global head.

A round on a device: take the global parameters (class columns named by the fleet's
vocabulary), train E local epochs with the bundle's own training graphs on the
device's cached features (the runtime's GraphTrainer and fit loop: the same loop, the
same objective and rollbacks as `Personalizer.fit`), and give back the new parameters.
Evaluation scores the global parameters on the device's held-out samples.

Two kinds of device share this code: a **profile** (`ProfileDevice`: a real device's
`edgetune` profile, opened with its lock for each round; the global head it receives
for evaluation becomes its own, saved in an atomic checkpoint) and an in-memory
**shard** (`ShardDevice`: features and labels, for `fleet simulate`).

Held out: every 5th sample of a class (in the order they were added) is kept out of
federated training and scores the global head; a class with fewer than 5 samples
trains on all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgetune.bundle import Bundle
from edgetune.errors import BadInputError
from edgetune.fleet.params import bundle_id, check_arrays, param_names
from edgetune.runtime.columns import ClassColumns
from edgetune.runtime.fitting import BundleProbe, Samples, fit_epochs
from edgetune.runtime.trainer import GraphTrainer, bundle_session

__all__ = ["HOLDOUT_EVERY", "LocalResult", "ProfileDevice", "ShardDevice", "evaluate_head",
           "holdout_mask", "train_head"]

HOLDOUT_EVERY = 5


@dataclass
class LocalResult:
    arrays: list[np.ndarray]  # the bundle's parameters, manifest order
    samples: int  # training samples this round
    metrics: dict  # numbers only


def holdout_mask(labels: Sequence[str]) -> np.ndarray:
    """True for held-out rows: every HOLDOUT_EVERY-th sample of each class."""
    seen: dict[str, int] = {}
    mask = np.zeros(len(labels), bool)
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        mask[i] = seen[label] % HOLDOUT_EVERY == 0
    return mask


class _Graphs:
    """The sessions a bundle's rounds need, made once per process (a round is short)."""

    def __init__(self, bundle: Bundle):
        specs = bundle.params + bundle.state
        self.bundle = bundle
        self.sessions = {role: bundle_session(bundle, role, 1, [s["train_input"] for s in specs],
                                              [s["train_output"] for s in specs])
                         for role in ("train", "train_epoch") if bundle.has_graph(role)}
        self.infer_io = bundle.io("infer")
        self.infer = bundle_session(bundle, "infer", 1, [p["infer_input"] for p in bundle.params])
        self.trainable = [p["train_input"] for p in bundle.params]
        self.probe = BundleProbe(bundle, lambda: self.infer, self.infer_io, self.trainable)
        self.columns = ClassColumns(bundle)

    def values(self, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        values = {p["train_input"]: np.array(a, np.float32)
                  for p, a in zip(self.bundle.params, arrays)}
        shapes = {p["name"]: values[p["train_input"]].shape for p in self.bundle.params}
        values.update({s["train_input"]: np.zeros(shapes[s["param"]], np.float32)
                       for s in self.bundle.state})  # a fresh optimizer for each round
        return values

    def scores(self, arrays: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        feeds = {p["infer_input"]: np.asarray(a, np.float32)
                 for p, a in zip(self.bundle.params, arrays)}
        out = self.infer_io[1]["probabilities"]
        return np.concatenate([
            self.infer.run([out], {self.infer_io[0]["features"]: X[i:i + 512], **feeds})[0]
            for i in range(0, len(X), 512)]) if len(X) else np.zeros((0, 0), np.float32)


@lru_cache(maxsize=4)
def _graphs(path: str) -> _Graphs:
    return _Graphs(Bundle.load(path))


def graphs_for(bundle: Bundle) -> _Graphs:
    return _graphs(str(bundle.path)) if bundle.path is not None else _Graphs(bundle)


def _indices(labels: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose class is in the vocabulary, and their column indices."""
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in labels], bool)
    y = np.array([index[label] for label in labels if label in index], np.int64)
    return keep, y


def train_head(bundle: Bundle, arrays: Sequence[np.ndarray], classes: Sequence[str],
               X: np.ndarray, labels: Sequence[str], *, epochs: int, lr: float | None = None,
               proximal_mu: float = 0.0, seed: int = 0) -> LocalResult:
    """E local epochs from the global `arrays` on (X, labels) with the bundle's training
    graphs and the runtime's fit loop; rows of classes outside `classes` are skipped.

    Only the columns of the classes this device has samples of are trained (a restricted
    softmax); the others come back as they arrived. Training all columns on a device
    that lacks most classes would push those classes down everywhere it has data, and
    under label skew averaging such updates loses most of what each device learned.

    proximal_mu > 0 (FedProx): before each epoch after the first, the parameters take a
    proximal step towards the global ones, w <- g + (w - g) / (1 + lr * steps * mu),
    where steps is the epoch's number of mini-batches; the bundle's graphs stay as built.
    """
    check_arrays(bundle, arrays, classes)
    g = graphs_for(bundle)
    present = set(labels)
    local = [c for c in classes if c in present]
    keep, y = _indices(labels, local)
    if not len(y):
        raise BadInputError("no training samples of the fleet's classes on this device")
    X = np.asarray(X, np.float32)[keep]
    values, _ = g.columns.remap(g.values(arrays), list(classes), local)
    trainer = GraphTrainer.for_bundle(bundle, values, lr=lr, sessions=g.sessions)
    start = {name: values[name].copy() for name in g.trainable}
    steps = -(-len(y) // min(32, len(y)))

    def follow(samples, trainer, best):
        if proximal_mu > 0 and trainer.step_count:
            shrink = 1.0 / (1.0 + trainer.lr * steps * proximal_mu)
            for name, g0 in start.items():
                trainer.values[name] = g0 + (trainer.values[name] - g0) * shrink
        return samples, best

    records = fit_epochs(trainer, Samples(X, y, local), epochs=epochs, probe=g.probe,
                         follow=follow, accept=lambda *a: None,
                         rng=np.random.default_rng(seed), stop=threading.Event(),
                         early_stop=False, trainable=g.trainable)
    kept = records[-1]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    where = [list(classes).index(c) for c in local]
    out = []
    for spec, value in zip(bundle.params, arrays):
        axis = g.columns.axis[spec["train_input"]]
        trained = trainer.values[spec["train_input"]]
        if axis is None:
            out.append(trained)
            continue
        merged = np.array(value, np.float32)
        np.moveaxis(merged, axis, 0)[where] = np.moveaxis(trained, axis, 0)
        out.append(merged)
    return LocalResult(out, int(len(y)),
                       {"train_loss": float(losses[-1]) if losses else float("nan"),
                        "objective": float(kept["objective"]),
                        "rollbacks": sum(r.get("event") == "rollback" for r in records)})


def evaluate_head(bundle: Bundle, arrays: Sequence[np.ndarray], classes: Sequence[str],
                  X: np.ndarray, labels: Sequence[str]) -> tuple[float, int, dict]:
    """(loss, n, {"accuracy"}) of the head on labelled features; rows of classes outside
    `classes` count as wrong (the head cannot name them)."""
    keep, y = _indices(labels, classes)
    n = len(labels)
    if n == 0:
        return 0.0, 0, {"accuracy": 0.0}
    scores = graphs_for(bundle).scores(arrays, np.asarray(X, np.float32)[keep])
    correct = int((scores.argmax(1) == y).sum()) if len(y) else 0
    picked = scores[np.arange(len(y)), y] if len(y) else np.zeros(0)
    loss = float(-np.log(np.clip(picked, 1e-30, None)).sum() / max(len(y), 1))
    return loss, n, {"accuracy": correct / n}


class ShardDevice:
    """An in-memory device (fleet simulate): its features, class names and holdout.
    bundle: a Bundle or its path (loaded once per process)."""

    def __init__(self, bundle: Bundle | str | Path, X: np.ndarray, labels: Sequence[str]):
        if not isinstance(bundle, Bundle):
            bundle = _graphs(str(Path(bundle).resolve())).bundle
        self.bundle, self.X, self.labels = bundle, np.asarray(X, np.float32), list(labels)
        self.held = holdout_mask(self.labels)

    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def bundle_id(self) -> str:
        return bundle_id(self.bundle)

    def train(self, arrays, classes, epochs: int, proximal_mu: float = 0.0,
              seed: int = 0) -> LocalResult:
        rows = ~self.held
        return train_head(self.bundle, arrays, classes, self.X[rows],
                          [lb for lb, r in zip(self.labels, rows) if r], epochs=epochs,
                          proximal_mu=proximal_mu, seed=seed)

    def evaluate(self, arrays, classes) -> tuple[float, int, dict]:
        _need_held_out(self.held)
        return evaluate_head(self.bundle, arrays, classes, self.X[self.held],
                             [lb for lb, h in zip(self.labels, self.held) if h])


class ProfileDevice:
    """A device's edgetune profile: opened with its lock for each round and closed after,
    so a crash mid-round leaves the profile as its last checkpoint had it."""

    def __init__(self, profile: str | Path, wait: float = 60.0):
        self.profile, self.wait = Path(profile), wait

    def _open(self):
        from edgetune.runtime.personalizer import Personalizer

        if not (self.profile / "bundle.edgetune").is_dir():
            raise BadInputError(f"profile {self.profile} has no bundle yet; train it first "
                                f"(edgetune train BUNDLE --data DIR --profile {self.profile})")
        return Personalizer(None, self.profile, wait=self.wait)

    @staticmethod
    def _data(p) -> tuple[np.ndarray, list[str], np.ndarray]:
        X, y = p.store.features_and_labels()
        names = p.store.class_names()
        labels = [names[i] for i in y]
        return X, labels, holdout_mask(labels)

    def classes(self) -> list[str]:
        with self._open() as p:
            return sorted(p.counts())  # classes with samples: what it can teach

    def bundle_id(self) -> str:
        from edgetune.runtime.profile import open_bundle

        return bundle_id(open_bundle(self.profile, None, read_only=True))

    def train(self, arrays, classes, epochs: int, proximal_mu: float = 0.0,
              seed: int = 0) -> LocalResult:
        with self._open() as p:
            X, labels, held = self._data(p)
            return train_head(p.bundle, arrays, classes, X[~held],
                              [lb for lb, h in zip(labels, held) if not h], epochs=epochs,
                              proximal_mu=proximal_mu, seed=seed)

    def evaluate(self, arrays, classes) -> tuple[float, int, dict]:
        """Score the global head on the held-out samples, then make it the profile's
        own (saved atomically): after federation the device starts from it."""
        from edgetune.runtime.exchange import adopt_head

        with self._open() as p:
            X, labels, held = self._data(p)
            result = evaluate_head(p.bundle, arrays, classes, X[held],
                                   [lb for lb, h in zip(labels, held) if h])
            adopt_head(p, dict(zip(param_names(p.bundle), arrays)), classes)
            p.save()
        _need_held_out(held)
        return result


def _need_held_out(held: np.ndarray) -> None:
    """A device without held-out samples answers evaluation with an error (Flower counts
    it as a failure) rather than a score of nothing."""
    if not held.any():
        raise BadInputError(f"no held-out samples: a class needs {HOLDOUT_EVERY} samples "
                            f"for one to be held out")

