"""The session state the routes and the live channel share: the personalizer, the
training run and its loss curve, what was trained on, and the event hub."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.defaults import EPOCHS
from edgetune.errors import BadInputError, EdgetuneError
from edgetune.runtime.personalizer import Personalizer
from edgetune.server.api import DAMAGED, ApiError, clean
from edgetune.server.hub import Hub

__all__ = ["MAX_POINTS", "PROGRESS_INTERVAL", "Studio", "TrainingRun"]

MAX_POINTS = 2_000  # loss points kept per run; more are thinned out (every other one)
PROGRESS_INTERVAL = 0.05  # seconds between progress messages


@dataclass
class TrainingRun:
    """One press of Train: its loss curve and what happened."""

    run: int
    epochs: int
    started: float = field(default_factory=time.time)
    points: list = field(default_factory=list)  # [epoch, loss]
    events: list = field(default_factory=list)  # rollbacks, early stop, errors
    stride: int = 1
    done: bool = False
    error: str | None = None
    sent: int = 0
    last_sent: float = 0.0

    def summary(self) -> dict:
        return clean({"run": self.run, "epochs": self.epochs, "points": self.points,
                      "events": self.events, "done": self.done, "error": self.error})


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
        self._trained_counts: dict[str, int] | None = None
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
        return {"type": "state",
                "input": self.input,
                "classes": [{"name": name, "count": n} for name, n in counts.items()],
                "samples": sum(counts.values()),
                "min_samples": self.min_samples,
                "default_epochs": self.default_epochs,
                "ready": reason is None,
                "reason": reason,
                "training": self.p.is_training,
                "trained": trained,
                "stale": bool(trained and self._trained_counts is not None
                              and self._trained_counts != counts),
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
        self.p.add_sample(image, label, source=source)
        return {"type": "recorded", "label": label, "count": self.p.counts().get(label, 0)}

    # -- training --
    def start_training(self, epochs: int, early_stop: bool) -> None:
        with self._run_lock:
            if self.p.is_training:
                raise ApiError(409, "training is already running", "training")
            reason = self.readiness(self.p.counts())
            if reason:
                raise ApiError(409, reason, "not_ready")
            number = self.run.run + 1 if self.run else 1
            self.run = run = TrainingRun(number, epochs)
            try:
                self.p.start_training(epochs=epochs, early_stop=early_stop,
                                      callback=lambda record: self._on_record(run, record))
            except DAMAGED:
                raise  # 500 corrupt_profile, not a conflict
            except EdgetuneError as e:
                raise ApiError(409, str(e), "training") from None
        self.hub.publish({"type": "training_started", "run": number, "epochs": epochs})
        task = asyncio.get_running_loop().create_task(self._watch(run))
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
        with self._run_lock:
            run.done = True
            if self.p.last_error and not run.error:
                run.error = self.p.last_error
            for record in self.p.history[-3:]:
                if record.get("event") in ("early_stop", "stopped") and record not in run.events:
                    run.events.append(record)
            message = self._progress(run, time.monotonic())
        if self.trained and not run.error:
            self._trained_counts = self.p.counts()
        self.hub.publish(message)
        self.hub.publish({"type": "training_done", "run": run.summary()})
        self.broadcast_state()

    def rename_class(self, old: str, new: str) -> None:
        """Rename keeps the class's column: a trained model stays up to date."""
        self.p.rename_class(old, new)
        counts = self._trained_counts
        if counts is not None and old in counts:
            self._trained_counts = {new if k == old else k: v for k, v in counts.items()}

    def stop_training(self) -> None:
        self.p.stop_training(timeout=10)

    def export(self) -> bytes:
        if not self.trained:
            raise ApiError(409, "nothing trained yet: press Train first", "not_trained")
        with tempfile.TemporaryDirectory(prefix="edgetune-export-") as tmp:
            path = self.p.export(Path(tmp) / "personal.onnx")
            return path.read_bytes()
