"""Run training-step graphs with a stock onnxruntime: the device side of a step.

A GraphTrainer holds the parameters and optimizer state as numpy arrays, feeds them
to the `train` graph (one mini-batch per call) or the `train_epoch` graph (a whole
epoch per call) and takes the updated values back. It knows graphs only by tensor
names, as a bundle's manifest gives them.

    trainer = GraphTrainer(train_bytes, params, state, io, epoch=epoch_bytes, lr=0.1)
    losses = trainer.epoch(features, labels, batch_size=32)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from edgetune.defaults import LR

# Heads compute (W x^T)^T because onnxruntime's GEMM is several times faster with the
# few classes as rows; this fusion turns it back into x W^T (4 of 33 us per step).
DISABLED_OPTIMIZERS = ["GemmTransposeFusion"]


def make_session(model: bytes | str | ort.InferenceSession,
                 threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session (a given session is used as is); `threads=1` for
    predictable benchmarks."""
    if isinstance(model, ort.InferenceSession):
        return model
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=DISABLED_OPTIMIZERS)
    # onnxruntime's Python wrapper keeps the model bytes for a fallback to other
    # execution providers, which a CPU-only session never takes: for the base, 13 MB
    # held for as long as the session lives.
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    return session


def bundle_session(bundle, role: str, threads: int | None = None, inputs=(),
                   outputs=(), optimized: bool = False) -> ort.InferenceSession:
    """A session for a bundle graph whose tensor names match the manifest (and `inputs`,
    `outputs`); any mismatch or onnxruntime refusal is a BundleError naming the graph.
    optimized: from this machine's saved optimized form of the graph (.optimized; for
    the base, whose optimization costs time and memory at every session)."""
    from edgetune.errors import BundleError

    roles_in, roles_out = bundle.io(role)
    try:
        session = None
        if optimized and bundle.path is not None:
            from edgetune.runtime.optimized import optimized_session

            session = optimized_session(bundle, role, threads, DISABLED_OPTIMIZERS)
        session = session or make_session(bundle.graph(role), threads)
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


def training_threads(bundle, threads: int | None) -> int | None:
    """onnxruntime threads for a bundle's training graphs: one when only the head trains
    (a few small GEMMs per step, where a second thread only adds synchronization: 50
    epochs of 80 samples took 0.23 s at two threads and 0.10 s at one), else `threads`."""
    trainable = bundle.manifest.get("trainable")
    return 1 if isinstance(trainable, dict) and trainable.get("mode") == "head" else threads


def initial_train_values(bundle) -> dict[str, np.ndarray]:
    """train-graph input name -> value: the bundle's initial parameters, zero optimizer
    state (each slot shaped like its parameter)."""
    initial = bundle.initial_values()
    values = {p["train_input"]: np.asarray(initial[p["name"]], np.float32)
              for p in bundle.params}
    by_name = {p["name"]: p["train_input"] for p in bundle.params}
    values.update({s["train_input"]: np.zeros_like(values[by_name[s["param"]]])
                   for s in bundle.state})
    return values


def suggested_lr(bundle) -> float:
    """The learning rate the bundle was made with (its manifest), else defaults.LR."""
    optimizer = bundle.manifest.get("optimizer")
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    return float(lr) if isinstance(lr, int | float) and lr > 0 else LR


class GraphTrainer:
    """Holds parameters and optimizer state; runs `train` / `train_epoch` graphs.

    params, state: train-graph input name -> initial value (state defaults to zeros);
    io: train-graph input name -> the output name that carries its updated value.
    """

    def __init__(self, train: bytes | str | ort.InferenceSession,
                 params: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray] | None,
                 io: Mapping[str, str], *,
                 epoch: bytes | str | ort.InferenceSession | None = None, lr: float = 0.01,
                 threads: int | None = None):
        self.values = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        self.values.update({k: np.ascontiguousarray(v, np.float32)
                            for k, v in (state or {}).items()})
        self.io = dict(io)
        self.lr = lr
        self.step_count = 0  # steps taken; the graph's `step` input is this + 1
        self._train = make_session(train, threads)
        self._epoch = make_session(epoch, threads) if epoch is not None else None
        if self._epoch is not None and any(i.name == "batch_size"
                                           for i in self._epoch.get_inputs()):
            self._epoch = None  # an older bundle's epoch graph: steps still work
        missing = [n for n in self.io if n not in self.values]
        if missing:
            raise ValueError(f"no initial value for graph inputs {missing}")

    @classmethod
    def for_bundle(cls, bundle, values: Mapping[str, np.ndarray] | None = None, *,
                   lr: float | None = None, threads: int | None = None,
                   sessions: Mapping[str, ort.InferenceSession] | None = None) -> GraphTrainer:
        """The one way to make a trainer: for an `edgetune.bundle.Bundle` (or the
        converter's `TrainingGraphs.as_bundle()`), from its manifest alone.

        values: train-graph input name -> value (default: the bundle's initial
        parameters and zero optimizer state). lr defaults to the manifest's. sessions:
        already-made sessions by role (`train`, `train_epoch`) to reuse.
        """
        specs = bundle.params + bundle.state
        if values is None:
            values = initial_train_values(bundle)
        sessions = dict(sessions or {})
        train = sessions.get("train") or bundle.graph("train")
        epoch = sessions.get("train_epoch") or (
            bundle.graph("train_epoch") if bundle.has_graph("train_epoch") else None)
        if lr is None:
            lr = suggested_lr(bundle)
        return cls(train, values, None, {s["train_input"]: s["train_output"] for s in specs},
                   epoch=epoch, lr=lr, threads=threads)

    @property
    def has_epoch_graph(self) -> bool:
        return self._epoch is not None

    def _run(self, session: ort.InferenceSession, feeds: dict, first_output: str):
        names = [first_output, *self.io.values()]
        first, *updated = session.run(names, {**feeds, **self.values})
        for name, value in zip(self.io, updated, strict=True):
            self.values[name] = value
        return first

    def _data(self, features, labels, sample_weight) -> dict:
        features = np.ascontiguousarray(features, np.float32)
        labels = np.ascontiguousarray(labels, np.int64)
        if sample_weight is None:
            sample_weight = np.ones(len(labels), np.float32)
        if len(features) != len(labels) or len(labels) != len(sample_weight):
            raise ValueError(f"features ({len(features)}), labels ({len(labels)}) and sample "
                             f"weights ({len(sample_weight)}) need one row per sample")
        return {"features": features, "labels": labels,
                "sample_weight": np.ascontiguousarray(sample_weight, np.float32)}

    def step(self, features, labels, sample_weight=None, lr: float | None = None) -> float:
        """One optimizer step on one mini-batch; returns its loss."""
        feeds = self._data(features, labels, sample_weight)
        feeds["lr"] = np.array(self.lr if lr is None else lr, np.float32)
        feeds["step"] = np.array(self.step_count + 1, np.int64)
        loss = self._run(self._train, feeds, "loss")
        self.step_count += 1
        return float(loss)

    def epoch(self, features, labels, sample_weight=None, batch_size: int = 32,
              lr: float | None = None) -> np.ndarray:
        """Consecutive mini-batches of `batch_size` rows (the last may be smaller);
        returns the loss of each. The full mini-batches go through the epoch graph in
        one call, a smaller last one through the step graph. Shuffle the rows first."""
        if self._epoch is None:
            raise ValueError("this trainer has no train_epoch graph")
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
        feeds = self._data(features, labels, sample_weight)
        n = len(feeds["labels"])
        full = n // batch_size * batch_size
        losses = np.zeros(0, np.float32)
        if full:
            batched = {k: v[:full].reshape(full // batch_size, batch_size, *v.shape[1:])
                       for k, v in feeds.items()}
            batched["lr"] = np.array(self.lr if lr is None else lr, np.float32)
            batched["step"] = np.array(self.step_count + 1, np.int64)
            losses = self._run(self._epoch, batched, "losses")
            self.step_count += len(losses)
        if full < n:
            rest = self.step(*(feeds[k][full:] for k in ("features", "labels",
                                                         "sample_weight")), lr=lr)
            losses = np.append(losses, np.float32(rest))
        return losses
