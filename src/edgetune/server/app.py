"""The teachable camera's web app: Starlette on uvicorn, one page, one WebSocket.

    app = create_app(Personalizer("model.edgetune", profile="me/"))
    uvicorn.run(app, host="127.0.0.1", port=8321, **uvicorn_config_kwargs())

HTTP API (JSON in and out; errors are ``{"error": message, "code": code}``):

    GET    /                      the page (static files under /static/)
    GET    /api/state             classes with sample counts, training state, loss curve
    POST   /api/classes           {"name": N}                     add a class
    PATCH  /api/classes?name=OLD  {"name": NEW}                   rename a class
    DELETE /api/classes?name=N                                    remove a class and its samples
    POST   /api/samples           multipart: label=N, files...    add image files to a class
    DELETE /api/samples/last?label=N                              undo the class's last sample
    DELETE /api/samples/ID                                        remove one sample
    POST   /api/predict           multipart: image=FILE (or a raw image/* body)
    POST   /api/train             {"epochs": 50, "early_stop": true}  train in the background
    POST   /api/train/stop
    GET    /api/model.onnx        the personalized model (standalone ONNX, classes in metadata)

WebSocket ``/ws`` (the page's live channel). Client to server:

- a **binary** message is one camera frame (JPEG, PNG or WebP bytes, at most
  ``Limits.frame_bytes``): the server replies ``{"type": "prediction", "label",
  "scores", "source", "ms", "frame"}``, or, while recording, stores it as a sample and
  replies ``{"type": "recorded", "label", "count", "frame"}``;
- ``{"type": "record", "label": "mug"}`` records the following frames into class
  "mug" (it must exist); ``{"type": "record", "label": null}`` goes back to predicting;
- ``{"type": "frame", "image": BASE64 or data URL, "record": optional label}``: a frame
  as text, for clients that cannot send binary messages;
- ``{"type": "ping"}`` gets ``{"type": "pong"}``.

Server to client, besides the replies: ``{"type": "state", ...}`` after every change
(also made by other tabs), ``{"type": "training_started"}``, ``{"type": "progress",
"points": [[epoch, loss], ...]}`` (throttled to ~20 per second) and
``{"type": "training_done"}``. A malformed or oversized message gets
``{"type": "error", "code", "message"}`` and the connection stays open.

Security: bound to loopback by default. With ``loopback_only`` the Host header must
name a loopback host (DNS rebinding) ; with a ``token`` every request and the
WebSocket need it (``Authorization: Bearer T``, the ``edgetune_token`` cookie the page
gets from ``/?token=T``, or ``?token=T``). State-changing requests and the WebSocket
must come from the page's own origin when the browser says where they come from.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edgetune.errors import BadInputError, EdgetuneError
from edgetune.inputs.image import load_image
from edgetune.runtime.personalizer import Personalizer

log = logging.getLogger("edgetune.server")

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "edgetune_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
MAX_NAME = 200
MAX_EPOCHS = 10_000
MAX_POINTS = 2_000  # loss points kept per run; more are thinned out (every other one)
PROGRESS_INTERVAL = 0.05  # seconds between progress messages
UPLOAD_PATHS = ("/api/samples", "/api/predict")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Limits:
    """Size limits: a frame over the WebSocket, an HTTP upload, any other HTTP body, and
    a text WebSocket message that is not a frame. body_timeout: seconds an HTTP body may
    stall (a client that sends less than its Content-Length gets 408, and its connection
    is freed). model_runs: base-model runs at once (predictions, recorded frames,
    uploads); each concurrent run holds its own activation memory, so this bounds the
    server's memory however many clients send frames."""

    frame_bytes: int = 2 * 1024 * 1024
    upload_bytes: int = 20 * 1024 * 1024
    json_bytes: int = 64 * 1024
    message_chars: int = 64 * 1024
    files_per_upload: int = 500
    body_timeout: float = 30.0
    model_runs: int = 3

    @property
    def ws_max_size(self) -> int:
        """What uvicorn should accept per WebSocket message: a base64 frame and some
        room, so an oversized frame gets an error reply instead of a dropped connection."""
        return 2 * self.frame_bytes + self.message_chars


def uvicorn_config_kwargs(limits: Limits | None = None) -> dict:
    """Settings for uvicorn.Config that go with this app."""
    limits = limits or Limits()
    return {"ws_max_size": limits.ws_max_size, "limit_concurrency": 64,
            "timeout_keep_alive": 5, "server_header": False}


def _mb(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"
    return f"{n / (1024 * 1024):.1f} MB"


def _clean(obj):
    """JSON-safe: non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message)
        self.code = code


# ----------------------------------------------------------------------- events


class Hub:
    """Fan-out of JSON messages to every open WebSocket; publish() works from any thread."""

    def __init__(self) -> None:
        self._subscribers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()

    def subscribe(self, queue: asyncio.Queue) -> int:
        key = id(queue)
        with self._lock:
            self._subscribers[key] = (asyncio.get_running_loop(), queue)
        return key

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._subscribers.pop(key, None)

    def publish(self, message: dict) -> None:
        with self._lock:
            targets = list(self._subscribers.values())
        for loop, queue in targets:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_offer, queue, message)

    def __len__(self) -> int:
        return len(self._subscribers)


def _offer(queue: asyncio.Queue, message: dict) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a slow reader misses broadcasts only
        queue.put_nowait(message)


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
        return _clean({"run": self.run, "epochs": self.epochs, "points": self.points,
                       "events": self.events, "done": self.done, "error": self.error})


# ----------------------------------------------------------------------- the app state


class Studio:
    """What the routes share: the personalizer, the training run, the event hub."""

    def __init__(self, personalizer: Personalizer, *, min_samples: int = 3,
                 default_epochs: int = 50, model_runs: int = 3):
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
    def trained(self) -> bool:
        return self.p.trained

    def readiness(self, counts: dict[str, int]) -> str | None:
        """Why training cannot start yet, or None when it can."""
        if len(counts) < 2:
            return "Add at least two classes." if counts else "Add a class for each thing " \
                "the camera should tell apart (at least two)."
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
        return {"type": "state",
                "classes": [{"name": name, "count": n} for name, n in counts.items()],
                "samples": sum(counts.values()),
                "min_samples": self.min_samples,
                "ready": self.readiness(counts) is None,
                "reason": self.readiness(counts),
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
            load_image(image, min_size=self.p.min_image_size)  # still say when it is no image
            return {"type": "prediction", "label": None, "scores": {}, "source": None,
                    "message": "no samples yet: record or add images for a class"}
        result = self.p.predict(image)
        return _clean({"type": "prediction", **result,
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
        return _clean({"type": "progress", "run": run.run, "replace": replace,
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


# ----------------------------------------------------------------------- helpers


def _label(value, what: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{what} must be a non-empty string", "bad_name")
    value = value.strip()
    if len(value) > MAX_NAME:
        raise ApiError(400, f"{what} is longer than {MAX_NAME} characters", "bad_name")
    if any(ord(c) < 32 for c in value):
        raise ApiError(400, f"{what} must not contain control characters", "bad_name")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no store can hold it
        raise ApiError(400, f"{what} is not valid Unicode", "bad_name") from None
    return value


async def _json_body(request: Request, *, optional: bool = False) -> dict:
    body = await request.body()
    if not body.strip():
        if optional:
            return {}
        raise ApiError(400, "this request needs a JSON object body", "bad_json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", "bad_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", "bad_json")
    return data


def _studio(request) -> Studio:
    return request.app.state.studio


async def _files(request: Request, limits: Limits) -> tuple[dict, list[tuple[str, bytes]]]:
    """Fields and files of a multipart form (each file at most the upload limit)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data",
                                    "application/x-www-form-urlencoded")):
        raise ApiError(415, "send the images as multipart/form-data", "bad_content_type")
    async with request.form(max_files=limits.files_per_upload, max_fields=20,
                            max_part_size=4096) as form:
        fields, files = {}, []
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files.append((value.filename or key, await value.read()))
    return fields, files


# ----------------------------------------------------------------------- routes


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def get_state(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_studio(request).state))


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def add_class(request: Request) -> Response:
    studio = _studio(request)
    name = _label((await _json_body(request)).get("name"))
    await run_in_threadpool(studio.p.add_class, name)
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state), status_code=201)


async def change_class(request: Request) -> Response:
    studio = _studio(request)
    name = _label(request.query_params.get("name"), "the name query parameter")
    if request.method == "DELETE":
        await run_in_threadpool(studio.p.remove_class, name)
    else:
        new = _label((await _json_body(request)).get("name"), "the new name")
        await run_in_threadpool(studio.rename_class, name, new)
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state))


async def add_samples(request: Request) -> Response:
    studio, limits = _studio(request), request.app.state.limits
    fields, files = await _files(request, limits)
    label = _label(fields.get("label"), "the label field")
    if not files:
        raise ApiError(400, "no image files in the upload", "no_files")
    if label not in await run_in_threadpool(studio.p.counts):
        raise ApiError(404, f"unknown class {label!r}; add it first", "unknown_class")
    images = [data for _, data in files]
    sources = [f"upload:{name[:100]}" for name, _ in files]
    await studio.run_model(studio.p.add_samples, images, [label] * len(images), sources)
    studio.broadcast_state()
    return JSONResponse({"added": len(images), "state": await run_in_threadpool(studio.state)})


async def undo_sample(request: Request) -> Response:
    studio = _studio(request)
    label = _label(request.query_params.get("label"), "the label query parameter")

    def undo():
        ids = [s.id for s in studio.p.samples() if s.label == label]
        if not ids:
            raise ApiError(404, f"class {label!r} has no samples", "no_samples")
        studio.p.remove_sample(ids[-1])
        return ids[-1]

    removed = await run_in_threadpool(undo)
    studio.broadcast_state()
    return JSONResponse({"removed": removed, "state": await run_in_threadpool(studio.state)})


async def remove_sample(request: Request) -> Response:
    studio = _studio(request)
    await run_in_threadpool(studio.p.remove_sample, request.path_params["sample_id"])
    studio.broadcast_state()
    return JSONResponse(await run_in_threadpool(studio.state))


async def predict(request: Request) -> Response:
    studio, limits = _studio(request), request.app.state.limits
    if request.headers.get("content-type", "").startswith("image/"):
        image = await request.body()
    else:
        _, files = await _files(request, limits)
        if len(files) != 1:
            raise ApiError(400, f"send exactly one image (got {len(files)})", "no_files")
        image = files[0][1]
    if not image:
        raise ApiError(400, "the image is empty", "bad_image")
    return JSONResponse(await studio.run_model(studio.predict, image))


async def train(request: Request) -> Response:
    studio = _studio(request)
    body = await _json_body(request, optional=True)
    epochs = body.get("epochs", studio.default_epochs)
    early_stop = body.get("early_stop", True)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise ApiError(400, f"epochs must be a whole number from 1 to {MAX_EPOCHS}",
                       "bad_epochs")
    if not isinstance(early_stop, bool):
        raise ApiError(400, "early_stop must be true or false", "bad_json")
    studio.start_training(epochs, early_stop)
    return JSONResponse(await run_in_threadpool(studio.state), status_code=202)


async def stop_training(request: Request) -> Response:
    studio = _studio(request)
    await run_in_threadpool(studio.stop_training)
    return JSONResponse(await run_in_threadpool(studio.state))


async def download_model(request: Request) -> Response:
    data = await run_in_threadpool(_studio(request).export)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="edgetune-personal.onnx"',
                             "Cache-Control": "no-store"})


# ----------------------------------------------------------------------- WebSocket


async def websocket_endpoint(ws: WebSocket) -> None:
    studio, limits = ws.app.state.studio, ws.app.state.limits
    await ws.accept()
    outbox: asyncio.Queue = asyncio.Queue(maxsize=256)
    key = studio.hub.subscribe(outbox)
    sender = asyncio.create_task(_sender(ws, outbox))
    session = {"record": None, "frame": 0}
    try:
        await outbox.put(await run_in_threadpool(studio.state))
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                reply = await _handle(studio, limits, session, message)
            except ApiError as e:
                reply = {"type": "error", "code": e.code, "message": e.detail}
            except BadInputError as e:
                reply = {"type": "error", "code": "bad_input", "message": str(e)}
            except EdgetuneError as e:
                reply = {"type": "error", "code": "conflict", "message": str(e)}
            except Exception:  # never let one message take the server down
                log.exception("websocket message failed")
                reply = {"type": "error", "code": "internal", "message": "internal error"}
            if reply is not None:
                if sender.done():  # the client is gone
                    break
                try:
                    await asyncio.wait_for(outbox.put(reply), timeout=30)
                except asyncio.TimeoutError:  # a client that reads nothing
                    break
    except WebSocketDisconnect:
        pass
    finally:
        studio.hub.unsubscribe(key)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _sender(ws: WebSocket, outbox: asyncio.Queue) -> None:
    while True:
        message = await outbox.get()
        if ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            await ws.send_text(json.dumps(_clean(message), allow_nan=False))
        except Exception:  # the client went away
            return


async def _handle(studio: Studio, limits: Limits, session: dict, message: dict) -> dict | None:
    data, text = message.get("bytes"), message.get("text")
    if data is not None:
        return await _frame(studio, limits, session, data, session["record"])
    if text is None:
        raise ApiError(400, "empty message", "bad_message")
    frame_text = len(text) > limits.message_chars
    if frame_text and len(text) > limits.ws_max_size:
        raise ApiError(413, f"message of {len(text)} characters is too large", "too_large")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ApiError(400, "the message is not valid JSON (a frame is a binary message)",
                       "bad_json") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ApiError(400, 'a text message must be a JSON object with a "type"',
                       "bad_message")
    kind = msg["type"]
    if frame_text and kind != "frame":
        raise ApiError(413, f"a {kind!r} message may have at most {limits.message_chars} "
                       f"characters", "too_large")
    if kind == "ping":
        return {"type": "pong", "id": msg.get("id")}
    if kind == "record":
        label = msg.get("label")
        if label is not None:
            label = _label(label, "label")
            if label not in await run_in_threadpool(studio.p.counts):
                raise ApiError(404, f"unknown class {label!r}; add it first", "unknown_class")
        session["record"] = label
        return {"type": "recording", "label": label}
    if kind == "frame":
        image = msg.get("image")
        if not isinstance(image, str):
            raise ApiError(400, '"image" must be a base64 string or a data URL', "bad_image")
        if image.startswith("data:"):
            image = image.partition(",")[2]
        if len(image) > (limits.frame_bytes * 4) // 3 + 4:
            raise ApiError(413, f"frame is larger than {_mb(limits.frame_bytes)}",
                           "frame_too_large")
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, '"image" is not valid base64', "bad_image") from None
        record = session["record"]
        if "record" in msg:
            record = None if msg["record"] is None else _label(msg["record"], "record")
        return await _frame(studio, limits, session, data, record)
    raise ApiError(400, f"unknown message type {kind!r} (expected record, frame or ping)",
                   "bad_message")


async def _frame(studio: Studio, limits: Limits, session: dict, data: bytes,
                 record: str | None) -> dict:
    session["frame"] += 1
    number = session["frame"]
    if len(data) > limits.frame_bytes:
        return {"type": "error", "code": "frame_too_large", "frame": number,
                "message": f"frame is {_mb(len(data))}; the limit is {_mb(limits.frame_bytes)}"}
    if not data:
        raise ApiError(400, "empty frame", "bad_image")
    if record is None:
        reply = await studio.run_model(studio.predict, data)
    else:
        reply = await studio.run_model(studio.record, data, record, "camera")
        studio.broadcast_state()
    reply["frame"] = number
    return reply


# ----------------------------------------------------------------------- guard


class Guard:
    """ASGI middleware: access token, Host and Origin checks, body size limits and
    stall timeout, security headers."""

    def __init__(self, app, *, token: str | None, loopback_only: bool, limits: Limits):
        self.app = app
        self.token = token
        self.loopback_only = loopback_only
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        problem = self._check(scope, headers)
        if problem is None and self.token and scope["type"] == "http" and \
                scope["path"] == "/" and self._query_token(scope):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                path="/")
            return await response(scope, receive, self._secure_send(send))
        if problem is not None:
            status, message, code = problem
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                return await send({"type": "websocket.close", "code": 1008,
                                   "reason": message[:120]})
            return await _error(status, message, code)(scope, receive, self._secure_send(send))
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        limit = self.limits.upload_bytes if scope["path"] in UPLOAD_PATHS \
            else self.limits.json_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, "bad Content-Length", "bad_request")(
                    scope, receive, self._secure_send(send))
            if int(length) > limit:
                return await _error(413, f"the request body is {_mb(int(length))}; the limit "
                                    f"here is {_mb(limit)}", "too_large")(
                    scope, receive, self._secure_send(send))
        received, complete = 0, False

        async def limited_receive():
            nonlocal received, complete
            if complete:  # the body is in; waiting for a disconnect may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body stalled for "
                               f"{self.limits.body_timeout:g} s", "timeout") from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"the request body is larger than {_mb(limit)}",
                                   "too_large")
            return message

        return await self.app(scope, limited_receive, self._secure_send(send))

    @staticmethod
    def _secure_send(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in ((b"content-security-policy", CSP),
                                    (b"x-content-type-options", "nosniff"),
                                    (b"referrer-policy", "no-referrer"),
                                    (b"x-frame-options", "DENY")):
                    if name not in names:
                        headers.append((name, value.encode()))
                message = {**message, "headers": headers}
            await send(message)
        return wrapped

    def _query_token(self, scope) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return any(self._same(t) for t in query.get("token", []))

    def _same(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def _check(self, scope, headers: dict) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if self.loopback_only and _hostname(host) not in LOOPBACK_HOSTS:
            return 403, f"unexpected Host header {host[:100]!r}: this server answers only " \
                "to 127.0.0.1, localhost or [::1] (start it with --token to serve others)", \
                "bad_host"
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD")
        if origin and unsafe and urlsplit(origin).netloc.lower() != host.lower():
            return 403, f"cross-origin request from {origin[:100]!r} refused", "bad_origin"
        if self.token:
            supplied = []
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                supplied.append(auth[7:].strip())
            if "cookie" in headers:
                cookie = SimpleCookie()
                with contextlib.suppress(Exception):
                    cookie.load(headers["cookie"])
                if TOKEN_COOKIE in cookie:
                    supplied.append(cookie[TOKEN_COOKIE].value)
            if not any(self._same(t) for t in supplied) and not self._query_token(scope):
                return 401, "an access token is required: open /?token=YOUR_TOKEN once, or " \
                    "send Authorization: Bearer YOUR_TOKEN", "unauthorized"
        return None


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


# ----------------------------------------------------------------------- factory


def create_app(personalizer: Personalizer, *, token: str | None = None,
               loopback_only: bool = True, limits: Limits | None = None,
               min_samples: int = 3, default_epochs: int = 50) -> Guard:
    """The ASGI app for one personalizer (the caller opens and closes it).

    token: require this access token on every request. loopback_only: answer only to
    Host headers naming a loopback host (use False when serving other devices).
    min_samples: samples every class needs before Train is allowed.
    """
    limits = limits or Limits()
    studio = Studio(personalizer, min_samples=min_samples, default_epochs=default_epochs,
                    model_runs=limits.model_runs)

    async def api_error(request, exc):
        if isinstance(exc, ApiError):
            return _error(exc.status_code, exc.detail, exc.code)
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large"}
        return _error(exc.status_code, str(exc.detail), codes.get(exc.status_code, "error"))

    async def bad_input(request, exc):
        return _error(400, str(exc), "bad_input")

    async def conflict(request, exc):
        return _error(409, str(exc), "conflict")

    async def client_gone(request, exc):  # it left mid-body: nobody reads the reply
        return Response(status_code=400)

    async def internal(request, exc):
        log.exception("request failed", exc_info=exc)
        return _error(500, "internal error; see the server log", "internal")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            await run_in_threadpool(personalizer.stop_training, 10)

    routes = [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/state", get_state, methods=["GET"]),
        Route("/api/classes", add_class, methods=["POST"]),
        Route("/api/classes", change_class, methods=["PATCH", "DELETE"]),
        Route("/api/samples", add_samples, methods=["POST"]),
        Route("/api/samples/last", undo_sample, methods=["DELETE"]),
        Route("/api/samples/{sample_id:int}", remove_sample, methods=["DELETE"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/train", train, methods=["POST"]),
        Route("/api/train/stop", stop_training, methods=["POST"]),
        Route("/api/model.onnx", download_model, methods=["GET"]),
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: api_error, BadInputError: bad_input,
                                        EdgetuneError: conflict, ClientDisconnect: client_gone,
                                        Exception: internal})
    app.state.studio = studio
    app.state.limits = limits
    guarded = Guard(app, token=token, loopback_only=loopback_only, limits=limits)
    guarded.state = app.state  # so callers reach the studio: create_app(...).state.studio
    return guarded


class BackgroundServer:
    """Run an app on uvicorn in a thread (tests, benchmarks)::

        with BackgroundServer(app) as server:
            urlopen(server.url + "api/state")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0,
                 limits: Limits | None = None, log_level: str = "warning"):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                lifespan="on", **uvicorn_config_kwargs(limits))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="edgetune-server",
                                       daemon=True)
        self.host = host
        self.port = port

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
