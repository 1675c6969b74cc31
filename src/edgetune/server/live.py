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

from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edgetune.errors import EdgetuneError
from edgetune.server.api import ApiError, clean, describe, label
from edgetune.server.limits import Limits, size_text
from edgetune.server.session import Studio

__all__ = ["live_routes"]

log = logging.getLogger("edgetune.server")


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
    if kind == "frame":
        data = _frame_bytes(msg.get("image"), limits)
        record = session["record"]
        if "record" in msg:
            record = None if msg["record"] is None else label(msg["record"], "record")
        return await _frame(studio, limits, session, data, record)
    raise ApiError(400, f"unknown message type {kind!r} (expected record, frame or ping)",
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


def live_routes() -> list:
    return [WebSocketRoute("/ws", websocket_endpoint)]
