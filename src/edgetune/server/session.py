"""The session state the routes and the live channel share: the personalizer, the
training run and its loss curve, what was trained on, and the event hub.

What the model was last trained on (the sample ids and counts per class) is kept in the
profile's sample store (meta key ``server.trained``), so after a restart new samples
still mark the model stale and a class added since training is known to be untrained.
A record is trusted only while the profile's checkpoint step is the one it was written
with (training elsewhere, e.g. ``edgetune train``, makes it unknown, not wrong)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.defaults import EPOCHS
from edgetune.errors import BadInputError, EdgetuneError
from edgetune.runtime.fitting import DEFAULT_BATCH
from edgetune.runtime.personalizer import Personalizer
from edgetune.runtime.trainer import suggested_lr
from edgetune.server.api import DAMAGED, ApiError, clean
from edgetune.server.holdout import held_out_accuracy
from edgetune.server.hub import Hub
from edgetune.server.intake import add_inputs
from edgetune.server.limits import MAX_BATCH_SIZE, MAX_EPOCHS

__all__ = ["MAX_POINTS", "PROGRESS_INTERVAL", "TRAINED_META", "Studio", "TrainingRun"]

log = logging.getLogger("edgetune.server")

MAX_POINTS = 2_000  # loss points kept per run; more are thinned out (every other one)
PROGRESS_INTERVAL = 0.05  # seconds between progress messages
TRAINED_META = "server.trained"  # the store's record of what the model was trained on


@dataclass
class TrainingRun:
    """One press of Train: its loss curve and what happened."""

    run: int
    epochs: int
    settings: dict = field(default_factory=dict)  # batch_size, lr, early_stop as asked
    started: float = field(default_factory=time.time)
    points: list = field(default_factory=list)  # [epoch, loss]
    events: list = field(default_factory=list)  # rollbacks, early stop, errors
    stride: int = 1
    done: bool = False
    error: str | None = None
    sent: int = 0
    last_sent: float = 0.0
    evaluation: dict | None = None  # per-class accuracy on held-out samples, when done

    def summary(self) -> dict:
        return clean({"run": self.run, "epochs": self.epochs, "settings": self.settings,
                      "points": self.points, "events": self.events, "done": self.done,
                      "error": self.error, "evaluation": self.evaluation})


class Studio:
    """What the routes share: the personalizer, the training run, the event hub."""

    def __init__(self, personalizer: Personalizer, *, min_samples: int = 3,
                 default_epochs: int = EPOCHS, model_runs: int = 3):
        self.p = personalizer
        self._models = ThreadPoolExecutor(max(1, model_runs),
                                          thread_name_prefix="edgetune-model")
        self.min_samples = min_samples
        self.default_epochs = default_epochs
        self.hub = Hub()
        self.run: TrainingRun | None = None
        self._run_lock = threading.Lock()
        self._trained_on = self._load_trained()
        self._tasks: set[asyncio.Task] = set()

    # -- state --
    @property
    def input(self) -> dict:
        """What the page needs to know about the inputs: ``{"kind": "image"}``, or for
        audio ``{"kind": "audio", "sample_rate": 16000, "samples": 24000, "seconds": 1.5}``
        (as the profile's preparer reads them from the manifest)."""
        prep = self.p.preparer
        info: dict = {"kind": prep.kind}
        if prep.kind == "audio":
            info.update(sample_rate=prep.sample_rate, samples=prep.samples,
                        seconds=prep.samples / prep.sample_rate)
        return info

    @property
    def settings(self) -> dict:
        """The advanced settings' defaults and bounds (what Train uses when told nothing)."""
        return {"epochs": self.default_epochs, "batch_size": DEFAULT_BATCH,
                "lr": suggested_lr(self.p.bundle), "early_stop": True,
                "max_epochs": MAX_EPOCHS, "max_batch_size": MAX_BATCH_SIZE}

    @property
    def trained(self) -> bool:
        return self.p.trained

    def readiness(self, counts: dict[str, int]) -> str | None:
        """Why training cannot start yet, or None when it can."""
        if len(counts) < 2:
            return "Add at least two classes." if counts else "Add a class for each thing " \
                "to tell apart (at least two)."
        short = [f"{name} ({n})" for name, n in counts.items() if n < self.min_samples]
        if short:
            return f"Record at least {self.min_samples} samples for every class; " \
                f"too few: {', '.join(short)}."
        return None

    def state(self, points: bool = True) -> dict:
        """What the page shows. points=False leaves out the loss curve (broadcasts after
        every recorded frame need not repeat it; progress messages carry it)."""
        counts = self.p.counts()
        with self._run_lock:
            run = self.run.summary() if self.run else None
        if run and not points:
            run["points"] = None
        trained = self.trained
        reason = self.readiness(counts)
        record = self._trained_on if trained else None
        untrained = [c for c in counts if record is not None and c not in record["counts"]]
        stale = bool(record is not None and (record["counts"] != counts or
                                             record["samples"] != self._digest()))
        return {"type": "state",
                "input": self.input,
                "classes": [{"name": name, "count": n} for name, n in counts.items()],
                "samples": sum(counts.values()),
                "min_samples": self.min_samples,
                "default_epochs": self.default_epochs,
                "settings": self.settings,
                "ready": reason is None,
                "reason": reason,
                "training": self.p.is_training,
                "trained": trained,
                "stale": stale,
                "untrained": untrained,  # classes added since training: Download waits
                "run": run,
                "last_error": self.p.last_error}

    def broadcast_state(self) -> None:
        if len(self.hub):
            self.hub.publish(self.state(points=False))

    async def run_model(self, fn, *args):
        """fn(*args) in the model pool: at most `model_runs` base-model runs at once."""
        return await asyncio.get_running_loop().run_in_executor(self._models, fn, *args)

    # -- samples and prediction (called in worker threads) --
    def predict(self, image) -> dict:
        t0 = time.perf_counter()
        if not any(self.p.counts().values()):
            self.p.preparer.check(image)  # still say when the input is unusable
            return {"type": "prediction", "label": None, "scores": {}, "source": None,
                    "message": "no samples yet: record or add images for a class"}
        result = self.p.predict(image)
        return clean({"type": "prediction", **result,
                      "ms": round((time.perf_counter() - t0) * 1000, 2)})

    def record(self, image, label: str, source: str) -> dict:
        if label not in self.p.counts():
            raise BadInputError(f"unknown class {label!r}; add it first")
        result = add_inputs(self.p, [(None, image)], label, source)
        if result.failed:
            raise BadInputError(result.failed[0]["error"])
        return {"type": "recorded", "label": label, "id": result.ids[0],
                "count": self.p.counts().get(label, 0)}

    # -- what the model was trained on --
    def _digest(self) -> str:
        """The stored samples' ids, hashed: changes when any sample is added or removed."""
        ids = ",".join(str(s.id) for s in self.p.samples())
        return hashlib.sha256(ids.encode()).hexdigest()

    def _load_trained(self) -> dict | None:
        try:
            record = json.loads(self.p.store.get_meta(TRAINED_META) or "null")
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("step") != self.p.step or \
                not isinstance(record.get("counts"), dict):
            return None  # trained elsewhere since (or never): unknown, not stale
        return record

    def _save_trained(self, record: dict | None) -> None:
        self._trained_on = record
        if record is not None:
            self.p.store.set_meta(TRAINED_META, json.dumps(record))

    # -- training --
    def start_training(self, epochs: int, early_stop: bool = True, *,
                       batch_size: int | None = None, lr: float | None = None) -> None:
        """Start a run (settings already checked: routes.training_settings)."""
        settings = {"batch_size": batch_size, "lr": lr, "early_stop": early_stop}
        with self._run_lock:
            if self.p.is_training:
                raise ApiError(409, "training is already running", "training")
            reason = self.readiness(self.p.counts())
            if reason:
                raise ApiError(409, reason, "not_ready")
            number = self.run.run + 1 if self.run else 1
            self.run = run = TrainingRun(number, epochs, settings)
            try:
                self.p.start_training(epochs=epochs, early_stop=early_stop,
                                      batch_size=batch_size, lr=lr,
                                      callback=lambda record: self._on_record(run, record))
            except DAMAGED:
                raise  # 500 corrupt_profile, not a conflict
            except EdgetuneError as e:
                raise ApiError(409, str(e), "training") from None
        self.hub.publish({"type": "training_started", "run": number, "epochs": epochs})
        self.broadcast_state()  # every tab: the pill says Training, Stop shows
        self._spawn(self._watch(run))

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_record(self, run: TrainingRun, record: dict) -> None:
        """Training-thread callback: keep the curve, send progress at most every 50 ms."""
        with self._run_lock:
            if record.get("event"):
                run.events.append(record)
                if record["event"] == "error":
                    run.error = record.get("message")
            elif "loss" in record:
                if record["epoch"] % run.stride == 0:
                    run.points.append([record["epoch"], record["loss"]])
                if len(run.points) > MAX_POINTS:
                    run.points = run.points[::2]
                    run.stride *= 2
                    run.sent = 0  # tell the pages to replace their curve
            now = time.monotonic()
            if not record.get("event") and now - run.last_sent < PROGRESS_INTERVAL:
                return
            message = self._progress(run, now)
        self.hub.publish(message)

    def _progress(self, run: TrainingRun, now: float) -> dict:
        replace = run.sent == 0
        points = run.points[run.sent:]
        run.sent, run.last_sent = len(run.points), now
        last = run.points[-1] if run.points else [0, None]
        return clean({"type": "progress", "run": run.run, "replace": replace,
                      "points": points, "epoch": last[0], "loss": last[1],
                      "events": run.events[-3:]})

    async def _watch(self, run: TrainingRun) -> None:
        while self.p.is_training:
            await asyncio.sleep(0.05)
        with self._run_lock:  # the run's own events came through _on_record
            run.done = True
            if self.p.last_error and not run.error:
                run.error = self.p.last_error
            message = self._progress(run, time.monotonic())
        if self.trained and not run.error:
            record = await asyncio.to_thread(
                lambda: {"counts": self.p.counts(), "samples": self._digest(),
                         "step": self.p.step})
            await asyncio.to_thread(self._save_trained, record)
        self.hub.publish(message)
        self.hub.publish({"type": "training_done", "run": run.summary()})
        self.broadcast_state()
        if not run.error and run.points:
            await self._evaluate(run)

    async def _evaluate(self, run: TrainingRun) -> None:
        """Per-class accuracy on held-out samples (.holdout), after the run."""
        try:
            report = await asyncio.to_thread(
                held_out_accuracy, self.p, epochs=run.epochs, lr=run.settings.get("lr"),
                batch_size=run.settings.get("batch_size"),
                early_stop=run.settings.get("early_stop", True))
        except Exception:  # the run itself succeeded; say nothing rather than fail it
            log.exception("held-out evaluation failed")
            return
        with self._run_lock:
            run.evaluation = clean(report)
        self.hub.publish({"type": "evaluation", "run": run.run, "evaluation": run.evaluation})

    async def release_idle(self, idle: float) -> None:
        """Release the profile's sessions once unused for `idle` seconds, checking every
        `idle` / 4 (until cancelled, at shutdown): a server nobody uses holds no model."""
        while True:
            await asyncio.sleep(idle / 4)
            gone = await asyncio.to_thread(self.p.release_sessions, idle)
            if gone:
                log.info("released sessions idle for %g s: %s", idle, ", ".join(gone))

    async def aclose(self, timeout: float = 30) -> None:
        """Wait for the watchers and evaluations still running (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def rename_class(self, old: str, new: str) -> None:
        """Rename keeps the class's column: a trained model stays up to date."""
        self.p.rename_class(old, new)
        record = self._trained_on
        if record is not None and old in record["counts"]:
            counts = {new if k == old else k: v for k, v in record["counts"].items()}
            self._save_trained({**record, "counts": counts})
        with self._run_lock:  # the held-out accuracy names the class by its new name
            report = self.run.evaluation if self.run else None
            if report and old in report.get("per_class", {}):
                report["per_class"] = {new if k == old else k: v
                                       for k, v in report["per_class"].items()}

    def stop_training(self) -> None:
        self.p.stop_training(timeout=10)

    def export(self) -> bytes:
        if not self.trained:
            raise ApiError(409, "nothing trained yet: press Train first", "not_trained")
        untrained = self.state(points=False)["untrained"]
        if untrained:
            raise ApiError(409, f"class {', '.join(map(repr, untrained))} was added after "
                           f"training: press Train again before downloading", "not_trained")
        with tempfile.TemporaryDirectory(prefix="edgetune-export-") as tmp:
            path = self.p.export(Path(tmp) / "personal.onnx")
            return path.read_bytes()
