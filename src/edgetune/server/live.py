"""The live channel: WebSocket ``/ws``, the page's camera frames in and events out.

Client to server:

- a **binary** message is one camera frame (JPEG, PNG or WebP bytes, at most
  ``Limits.frame_bytes``): the server replies ``{"type": "prediction", "label",
  "scores", "source", "ms", "frame"}``, or, while recording, stores it as a sample and
  replies ``{"type": "recorded", "label", "count", "frame"}``;
- ``{"type": "record", "label": "mug"}`` records the following frames into class
  "mug" (it must exist); ``{"type": "record", "label": null}`` goes back to predicting;
- ``{"type": "frame", "image": BASE64 or data URL, "record": optional label}``: a frame
  as text, for clients that cannot send binary messages;
- ``{"type": "ping"}`` gets ``{"type": "pong"}``.

Listening (audio bundles, input kind ``audio``): ``{"type": "listen", "rate": 48000}``
starts a detector for this connection (a :class:`~edgetune.runtime.stream.Detector`:
windows of the base's length every ``hop`` seconds, scores smoothed over ``smoothing``
windows, a keyword fires at ``threshold``; optional ``hop``, ``threshold``) and replies
``{"type": "listening", "rate", "sample_rate", "window", "hop", "threshold",
"background"}``. From then on a **binary** message is a chunk of microphone audio:
little-endian float32 mono samples at ``rate`` (resampled to the bundle's rate on the
server). A chunk that completes windows gets ``{"type": "scores", "scores": {class:
smoothed score}, "label", "time", "windows", "real_time_factor", "detections": [{"label",
"score", "start", "end"}]}`` (seconds from the start of listening); a chunk that
completes none gets no reply. ``{"type": "listen", "rate": null}`` stops (the reply
carries the detections of the last, padded window).

Server to client, besides the replies: ``{"type": "state", ...}`` after every change
(also made by other tabs), ``{"type": "training_started"}``, ``{"type": "progress",
"points": [[epoch, loss], ...]}`` (throttled to ~20 per second) and
``{"type": "training_done"}``. A malformed or oversized message gets
``{"type": "error", "code", "message"}`` and the connection stays open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import warnings

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edgetune.errors import EdgetuneError
from edgetune.server.api import ApiError, clean, describe, label
from edgetune.server.limits import Limits, size_text
from edgetune.server.session import Studio

__all__ = ["live_routes"]

log = logging.getLogger("edgetune.server")

MIN_RATE, MAX_RATE = 8_000, 192_000  # Hz of the microphone audio a page may declare
LISTEN_HOP = 0.1  # seconds between windows while listening


async def websocket_endpoint(ws: WebSocket) -> None:
    studio, limits = ws.app.state.studio, ws.app.state.limits
    await ws.accept()
    outbox: asyncio.Queue = asyncio.Queue(maxsize=256)
    key = studio.hub.subscribe(outbox)
    sender = asyncio.create_task(_sender(ws, outbox))
    session = {"record": None, "frame": 0, "detector": None}
    try:
        # The first state is taken on the loop that broadcasts states, with no await
        # since subscribing: every broadcast after it is newer and queued after it.
        # (Taken in a worker thread, a snapshot older than a class just added could
        # arrive last and stick: a page once showed one class of two.)
        outbox.put_nowait(studio.state())
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                reply = await _handle(studio, limits, session, message)
            except ApiError as e:
                reply = {"type": "error", "code": e.code, "message": e.detail}
            except EdgetuneError as e:
                _, code, text = describe(e, studio.p.profile)
                reply = {"type": "error", "code": code, "message": text}
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
            await ws.send_text(json.dumps(clean(message), allow_nan=False))
        except Exception:  # the client went away
            return


async def _handle(studio: Studio, limits: Limits, session: dict, message: dict) -> dict | None:
    data, text = message.get("bytes"), message.get("text")
    if data is not None:
        if session["detector"] is not None:
            return await _audio(studio, limits, session, data)
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
        return await _record(studio, session, msg.get("label"))
    if kind == "listen":
        return await _listen(studio, session, msg)
    if kind == "frame":
        data = _frame_bytes(msg.get("image"), limits)
        record = session["record"]
        if "record" in msg:
            record = None if msg["record"] is None else label(msg["record"], "record")
        return await _frame(studio, limits, session, data, record)
    raise ApiError(400, f"unknown message type {kind!r} (expected record, frame, listen or ping)",
                   "bad_message")


async def _record(studio: Studio, session: dict, name) -> dict:
    if name is not None:
        name = label(name, "label")
        if name not in await run_in_threadpool(studio.p.counts):
            raise ApiError(404, f"unknown class {name!r}; add it first", "unknown_class")
    session["record"] = name
    return {"type": "recording", "label": name}


def _frame_bytes(image, limits: Limits) -> bytes:
    """The bytes of a text frame: base64 or a data URL."""
    if not isinstance(image, str):
        raise ApiError(400, '"image" must be a base64 string or a data URL', "bad_image")
    if image.startswith("data:"):
        image = image.partition(",")[2]
    if len(image) > (limits.frame_bytes * 4) // 3 + 4:
        raise ApiError(413, f"frame is larger than {size_text(limits.frame_bytes)}",
                       "frame_too_large")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, '"image" is not valid base64', "bad_image") from None


async def _frame(studio: Studio, limits: Limits, session: dict, data: bytes,
                 record: str | None) -> dict:
    session["frame"] += 1
    number = session["frame"]
    if len(data) > limits.frame_bytes:
        return {"type": "error", "code": "frame_too_large", "frame": number,
                "message": f"frame is {size_text(len(data))}; the limit is "
                           f"{size_text(limits.frame_bytes)}"}
    if not data:
        raise ApiError(400, "empty frame", "bad_image")
    if record is None:
        reply = await studio.run_model(studio.predict, data)
    else:
        reply = await studio.run_model(studio.record, data, record, "camera")
        studio.broadcast_state()
    reply["frame"] = number
    return reply


async def _listen(studio: Studio, session: dict, msg: dict) -> dict:
    """Start (``rate``: a number of Hz) or stop (``rate``: null) listening."""
    rate = msg.get("rate")
    old, session["detector"] = session["detector"], None
    found = []
    if old is not None:
        found = await studio.run_model(old.flush)
    if rate is None:
        return {"type": "listening", "rate": None, "detections": found}
    if isinstance(rate, bool) or not isinstance(rate, int | float) or \
            not MIN_RATE <= rate <= MAX_RATE or rate != int(rate):
        raise ApiError(400, f"rate must be a whole number of Hz from {MIN_RATE} to "
                       f"{MAX_RATE}", "bad_rate")
    if studio.input["kind"] != "audio":
        raise ApiError(409, f"listening needs an audio bundle; this profile's bundle takes "
                       f"{studio.input['kind']} inputs", "not_audio")
    counts = await run_in_threadpool(studio.p.counts)
    if not any(counts.values()):
        raise ApiError(409, "no samples yet: record some words first", "no_samples")
    options = {key: msg[key] for key in ("hop", "threshold") if msg.get(key) is not None}
    with warnings.catch_warnings():  # no background class: said in the reply instead
        warnings.simplefilter("ignore")
        detector = await run_in_threadpool(
            lambda: studio.p.stream(rate=int(rate), **{"hop": LISTEN_HOP, **options}))
    session["detector"] = detector
    return {"type": "listening", "rate": int(rate), "sample_rate": detector.rate,
            "window": detector.window / detector.rate, "hop": detector.hop / detector.rate,
            "threshold": detector.threshold, "detections": found,
            "background": bool(detector.background & set(counts))}


async def _audio(studio: Studio, limits: Limits, session: dict, data: bytes) -> dict | None:
    """One chunk of float32 PCM into this connection's detector."""
    if len(data) > limits.frame_bytes:
        raise ApiError(413, f"audio chunk is {size_text(len(data))}; the limit is "
                       f"{size_text(limits.frame_bytes)}", "frame_too_large")
    if len(data) % 4:
        raise ApiError(400, "an audio chunk is little-endian float32 samples (a multiple of "
                       "4 bytes)", "bad_audio")
    detector = session["detector"]
    pcm = np.frombuffer(data, "<f4")
    windows = detector.windows
    found = await studio.run_model(detector.feed, pcm)
    if detector.windows == windows:
        return None
    scores = smoothed_scores(detector)
    keywords = {k: v for k, v in scores.items() if k not in detector.background}
    return {"type": "scores", "scores": scores,
            "label": max(keywords, key=keywords.__getitem__) if keywords else None,
            "time": round(detector.samples / detector.rate, 3), "windows": detector.windows,
            "real_time_factor": round(detector.stats["real_time_factor"], 4),
            "detections": found}


def smoothed_scores(detector) -> dict[str, float]:
    """Each class's score averaged over the detector's last windows (what fires)."""
    return dict(detector.scores)


def live_routes() -> list:
    return [WebSocketRoute("/ws", websocket_endpoint)]
