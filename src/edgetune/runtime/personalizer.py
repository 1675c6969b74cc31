"""The personalization lifecycle on the device: samples, training, prediction, saving.

A profile is one personalization: a directory holding a copy of the bundle, the
SQLite sample store (cached features, not images) and the checkpoints.

    p = Personalizer("model.edgetune", profile="me/")
    p.add_sample("mug.jpg", "mug")          # features computed once, stored
    p.predict(frame)                         # answers from the first sample (prototypes)
    p.fit(epochs=20, callback=print)         # or start_training() / stop_training()
    p.save(); p.export("personal.onnx")

Prediction is safe during training: the trainer publishes a complete new parameter
set after each epoch call and readers take whichever set is current, never waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.bundle import Bundle, BundleError, sha256
from edgetune.errors import BadInputError, EdgetuneError, IncompatibleCheckpointError
from edgetune.inputs import preparer_for
from edgetune.runtime.checkpoint import CheckpointDir
from edgetune.runtime.prototypes import PrototypeClassifier, imprint_weights
from edgetune.runtime.store import SampleStore
from edgetune.runtime.trainer import GraphTrainer, make_session

CLASSES = "classes"
# Images per base call: activations of 16 at once double the peak memory (336 vs
# 190 MiB for EfficientNet-Lite0) and are no faster (bench/personalize.py).
BASE_BATCH = 4
EXPLODE_FACTOR = 10.0  # an epoch loss this many times the one before training diverged
GROWTH_LIMIT = 1e3  # so did a parameter that grew this many times (+1) in one fit
MAX_ROLLBACKS = 3
HISTORY_LIMIT = 1000  # epoch records kept in Personalizer.history


@dataclass(frozen=True)
class _Snapshot:
    """One consistent view for readers: parameters and the class names of their columns."""

    params: dict[str, np.ndarray]
    classes: tuple[str, ...]
    trained: bool


class Personalizer:
    """Personalize a bundle on this device; see the module docstring.

    bundle: a bundle directory (copied into the profile the first time) or None to use
    the profile's copy. threads: onnxruntime threads per session (None: its default).
    min_image_size: smaller images are refused (28x28 Fashion-MNIST is fine; an icon
    is not).
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None,
                 profile: str | os.PathLike = "profile", *, threads: int | None = None,
                 seed: int = 0, min_image_size: int = 16):
        self.min_image_size = min_image_size
        self.profile = Path(profile)
        self.profile.mkdir(parents=True, exist_ok=True)
        self.bundle = self._open_bundle(bundle)
        manifest = self.bundle.manifest
        self._bundle_id = sha256(json.dumps(manifest, sort_keys=True).encode())
        self.features_shape = tuple(manifest["features"]["shape"])
        self._input = manifest["input"]
        self.preparer = preparer_for(self._input, min_image_size=min_image_size)
        self.store = SampleStore(self.profile / "samples.sqlite", feature_shape=self.features_shape)
        known = self.store.get_meta("bundle")
        if known is None:
            self.store.set_meta("bundle", self._bundle_id)
        elif known != self._bundle_id:
            raise BundleError(f"profile {self.profile} was made with another bundle; open it "
                              f"with its own bundle or use a new profile")
        self.checkpoints = CheckpointDir(self.profile / "checkpoints")
        self._threads = threads
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()  # guards parameter structure changes and training state
        self._base = None
        self._train_sessions: dict | None = None
        self._infer_io = self.bundle.io("infer")
        self._infer = self._session("infer", [p["infer_input"] for p in self.bundle.params])
        self._class_axis = {s["train_input"]: _class_axis(s["shape"])
                            for s in self.bundle.params + self.bundle.state}
        self._trainable_names = [p["train_input"] for p in self.bundle.params]
        self._values, self._columns, self._trained, self.step = self._initial_state()
        self._prototypes = PrototypeClassifier()
        self._prototypes_stale = True
        self._publish()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.history: list[dict] = []
        self.last_error: str | None = None

    # -- opening --
    def _open_bundle(self, bundle) -> Bundle:
        copy = self.profile / "bundle.edgetune"
        for stale in self.profile.glob(".bundle.edgetune.*"):  # a copy cut short by a crash
            shutil.rmtree(stale, ignore_errors=True)
        if bundle is None:
            if not copy.is_dir():
                raise BundleError(f"profile {self.profile} has no bundle yet; pass the bundle "
                                  f"the first time (edgetune train BUNDLE --profile ...)")
            return Bundle.load(copy)
        loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if copy.is_dir():
            pinned = Bundle.load(copy)
            if pinned.manifest != loaded.manifest:
                raise BundleError(f"profile {self.profile} was made with another bundle "
                                  f"({pinned.path}); use a new profile for {loaded.path}")
            return pinned
        loaded.save(copy)  # verified when loaded; the copy was written from the same bytes
        return Bundle(loaded.manifest, loaded.files, copy.resolve())

    def _fresh_values(self, n_classes: int) -> dict[str, np.ndarray]:
        initial = self.bundle.initial_values()
        values = {}
        for p in self.bundle.params:
            values[p["train_input"]] = _resize_classes(initial[p["name"]],
                                                       self._class_axis[p["train_input"]],
                                                       n_classes)
        shapes = {p["name"]: values[p["train_input"]].shape for p in self.bundle.params}
        for s in self.bundle.state:
            values[s["train_input"]] = np.zeros(shapes[s["param"]], np.float32)
        return values

    def _initial_state(self):
        classes = self.store.class_names()
        ckpt = self.checkpoints.latest()
        if ckpt is None:
            return self._fresh_values(len(classes)), list(classes), False, 0
        meta = ckpt.meta
        if meta.get("bundle") != self._bundle_id:
            raise IncompatibleCheckpointError(
                f"checkpoint {ckpt.path} was written for another bundle; move it away or use "
                f"a new profile")
        names = [s["train_input"] for s in self.bundle.params + self.bundle.state]
        missing = [n for n in names if n not in ckpt.tensors]
        if missing:
            raise IncompatibleCheckpointError(f"checkpoint {ckpt.path} lacks {missing}")
        columns = json.loads(meta.get("classes", "[]"))
        values = {n: ckpt.tensors[n] for n in names}
        for name, value in values.items():
            axis = self._class_axis[name]
            if axis is not None and value.shape[axis] != len(columns):
                raise IncompatibleCheckpointError(
                    f"checkpoint {ckpt.path}: {name} has {value.shape[axis]} class columns but "
                    f"the checkpoint lists {len(columns)} classes")
        step = int(ckpt.tensors.get("__step__", np.zeros(1, np.int64))[0])
        values, columns = self._remap(values, columns, classes)
        return values, columns, meta.get("trained") == "1", step

    # -- class columns --
    def _remap(self, values: dict, columns: list[str], classes: Sequence[str]):
        """Reorder class columns of every class-sized tensor to `classes` (by name)."""
        if list(columns) == list(classes):
            return values, list(columns)
        index = {name: i for i, name in enumerate(columns)}
        out = {}
        for name, value in values.items():
            axis = self._class_axis[name]
            if axis is None:
                out[name] = value
                continue
            shape = list(value.shape)
            shape[axis] = len(classes)
            new = np.zeros(shape, np.float32)
            for j, cls in enumerate(classes):
                if cls in index:
                    np.moveaxis(new, axis, 0)[j] = np.moveaxis(value, axis, 0)[index[cls]]
            out[name] = new
        return out, list(classes)

    def _publish(self) -> None:
        params = {p["infer_input"]: self._values[p["train_input"]] for p in self.bundle.params}
        self._snapshot = _Snapshot(params, tuple(self._columns), self._trained)

    # -- samples --
    def _session(self, role: str, inputs: Sequence[str] = (), outputs: Sequence[str] = ()):
        """An onnxruntime session for a bundle graph whose tensor names match the manifest;
        any mismatch or onnxruntime refusal is a BundleError naming the graph."""
        roles_in, roles_out = self.bundle.io(role)
        try:
            session = make_session(self.bundle.graph(role), self._threads)
        except Exception as e:  # onnxruntime raises many types for a broken graph
            raise BundleError(f"graph {role!r} of the bundle cannot be loaded by onnxruntime: "
                              f"{type(e).__name__}: {e}") from None
        have_in = {i.name for i in session.get_inputs()}
        have_out = {o.name for o in session.get_outputs()}
        missing = sorted((set(roles_in.values()) | set(inputs)) - have_in) + sorted(
            (set(roles_out.values()) | set(outputs)) - have_out)
        if missing:
            raise BundleError(f"graph {role!r} of the bundle has no tensors {missing} that "
                              f"its manifest names; rebuild the bundle")
        return session

    def _base_session(self):
        if self._base is None:
            self._base = self._session("base")
            self.bundle.release("base")  # the session has its weights; export reads it again
        return self._base

    def _to_input(self, item) -> np.ndarray:
        """One input -> one row of the base's input, by the bundle's input kind."""
        return self.preparer.prepare(item)

    def features(self, images: Sequence) -> np.ndarray:
        """Run the base on inputs of the bundle's kind (images: arrays, PIL images, paths,
        bytes): [n, *features]."""
        batch = [self._to_input(item) for item in images]
        if not batch:
            return np.zeros((0, *self.features_shape), np.float32)
        inputs, outputs = self.bundle.io("base")
        session = self._base_session()
        parts = [session.run([outputs["features"]],
                             self.preparer.feeds(np.stack(batch[i:i + BASE_BATCH]), inputs))[0]
                 for i in range(0, len(batch), BASE_BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def add_sample(self, image, label: str, source: str | None = None) -> int:
        """Add one sample (HxWx3 uint8 array, PIL image, path or bytes) of class `label`."""
        return self.add_samples([image], [label], [source])[0]

    def add_samples(self, images: Sequence, labels: Sequence[str],
                    sources: Sequence[str | None] | None = None) -> list[int]:
        """Add samples in one transaction: all are stored or none (a bad image adds none)."""
        labels = [_check_label(label) for label in labels]
        if len(images) != len(labels):
            raise BadInputError(f"{len(images)} images but {len(labels)} labels")
        return self.add_features(self.features(images), labels, sources)

    def add_features(self, feats: np.ndarray, labels: Sequence[str],
                     sources: Sequence[str | None] | None = None) -> list[int]:
        """Add samples whose features (the base's output, [n, *features]) are known."""
        labels = [_check_label(label) for label in labels]
        feats = np.asarray(feats, np.float32)
        if feats.shape != (len(labels), *self.features_shape):
            raise BadInputError(f"features of shape {feats.shape} do not match {len(labels)} "
                                f"labels of features {list(self.features_shape)}")
        if not np.isfinite(feats).all():
            raise BadInputError("the base produced non-finite features for an input; check the "
                                "image")
        with self._lock:
            ids = self.store.add(feats, labels, source=list(sources) if sources else None)
            self._sync_classes()
            self._prototypes_stale = True
        return ids

    def remove_sample(self, sample_id: int) -> None:
        with self._lock:
            self.store.remove_sample(sample_id)
            self._prototypes_stale = True

    def remove_class(self, name: str) -> None:
        with self._lock:
            self.store.remove_class(name)
            self._sync_classes()
            self._prototypes_stale = True

    def rename_class(self, old: str, new: str) -> None:
        with self._lock:
            self.store.rename_class(old, _check_label(new))
            self._columns = [new if c == old else c for c in self._columns]
            self._publish()

    def add_class(self, name: str) -> None:
        with self._lock:
            self.store.add_class(_check_label(name))
            self._sync_classes()

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def samples(self):
        """The stored samples (id, label, created_at, source), without features."""
        return self.store.samples()

    @property
    def trained(self) -> bool:
        """Whether predictions come from a trained head (else from class prototypes)."""
        return self._snapshot.trained

    def classes(self) -> list[str]:
        return self.store.class_names()

    def _sync_classes(self) -> None:
        """Make the parameter columns follow the store's classes (added, removed). After
        training, a new class's column starts at its class mean, so it can be predicted
        at once."""
        classes = self.store.class_names()
        if classes == self._columns:
            return
        fresh = [i for i, c in enumerate(classes) if c not in self._columns]
        values, self._columns = self._remap(self._values, self._columns, classes)
        if self._trained and fresh:
            X, y = self.store.features_and_labels()
            self._imprint(values, X, y, fresh)
        self._values = values
        self._publish()

    # -- prediction --
    def predict(self, image) -> dict:
        """{"label", "scores": {class: score}, "source": "head" | "prototypes"}."""
        return self.predict_features(self.features([image]))[0]

    def predict_many(self, images: Sequence) -> list[dict]:
        return self.predict_features(self.features(images))

    def predict_features(self, feats: np.ndarray) -> list[dict]:
        snap = self._snapshot  # one consistent parameter set, whatever training does meanwhile
        if not np.isfinite(feats).all():
            raise BadInputError("the base produced non-finite features for this input; check "
                                "the image")
        if not snap.classes:
            raise BadInputError("no classes yet: add samples before predicting")
        if snap.trained:
            feeds = {self._infer_io[0]["features"]: feats, **snap.params}
            scores = self._infer.run([self._infer_io[1]["probabilities"]], feeds)[0]
            source = "head"
        else:
            scores = self._prototype_scores(feats, len(snap.classes))
            source = "prototypes"
        results = []
        for row in scores:
            best = int(np.argmax(row))
            results.append({"label": snap.classes[best], "source": source,
                            "scores": {c: float(s) for c, s in zip(snap.classes, row)}})
        return results

    def _prototype_scores(self, feats: np.ndarray, n_classes: int) -> np.ndarray:
        with self._lock:
            if self._prototypes_stale:
                X, y = self.store.features_and_labels()
                flat = X.reshape(len(X), -1)
                self._prototypes = PrototypeClassifier().fit(flat, y, len(self.store.class_names()))
                self._prototypes_stale = False
            clf = self._prototypes
        scores = clf.predict_scores(feats.reshape(len(feats), -1))
        return scores[:, :n_classes] if scores.shape[1] >= n_classes else np.pad(
            scores, [(0, 0), (0, n_classes - scores.shape[1])])

    # -- training --
    def _imprint(self, values: dict, X: np.ndarray, y: np.ndarray, fresh: Iterable[int]) -> None:
        """Start a linear head's new class columns at the class means (weight imprinting)."""
        weight = next((p for p in self.bundle.params if p["name"] == "head.weight"), None)
        bias = next((p for p in self.bundle.params if p["name"] == "head.bias"), None)
        fresh = list(fresh)
        if not fresh or weight is None or bias is None or sorted(
                weight["shape"], key=str) != sorted([*self.features_shape, CLASSES], key=str):
            return
        W, b = imprint_weights(X.reshape(len(X), -1), y, values[bias["train_input"]].shape[0])
        columns = np.moveaxis(values[weight["train_input"]], weight["shape"].index(CLASSES), -1)
        for c in fresh:  # columns is a view: this writes the weight, whatever its layout
            columns[..., c] = W[:, c]
            values[bias["train_input"]][c] = b[c]

    def _trainer(self, lr: float) -> GraphTrainer:
        specs = self.bundle.params + self.bundle.state
        if self._train_sessions is None:  # made once, reused by every fit
            self._train_sessions = {
                role: self._session(role, [s["train_input"] for s in specs],
                                    [s["train_output"] for s in specs])
                for role in ("train", "train_epoch") if self.bundle.has_graph(role)}
        trainer = GraphTrainer.for_bundle(self.bundle, self._values, lr=lr,
                                          sessions=self._train_sessions)
        trainer.step_count = self.step
        return trainer

    @staticmethod
    def _run_epoch(trainer: GraphTrainer, X, y, weights, batch_size: int,
                   lr: float | None = None) -> np.ndarray:
        if trainer.has_epoch_graph:
            return trainer.epoch(X, y, weights, batch_size, lr=lr)
        return np.array([trainer.step(X[i:i + batch_size], y[i:i + batch_size],
                                      None if weights is None else weights[i:i + batch_size],
                                      lr=lr)
                         for i in range(0, len(y), batch_size)])

    def fit(self, epochs: int = 20, batch_size: int | None = None, lr: float | None = None,
            callback: Callable[[dict], None] | None = None, balanced: bool = True,
            early_stop: bool = True, patience: int = 5, min_delta: float = 1e-3) -> list[dict]:
        """Train for up to `epochs` epochs; returns one record per epoch (and per rollback).

        balanced: weight samples so each class counts equally. early_stop: stop when the
        loss has not improved by `min_delta` (relative) for `patience` epochs. A NaN or
        exploding loss rolls back to the last good parameters, lowers the learning rate
        tenfold and says so in the record (`"event": "rollback"`).
        """
        if epochs < 1:
            raise BadInputError(f"epochs is {epochs}; it must be at least 1")
        if batch_size is not None and batch_size < 1:
            raise BadInputError(f"batch_size is {batch_size}; it must be at least 1")
        lr = float(_suggested_lr(self.bundle) if lr is None else lr)
        records = []
        self._stop.clear()
        with self._lock:
            X, y = self.store.features_and_labels()
            if len(y) == 0:
                raise BadInputError("no samples yet: add at least one sample before training")
            if not self._trained:
                self._values = {k: v.copy() for k, v in self._values.items()}
                self._imprint(self._values, X, y, range(len(self._columns)))
            trainer = self._trainer(lr)
            columns = list(self._columns)
        good = {k: v.copy() for k, v in trainer.values.items()}
        good_step, rollbacks, stale, best = trainer.step_count, 0, 0, None
        weights = _balanced_weights(y, len(columns)) if balanced else None
        size = min(batch_size or 32, len(y))
        # What divergence is measured against: the fit before training, since a too
        # large lr can blow up the very first epoch.
        reference = self._probe_loss(trainer, X, y, weights)
        reference = reference if np.isfinite(reference) else 0.0
        scale = {k: float(np.abs(v).max(initial=0.0)) for k, v in good.items()}
        for epoch in range(1, epochs + 1):
            if self._stop.is_set():
                break
            t0 = time.perf_counter()
            with self._lock:
                if self._columns != columns:  # samples or classes changed while training
                    X, y = self.store.features_and_labels()
                    fresh = [i for i, c in enumerate(self._columns) if c not in columns]
                    trainer.values, _ = self._remap(trainer.values, columns, self._columns)
                    good, columns = self._remap(good, columns, self._columns)
                    self._imprint(trainer.values, X, y, fresh)
                elif epoch > 1 and len(self.store) != len(y):
                    X, y = self.store.features_and_labels()
                weights = _balanced_weights(y, len(columns)) if balanced else None
                size = min(batch_size or 32, len(y))
            order = self._rng.permutation(len(y))
            losses = self._run_epoch(trainer, X[order], y[order],
                                     None if weights is None else weights[order], size)
            loss = float(np.mean(losses))
            # An epoch's losses were measured before its updates: how the new parameters
            # fit the samples decides whether they are accepted (and published).
            after = self._probe_loss(trainer, X, y, weights)
            problem = (f"the loss became {loss}" if not np.isfinite(loss) else
                       _divergence(after, reference, trainer.values, scale,
                                   self._trainable_names))
            if problem:
                rollbacks += 1
                trainer.values = {k: v.copy() for k, v in good.items()}
                trainer.step_count = good_step
                trainer.lr = lr = lr * 0.1
                record = {"epoch": epoch, "event": "rollback", "loss": loss, "lr": lr,
                          "message": f"{problem}; rolled back to the last good parameters "
                                     f"and lowered the learning rate to {lr:.3g}"}
                warnings.warn(record["message"], RuntimeWarning, stacklevel=2)
                records.append(record)
                if callback:
                    callback(record)
                if rollbacks >= MAX_ROLLBACKS:
                    records.append({"epoch": epoch, "event": "stopped",
                                    "message": f"stopped after {rollbacks} rollbacks"})
                    if callback:
                        callback(records[-1])
                    break
                continue
            good = {k: v.copy() for k, v in trainer.values.items()}
            good_step = trainer.step_count
            with self._lock:
                if self._columns == columns:
                    self._values = good
                    self.step = good_step
                    self._trained = True
                    self._publish()
            record = {"epoch": epoch, "loss": loss, "lr": lr, "samples": int(len(y)),
                      "seconds": time.perf_counter() - t0}
            records.append(record)
            if callback:
                callback(record)
            if best is None or loss < best * (1 - min_delta):
                best, stale = loss, 0
            else:
                stale += 1
                if early_stop and stale >= patience:
                    records.append({"epoch": epoch, "event": "early_stop",
                                    "message": f"loss has not improved for {patience} epochs"})
                    if callback:
                        callback(records[-1])
                    break
        # The latest records only: a long-running server trains many times.
        self.history = (self.history + records)[-HISTORY_LIMIT:]
        if self._trained:
            self.save()
        return records

    def _probe_loss(self, trainer: GraphTrainer, X, y, weights) -> float:
        """How well the trainer's current parameters fit all samples, forward only: the
        weighted cross-entropy of the infer graph's probabilities. A divergence check,
        not the training loss (whatever loss the bundle trains with)."""
        feeds = {p["infer_input"]: trainer.values[p["train_input"]] for p in self.bundle.params}
        probs = np.concatenate([
            self._infer.run([self._infer_io[1]["probabilities"]],
                            {self._infer_io[0]["features"]: X[i:i + 256], **feeds})[0]
            for i in range(0, len(y), 256)])
        with np.errstate(all="ignore"):
            picked = np.clip(probs[np.arange(len(y)), y], 1e-30, None)
            rows = -np.log(picked)
            w = np.ones(len(y)) if weights is None else weights
            return float((rows * w).sum() / max(float(w.sum()), 1e-12))

    def start_training(self, epochs: int = 50, callback: Callable[[dict], None] | None = None,
                       **kwargs) -> None:
        """Train in a background thread; predictions keep working meanwhile."""
        with self._lock:
            if self.is_training:
                raise EdgetuneError("training is already running; stop_training() first")
            self._stop.clear()
            self.last_error = None

            def run():
                try:
                    self.fit(epochs=epochs, callback=callback, **kwargs)
                except Exception as e:  # reported to the caller through last_error
                    self.last_error = f"{type(e).__name__}: {e}"
                    if callback:
                        callback({"event": "error", "message": self.last_error})

            self._thread = threading.Thread(target=run, name="edgetune-training", daemon=True)
            self._thread.start()

    def stop_training(self, timeout: float | None = None) -> None:
        """Ask background training to stop after the current epoch, and wait for it."""
        self._stop.set()
        self.wait_training(timeout)

    def wait_training(self, timeout: float | None = None) -> bool:
        """Wait for background training to finish; True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.is_training

    @property
    def is_training(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- saving and export --
    def save(self) -> Path:
        """Write parameters, optimizer state, step and class table as one atomic checkpoint."""
        with self._lock:
            tensors = dict(self._values)
            tensors["__step__"] = np.array([self.step], np.int64)
            meta = {"bundle": self._bundle_id, "classes": json.dumps(self._columns),
                    "trained": "1" if self._trained else "0"}
        return self.checkpoints.save(tensors, meta)

    def export(self, path: str | os.PathLike) -> Path:
        """One standalone ONNX model: raw pixels in, probabilities out, class names in its
        metadata (`edgetune.classes`). Runs with onnxruntime alone."""
        from edgetune.runtime.export import compose_standalone

        snap = self._snapshot
        if not snap.trained:
            raise EdgetuneError("nothing trained yet: fit() before exporting")
        model = compose_standalone(self.bundle.graph("base"), self.bundle.graph("infer"),
                                   self.bundle.io("base")[1]["features"],
                                   self._infer_io[0]["features"], snap.params,
                                   {"edgetune.classes": json.dumps(list(snap.classes)),
                                    "edgetune.input": json.dumps(self._input),
                                    "edgetune.bundle": self._bundle_id})
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(model)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    # -- evaluation --
    def evaluate(self, data_dir: str | os.PathLike) -> dict:
        """Accuracy on a folder of class folders: {"accuracy", "n", "per_class", "skipped"}."""
        items = self.preparer.list_folder(data_dir)
        known = set(self._snapshot.classes)
        usable = [(p, c) for p, c in items if c in known]
        unknown = sorted({c for _, c in items if c not in known})
        if not usable:
            raise BadInputError(f"{data_dir}: none of its class folders {unknown} is a class of "
                                f"this profile ({sorted(known)})")
        per_class: dict[str, dict] = {}
        correct = 0
        for i in range(0, len(usable), BASE_BATCH):
            chunk = usable[i:i + BASE_BATCH]
            for (_, truth), result in zip(chunk, self.predict_many([p for p, _ in chunk])):
                entry = per_class.setdefault(truth, {"n": 0, "correct": 0})
                entry["n"] += 1
                entry["correct"] += result["label"] == truth
                correct += result["label"] == truth
        for entry in per_class.values():
            entry["accuracy"] = entry["correct"] / entry["n"]
        return {"accuracy": correct / len(usable), "n": len(usable), "per_class": per_class,
                "skipped_classes": unknown}

    def close(self) -> None:
        self.stop_training()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _divergence(fit: float, reference: float, values: dict, scale: dict,
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


def _suggested_lr(bundle: Bundle) -> float:
    optimizer = bundle.manifest.get("optimizer")
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    return float(lr) if isinstance(lr, int | float) and lr > 0 else 0.01


def _class_axis(shape: Sequence) -> int | None:
    return shape.index(CLASSES) if CLASSES in shape else None


def _resize_classes(value: np.ndarray, axis: int | None, n: int) -> np.ndarray:
    if axis is None:
        return np.array(value, np.float32)
    value = np.moveaxis(np.asarray(value, np.float32), axis, 0)[:n]
    if len(value) < n:
        value = np.concatenate([value, np.zeros((n - len(value), *value.shape[1:]), np.float32)])
    return np.ascontiguousarray(np.moveaxis(value, 0, axis))


def _balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights so every present class counts equally: n / (classes present * count)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    present = max(int((counts > 0).sum()), 1)
    return (len(y) / (present * counts[y])).astype(np.float32)


def _check_label(label) -> str:
    if not isinstance(label, str) or not label.strip():
        raise BadInputError(f"label {label!r} must be a non-empty string")
    return label.strip()
