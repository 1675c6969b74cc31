"""The personalization lifecycle on the device: samples, training, prediction, saving.

A profile is one personalization: a directory holding a copy of the bundle, the
SQLite sample store (cached features, not images), the checkpoints and a lock: one
writer at a time (a second one gets ProfileLockedError, or waits with `wait=`);
readers (`read_only=True`) take no lock and change nothing.

    p = Personalizer("model.edgetune", profile="me/")
    p.add_sample("mug.jpg", "mug")          # features computed once, stored
    p.predict(frame)                         # answers from the first sample (prototypes)
    p.fit(epochs=20, callback=print)         # or start_training() / stop_training()
    p.save(); p.export("personal.onnx")

Prediction is safe during training: the trainer publishes a complete new parameter
set after each epoch call and readers take whichever set is current, never waiting.
The fit loop lives in .fitting, the class columns (remap, imprint) in .columns.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.bundle import Bundle, sha256
from edgetune.defaults import EPOCHS, MIN_IMAGE_SIZE
from edgetune.errors import BadInputError, EdgetuneError, IncompatibleCheckpointError
from edgetune.hyperparams import check_batch_size, check_epochs, check_lr
from edgetune.inputs import preparer_for
from edgetune.names import class_name
from edgetune.runtime.checkpoint import CheckpointDir
from edgetune.runtime.columns import ClassColumns
from edgetune.runtime.fitting import (
    MIN_DELTA,
    PATIENCE,
    BundleProbe,
    Samples,
    fit_epochs,
    suggested_lr,
)
from edgetune.runtime.lock import ProfileLock
from edgetune.runtime.openset import META as OPEN_SET_META
from edgetune.runtime.openset import OpenSet, judge_all
from edgetune.runtime.profile import (
    BASE_ROLES,
    check_precision,
    open_bundle,
    open_precision,
    open_store,
)
from edgetune.runtime.prototypes import PrototypeClassifier, comparable
from edgetune.runtime.sessions import ProfileSessions
from edgetune.runtime.shuffle import Shuffle
from edgetune.runtime.store import SampleStore
from edgetune.runtime.trainer import GraphTrainer

# Images per base call: one at a time is as fast as 4 and peaks 37 MiB lower (122 vs
# 159 MiB over 80 photos with EfficientNet-Lite0, one thread); 16 doubles the peak.
BASE_BATCH = 1
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

    One writer per profile: a writer holds `<profile>/lock` until close(); if another
    process holds it, ProfileLockedError names that process. wait: False (fail at
    once), True (wait until it is free) or at most that many seconds. read_only: take
    no lock, create and change nothing (predict, evaluate and export work; every
    change raises EdgetuneError); the profile must already exist.

    precision: which base computes features, predictions and the exported model: "fp32"
    (graph `base`) or "int8" (graph `base_int8`, which `edgetune convert` writes by
    default for image bases). A profile records its precision when first opened (int8
    when the bundle has that base, else fp32, unless asked); None uses the recorded
    one. Cached features are only valid for the base that computed them, so asking a
    profile that has samples for the other precision is an error.

    open_set: whether predict answers "unknown" for inputs far from the class picked
    (see .openset and predict). None uses the profile's recorded choice, off unless
    set: predict's answer stays {label, scores, source}. True/False records the
    choice in a writable profile (set_open_set) and holds for this session of a
    read-only one.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None,
                 profile: str | os.PathLike = "profile", *, threads: int | None = None,
                 seed: int = 0, min_image_size: int = MIN_IMAGE_SIZE, read_only: bool = False,
                 wait: bool | float = False, precision: str | None = None,
                 open_set: bool | None = None):
        check_precision(precision)  # before any file exists
        self.min_image_size = min_image_size
        self.profile = Path(profile)
        self.read_only = bool(read_only)
        self.store: SampleStore | None = None
        self._thread: threading.Thread | None = None
        self._writer: ProfileLock | None = None
        self._sessions: ProfileSessions | None = None
        if self.read_only:
            if not self.profile.is_dir():
                raise EdgetuneError(f"profile {self.profile} does not exist; a read-only open "
                                    f"creates nothing: train it first (edgetune train ...)")
        else:
            self.profile.mkdir(parents=True, exist_ok=True)
            self._writer = ProfileLock(self.profile).acquire(wait)
        try:
            self._open(bundle, threads, seed, precision)
            if open_set is not None:
                self.set_open_set(open_set)
        except BaseException:
            self.close()
            raise

    def _open(self, bundle, threads: int | None, seed: int, precision: str | None) -> None:
        self.bundle = open_bundle(self.profile, bundle, self.read_only)
        manifest = self.bundle.manifest
        self._bundle_id = sha256(json.dumps(manifest, sort_keys=True).encode())
        self.features_shape = tuple(manifest["features"]["shape"])
        self._layout = manifest["features"].get("layout")  # prototypes.comparable
        self._input = manifest["input"]
        self.preparer = preparer_for(self._input, min_image_size=self.min_image_size,
                                     files=self.bundle)
        self.store = open_store(self.profile, self.features_shape, self._bundle_id,
                                self.read_only)
        self._precision = open_precision(self.profile, self.store, self.bundle, precision,
                                         self.read_only)
        self.checkpoints = CheckpointDir(self.profile / "checkpoints")
        self._shuffle = Shuffle(seed)  # the epochs' orders
        self._lock = threading.RLock()  # guards parameter structure changes and training state
        self._sessions = ProfileSessions(self.bundle, self._base_role, threads)  # .sessions
        self._infer_io = self.bundle.io("infer")
        self._cols = ClassColumns(self.bundle)
        self._trainable_names = [p["train_input"] for p in self.bundle.params]
        self._probe = BundleProbe(self.bundle, self._sessions.infer, self._infer_io,
                                  self._trainable_names)
        self._values, self._columns, self._trained, self.step, calibration = \
            self._initial_state()
        self._fitting: Samples | None = None  # what a running fit trains on
        self._prototypes = PrototypeClassifier()
        self._prototypes_stale = True
        self._prototype_classes: list[str] = []
        self._openset = OpenSet(self.store, self.read_only, calibration)  # .openset
        self._publish()
        self._stop = threading.Event()
        self.history: list[dict] = []
        self.last_error: str | None = None

    @property
    def precision(self) -> str:
        """"fp32" or "int8": the base that computes this profile's features."""
        return self._precision

    @property
    def _base_role(self) -> str:
        return BASE_ROLES[self._precision]

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise EdgetuneError(f"profile {self.profile} is open read-only: cannot {what}; "
                                f"open it without read_only=True to change it (one writer "
                                f"at a time)")

    def _initial_state(self):
        classes = self.store.class_names()
        ckpt = self.checkpoints.latest()
        if ckpt is None:
            return self._cols.initial(classes), list(classes), False, 0, None
        meta = ckpt.meta
        if meta.get("bundle") != self._bundle_id:
            raise IncompatibleCheckpointError(
                f"checkpoint {ckpt.path} was written for another bundle; move it away or use "
                f"a new profile")
        values, columns = self._cols.restore(ckpt, classes)
        step = int(ckpt.tensors.get("__step__", np.zeros(1, np.int64))[0])
        return values, columns, meta.get("trained") == "1", step, meta.get(OPEN_SET_META)

    def _publish(self) -> None:
        params = {p["infer_input"]: self._values[p["train_input"]] for p in self.bundle.params}
        self._snapshot = _Snapshot(params, tuple(self._columns), self._trained)

    def release_sessions(self, idle: float = 0.0) -> list[str]:
        """Drop the onnxruntime sessions unused for `idle` seconds (all by default; none
        while a fit runs, in the background or not): an idle profile gives their memory
        back (the base: 24 MiB) and makes them again when next needed. The graph roles
        dropped."""
        with self._lock:
            training = self.is_training or self._fitting is not None
            return [] if training else self._sessions.release(idle)

    # -- samples --
    def features(self, images: Sequence) -> np.ndarray:
        """Run the base on inputs of the bundle's kind (images: arrays, PIL images, paths,
        bytes): [n, *features]."""
        return self.base_features(images, prepare=self.preparer.prepare)

    def base_features(self, rows, batch: int | None = None, prepare=None) -> np.ndarray:
        """Run the base on rows that are already its input (preparer.prepare's output, or
        windows a caller shaped itself: .stream), `batch` at a time: [n, *features].
        prepare: applied to each row just before its batch runs (not all at once: 80
        prepared photos are 12 MB more at the peak)."""
        if not len(rows):
            return np.zeros((0, *self.features_shape), np.float32)
        inputs, outputs = self.bundle.io(self._base_role)
        session, batch = self._sessions.base(), batch or BASE_BATCH  # read at each call
        prepare = prepare or (lambda row: row)
        parts = [session.run([outputs["features"]], self.preparer.feeds(
                     np.stack([prepare(r) for r in rows[i:i + batch]]), inputs))[0]
                 for i in range(0, len(rows), batch)]
        return np.concatenate(parts).astype(np.float32)

    def add_sample(self, image, label: str, source: str | None = None) -> int:
        """Add one sample (HxWx3 uint8 array, PIL image, path or bytes) of class `label`."""
        return self.add_samples([image], [label], [source])[0]

    def add_samples(self, images: Sequence, labels: Sequence[str],
                    sources: Sequence[str | None] | None = None) -> list[int]:
        """Add samples in one transaction: all are stored or none (a bad image adds none)."""
        self._writable("add samples")
        labels = [_check_label(label) for label in labels]
        if len(images) != len(labels):
            raise BadInputError(f"{len(images)} images but {len(labels)} labels")
        return self.add_features(self.features(images), labels, sources)

    def add_features(self, feats: np.ndarray, labels: Sequence[str],
                     sources: Sequence[str | None] | None = None) -> list[int]:
        """Add samples whose features (the base's output, [n, *features]) are known."""
        self._writable("add samples")
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
        self._writable("remove a sample")
        with self._lock:
            self.store.remove_sample(sample_id)
            self._prototypes_stale = True

    def remove_class(self, name: str) -> None:
        self._writable("remove a class")
        with self._lock:
            self.store.remove_class(_check_label(name))
            self._sync_classes()
            self._prototypes_stale = True

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; its samples and its trained column are kept. Names are
        canonicalized (edgetune.names): " crimson " is "crimson" everywhere."""
        self._writable("rename a class")
        old, new = _check_label(old), _check_label(new)
        with self._lock:
            self.store.rename_class(old, new)
            self._prototypes_stale = True  # the open-set calibration names classes
            self._columns = [new if c == old else c for c in self._columns]
            if self._fitting is not None:  # a running fit keeps the column too
                self._fitting.columns = [new if c == old else c for c in self._fitting.columns]
            self._publish()

    def add_class(self, name: str) -> None:
        self._writable("add a class")
        with self._lock:
            self.store.add_class(_check_label(name))
            self._sync_classes()
            self._prototypes_stale = True

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
        values, self._columns = self._cols.follow(self._values, self._columns, classes,
                                                  self._trained)
        if self._trained and fresh:
            X, y = self.store.features_and_labels()
            self._cols.imprint(values, X, y, fresh)
        self._values = values
        self._publish()

    # -- prediction --
    def predict(self, image, open_set: bool | None = None) -> dict:
        """{"label", "scores": {class: score}, "source": "head" | "prototypes"}.

        open_set (None: the profile's choice, see set_open_set): also say how far the
        input is from the class picked: "unknown" (bool), "class" (the class picked),
        "distance" (cosine distance to its prototype) and "threshold" (calibrated from
        the user's samples, .openset); beyond it the label is "unknown", or "none" in a
        profile with the background class "none". The scores stay as they were.
        """
        return self.predict_many([image], open_set)[0]

    def predict_many(self, images: Sequence, open_set: bool | None = None) -> list[dict]:
        if self.preparer.kind != "text" or not len(images):  # texts: also "truncated"
            return self.predict_features(self.features(images), open_set)
        rows, cut = zip(*map(self.preparer.encode, images))
        results = self.predict_features(self.base_features(list(rows)), open_set)
        return [{**r, "truncated": c} for r, c in zip(results, cut)]

    def predict_features(self, feats: np.ndarray, open_set: bool | None = None) -> list[dict]:
        snap = self._snapshot  # one consistent parameter set, whatever training does meanwhile
        if not np.isfinite(feats).all():
            raise BadInputError("the base produced non-finite features for this input; check "
                                "the image")
        if not snap.classes:
            raise BadInputError("no classes yet: add samples before predicting")
        if snap.trained:
            feeds = {self._infer_io[0]["features"]: feats, **snap.params}
            scores = self._sessions.infer().run([self._infer_io[1]["probabilities"]], feeds)[0]
            source = "head"
        else:
            scores = self._prototype_scores(feats, len(snap.classes))
            source = "prototypes"
        results = []
        for row in scores:
            best = int(np.argmax(row))
            results.append({"label": snap.classes[best], "source": source,
                            "scores": {c: float(s) for c, s in zip(snap.classes, row)}})
        if self._openset.on if open_set is None else open_set:
            with self._lock:
                self._refresh_prototypes()
                state = (self._prototype_classes, self._prototypes.class_means(),
                         self._openset.calibration)
            results = judge_all(comparable(feats, self._layout), results, *state)
        return results

    # -- open set (.openset) --
    @property
    def open_set(self) -> bool:
        """Whether predict answers "unknown" unless told otherwise (set_open_set)."""
        return self._openset.on

    def set_open_set(self, on: bool) -> None:
        """Make open-set answers the profile's default (recorded in its store) or not.
        A read-only profile changes only for this session."""
        self._openset.set(on)

    def open_set_thresholds(self) -> dict[str, float | None]:
        """The calibrated threshold of each class (None: background, no samples, or
        nothing calibrated yet), as stored in the next checkpoint."""
        with self._lock:
            self._refresh_prototypes()
            return dict(self._openset.calibration.thresholds)

    def _prototype_scores(self, feats: np.ndarray, n_classes: int) -> np.ndarray:
        with self._lock:
            self._refresh_prototypes()
            clf = self._prototypes
        scores = clf.predict_scores(comparable(feats, self._layout))
        return scores[:, :n_classes] if scores.shape[1] >= n_classes else np.pad(
            scores, [(0, 0), (0, n_classes - scores.shape[1])])

    def _refresh_prototypes(self) -> None:
        """Prototypes and open-set calibration from the store, after samples changed
        (call with self._lock held)."""
        if not self._prototypes_stale:
            return
        X, y = self.store.features_and_labels()
        names = self.store.class_names()
        flat = comparable(X, self._layout)
        self._prototypes = PrototypeClassifier().fit(flat, y, max(len(names), 1))
        self._prototype_classes = names
        self._openset.refresh(flat, y, names)
        self._prototypes_stale = False

    # -- training --
    def _trainer(self, lr: float) -> GraphTrainer:
        trainer = GraphTrainer.for_bundle(self.bundle, self._values, lr=lr,
                                          sessions=self._sessions.training())
        trainer.step_count = self.step
        return trainer

    def fit(self, epochs: int = EPOCHS, batch_size: int | None = None,
            lr: float | None = None, callback: Callable[[dict], None] | None = None,
            balanced: bool = True, early_stop: bool = True, patience: int = PATIENCE,
            min_delta: float = MIN_DELTA) -> list[dict]:
        """Train for up to `epochs` epochs; returns one record per epoch and per event.

        Keeps the parameters that fit the samples best (the starting ones included) and
        saves them only if they improved; the last record (`"event": "kept"`) says which.
        balanced: weight samples so each class counts equally. early_stop: stop once the
        objective has improved by less than `min_delta` (relative) in `patience` epochs.
        A NaN or exploding loss rolls back to the best parameters, lowers the learning
        rate tenfold and says so (`"event": "rollback"`). See .fitting.
        """
        self._writable("train")
        epochs = check_epochs(epochs)
        if batch_size is not None:
            batch_size = check_batch_size(batch_size)
        lr = check_lr(suggested_lr(self.bundle) if lr is None else lr)
        self._stop.clear()
        with self._lock:
            X, y = self.store.features_and_labels()
            if len(y) == 0:
                raise BadInputError("no samples yet: add at least one sample before training")
            if not self._trained:  # start a linear head's columns at the class means
                self._values = {k: v.copy() for k, v in self._values.items()}
                self._cols.imprint(self._values, X, y, self._cols.unnamed(self._columns))
            trainer = self._trainer(lr)
            samples = self._fitting = Samples(X, y, list(self._columns))
        try:
            records = fit_epochs(
                trainer, samples, epochs=epochs, probe=self._probe, follow=self._follow,
                accept=self._accept, rng=self._shuffle, stop=self._stop, batch_size=batch_size,
                balanced=balanced, early_stop=early_stop, patience=patience,
                min_delta=min_delta, trainable=self._trainable_names, callback=callback)
        finally:
            with self._lock:
                self._fitting = None
        # The latest records only: a long-running server trains many times.
        self.history = (self.history + records)[-HISTORY_LIMIT:]
        if records and records[-1].get("improved"):
            self.save()
        return records

    def _follow(self, samples: Samples, trainer: GraphTrainer, good: dict):
        """Before each epoch: take in samples and classes changed while training; a new
        class's column starts at its class mean."""
        with self._lock:
            samples = self._fitting or samples  # rename_class may have renamed its columns
            if self._columns != samples.columns:
                X, y = self.store.features_and_labels()
                fresh = [i for i, c in enumerate(self._columns) if c not in samples.columns]
                trainer.values, _ = self._cols.remap(trainer.values, samples.columns,
                                                     self._columns)
                good, _ = self._cols.remap(good, samples.columns, self._columns)
                self._cols.imprint(trainer.values, X, y, fresh)
                samples = self._fitting = Samples(X, y, list(self._columns))
            elif len(self.store) != len(samples.y):
                X, y = self.store.features_and_labels()
                samples = self._fitting = Samples(X, y, samples.columns)
        return samples, good

    def _accept(self, values: dict, step: int, samples: Samples) -> None:
        """Publish a good epoch's parameters, unless the classes changed meanwhile."""
        with self._lock:
            if self._columns == (self._fitting or samples).columns:
                self._values = values
                self.step = step
                self._trained = True
                self._publish()

    def start_training(self, epochs: int = EPOCHS,
                       callback: Callable[[dict], None] | None = None, **kwargs) -> None:
        """Train in a background thread; predictions keep working meanwhile."""
        self._writable("train")
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
        self._writable("save")
        with self._lock:
            tensors = dict(self._values)
            tensors["__step__"] = np.array([self.step], np.int64)
            self._refresh_prototypes()
            meta = {"bundle": self._bundle_id, "classes": json.dumps(self._columns),
                    "trained": "1" if self._trained else "0",
                    OPEN_SET_META: self._openset.calibration.to_json()}
        return self.checkpoints.save(tensors, meta)

    def export(self, path: str | os.PathLike) -> Path:
        """One standalone ONNX model: raw pixels in, probabilities out, class names in its
        metadata (`edgetune.classes`). Runs with onnxruntime alone. A text model takes
        token ids and mask; its tokenizer (truncation and padding set) is written beside
        it: `NAME.tokenizer.json` (runtime.export.tokenizer_path)."""
        from edgetune.runtime.export import export_profile

        snap = self._snapshot
        if not snap.trained:
            raise EdgetuneError("nothing trained yet: fit() before exporting")
        return export_profile(self.bundle, self._base_role, self._infer_io[0]["features"],
                              snap.params, list(snap.classes), self._input, self._bundle_id,
                              self._precision, self.preparer, path)

    # -- evaluation --
    def evaluate(self, data_dir: str | os.PathLike) -> dict:
        """Accuracy on a folder of class folders: {"accuracy", "n", "per_class",
        "skipped_classes"} (see .evaluation)."""
        from edgetune.runtime.evaluation import evaluate_folder

        return evaluate_folder(self, data_dir)

    # -- streaming (audio) --
    def stream(self, source=None, **options):
        """Detections in a long recording or a live stream (audio bundles): a
        :class:`~edgetune.runtime.stream.Detector` sliding the base's window every
        `hop` seconds. Iterate it for {"label", "score", "start", "end"} (source: a
        file path, an array or an iterable of PCM chunks), or feed() it chunks and
        flush() at the end. options: rate, hop, smoothing, threshold, refractory,
        background (see .stream)."""
        from edgetune.runtime.stream import Detector

        return Detector(self, source, **options)

    def close(self) -> None:
        """Stop training, close the store and give the profile's lock up (idempotent)."""
        if self._thread is not None:
            self.stop_training()
        if self.store is not None:
            self.store.close()
        if self._sessions is not None:
            self._sessions.release()
        if self._writer is not None:
            self._writer.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_label(label) -> str:
    """User input -> the canonical class name (the one rule: edgetune.names)."""
    return class_name(label)
