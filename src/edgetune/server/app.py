"""The teachable camera's web app, assembled: Starlette on uvicorn, one page, one
WebSocket, behind the guard.

    app = create_app(Personalizer("model.edgetune", profile="me/"))
    uvicorn.run(app, host="127.0.0.1", port=8321, **uvicorn_config_kwargs())

The parts: :mod:`~edgetune.server.routes` (HTTP endpoints), :mod:`~edgetune.server.live`
(the WebSocket protocol), :mod:`~edgetune.server.session` (training runs, published
state), :mod:`~edgetune.server.guard` (host, origin, token, body limits, security
headers), :mod:`~edgetune.server.limits` and :mod:`~edgetune.server.api` (limits, JSON
and errors), :mod:`~edgetune.server.testing` (a live server for tests).

Security: bound to loopback by default. With ``loopback_only`` the Host header must
name a loopback host (DNS rebinding); with a ``token`` every request and the WebSocket
need it. State-changing requests and the WebSocket must come from the page's own
origin when the browser says where they come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from edgetune.defaults import EPOCHS
from edgetune.errors import EdgetuneError
from edgetune.runtime.personalizer import Personalizer
from edgetune.server.api import ApiError, describe, error_response
from edgetune.server.guard import AccessToken, BodyLimit, LoopbackHost, SameOrigin, SecurityHeaders
from edgetune.server.limits import Limits, uvicorn_config_kwargs
from edgetune.server.live import live_routes
from edgetune.server.routes import UPLOAD_PATHS, http_routes
from edgetune.server.session import Studio

__all__ = ["Limits", "create_app", "uvicorn_config_kwargs"]

log = logging.getLogger("edgetune.server")

CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _handlers(personalizer: Personalizer) -> dict:
    async def api_error(request, exc):
        if isinstance(exc, ApiError):
            return error_response(exc.status_code, exc.detail, exc.code)
        return error_response(exc.status_code, str(exc.detail),
                              CODES.get(exc.status_code, "error"))

    async def edgetune_error(request, exc):  # bad input 400, damaged profile 500, ...
        status, code, message = describe(exc, personalizer.profile)
        return error_response(status, message, code)

    async def client_gone(request, exc):  # it left mid-body: nobody reads the reply
        return Response(status_code=400)

    async def internal(request, exc):
        log.exception("request failed", exc_info=exc)
        return error_response(500, "internal error; see the server log", "internal")

    return {HTTPException: api_error, EdgetuneError: edgetune_error,
            ClientDisconnect: client_gone, Exception: internal}


def create_app(personalizer: Personalizer, *, token: str | None = None,
               loopback_only: bool = True, limits: Limits | None = None,
               min_samples: int = 3, default_epochs: int = EPOCHS):
    """The ASGI app for one personalizer (the caller opens and closes it).

    token: require this access token on every request. loopback_only: answer only to
    Host headers naming a loopback host (use False when serving other devices).
    min_samples: samples every class needs before Train is allowed. default_epochs:
    what Train runs when the request names no number.
    """
    limits = limits or Limits()
    studio = Studio(personalizer, min_samples=min_samples, default_epochs=default_epochs,
                    model_runs=limits.model_runs)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        releaser = asyncio.get_running_loop().create_task(
            studio.release_idle(limits.idle_seconds))
        try:
            yield
        finally:
            releaser.cancel()
            await run_in_threadpool(personalizer.stop_training, 10)
            await studio.aclose()

    inner = Starlette(routes=http_routes() + live_routes(), lifespan=lifespan,
                      exception_handlers=_handlers(personalizer))
    inner.state.studio = studio
    inner.state.limits = limits
    app = BodyLimit(inner, limits, UPLOAD_PATHS)
    if token:
        app = AccessToken(app, token)
    app = SameOrigin(app)
    if loopback_only:
        app = LoopbackHost(app)
    app = SecurityHeaders(app)
    app.state = inner.state  # so callers reach the studio: create_app(...).state.studio
    return app
