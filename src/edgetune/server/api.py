"""The API's wire format: JSON-safe values, error replies, JSON bodies, class names.

An error is ``{"error": message, "code": code}`` over HTTP and ``{"type": "error",
"code", "message"}`` over the WebSocket; :func:`describe` gives both the same status,
code and message for edgetune's own errors.
"""

from __future__ import annotations

import json
import logging
import math

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgetune.errors import (
    BadInputError,
    BundleError,
    CorruptCheckpointError,
    EdgetuneError,
    IncompatibleCheckpointError,
    ProfileLockedError,
)
from edgetune.names import class_name

__all__ = ["ApiError", "clean", "describe", "error_response", "json_body", "label"]

log = logging.getLogger("edgetune.server")

DAMAGED = (BundleError, CorruptCheckpointError, IncompatibleCheckpointError)


class ApiError(HTTPException):
    """An HTTP error with a machine-readable code (the page and clients switch on it)."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message)
        self.code = code


def clean(obj):
    """JSON-safe: non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def error_response(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def describe(exc: EdgetuneError, profile=None) -> tuple[int, str, str]:
    """(status, code, message) of one of edgetune's errors.

    A damaged bundle or checkpoint is the server's problem, not the request's (500
    ``corrupt_profile``, saying which file and what to do); another process writing
    the profile is a conflict (409 ``profile_locked``); a bad input is 400."""
    if isinstance(exc, BadInputError):
        return 400, "bad_input", str(exc)
    if isinstance(exc, ProfileLockedError):
        return 409, "profile_locked", str(exc)
    if isinstance(exc, DAMAGED):
        where = f"profile {profile}" if profile is not None else "the profile"
        if isinstance(exc, BundleError):
            fix = (f"replace {where}'s bundle.edgetune with a good copy of the bundle "
                   f"(or start over with a new --profile)")
        else:
            fix = (f"move the named checkpoint out of {where}'s checkpoints folder (the "
                   f"previous one is used) or start over with a new --profile")
        log.error("%s is damaged: %s", where, exc)
        return 500, "corrupt_profile", (f"{where} is damaged: {exc}. To fix it, {fix}, "
                                        f"then restart edgetune serve")
    return 409, "conflict", str(exc)


def label(value, what: str = "name") -> str:
    """A class name from a request (edgetune.names.class_name), or 400 ``bad_name``."""
    try:
        return class_name(value)
    except BadInputError as e:
        raise ApiError(400, f"{what}: {e}", "bad_name") from None


async def json_body(request: Request, *, optional: bool = False) -> dict:
    """The request's JSON object body ({} when optional and empty), or 400 ``bad_json``."""
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
