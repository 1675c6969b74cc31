"""The security guard: small pure-ASGI middlewares, outermost first.

- :class:`SecurityHeaders`: CSP, nosniff, no referrer, no framing on every response.
- :class:`LoopbackHost`: the Host header must name a loopback host (DNS rebinding).
- :class:`SameOrigin`: state-changing requests and the WebSocket must come from the
  page's own origin when the browser says where they come from.
- :class:`AccessToken`: every request and the WebSocket carry the token
  (``Authorization: Bearer T``, the ``edgetune_token`` cookie the page gets from
  ``/?token=T``, or ``?token=T``).
- :class:`BodyLimit`: request bodies at most so large, and never stalled for long.

A refused HTTP request gets ``{"error", "code"}``; a refused WebSocket is closed with
code 1008 and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.responses import RedirectResponse

from edgetune.server.api import ApiError, error_response
from edgetune.server.bind import is_loopback
from edgetune.server.limits import Limits, size_text

__all__ = ["AccessToken", "BodyLimit", "LoopbackHost", "SameOrigin", "SecurityHeaders"]

TOKEN_COOKIE = "edgetune_token"
# 'wasm-unsafe-eval' lets edgetune.js compile onnxruntime-web's wasm (no eval of scripts);
# COOP/COEP make the page cross-origin isolated: SharedArrayBuffer, so wasm threads.
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
       "img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-embedder-policy", b"require-corp"))


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])}


def _guarded(scope) -> bool:
    return scope["type"] in ("http", "websocket")


async def refuse(scope, receive, send, status: int, message: str, code: str) -> None:
    """Answer a refused request: an error response, or a WebSocket closed with 1008."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
    else:
        await error_response(status, message, code)(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secure_send(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secure_send)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


class LoopbackHost:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if _guarded(scope):
            host = _headers(scope).get("host", "")
            if not is_loopback(_hostname(host)):
                return await refuse(
                    scope, receive, send, 403,
                    f"unexpected Host header {host[:100]!r}: this server answers only to "
                    f"127.0.0.1, localhost or [::1] (start it with --token to serve others)",
                    "bad_host")
        await self.app(scope, receive, send)


class SameOrigin:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if _guarded(scope):
            headers = _headers(scope)
            origin, host = headers.get("origin"), headers.get("host", "")
            unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD")
            if origin and unsafe and urlsplit(origin).netloc.lower() != host.lower():
                return await refuse(scope, receive, send, 403,
                                    f"cross-origin request from {origin[:100]!r} refused",
                                    "bad_origin")
        await self.app(scope, receive, send)


class AccessToken:
    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    def _same(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def _supplied(self, headers: dict) -> list[str]:
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
        return supplied

    async def __call__(self, scope, receive, send):
        if not _guarded(scope):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        in_query = any(self._same(t) for t in query.get("token", []))
        if not in_query and not any(self._same(t) for t in self._supplied(_headers(scope))):
            return await refuse(scope, receive, send, 401,
                                "an access token is required: open /?token=YOUR_TOKEN once, "
                                "or send Authorization: Bearer YOUR_TOKEN", "unauthorized")
        if in_query and scope["type"] == "http" and scope["path"] == "/":
            response = RedirectResponse("/", status_code=303)  # the page keeps it in a cookie
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                path="/", secure=scope.get("scheme") == "https")
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """HTTP bodies: at most `limits.upload_bytes` on upload paths, `limits.json_bytes`
    elsewhere (413), and no stall longer than `limits.body_timeout` (408)."""

    def __init__(self, app, limits: Limits, upload_paths: tuple[str, ...] = ()):
        self.app = app
        self.limits = limits
        self.upload_paths = upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits = self.limits
        limit = limits.upload_bytes if scope["path"] in self.upload_paths else limits.json_bytes
        length = _headers(scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                return await refuse(scope, receive, send, 400, "bad Content-Length",
                                    "bad_request")
            if int(length) > limit:
                return await refuse(scope, receive, send, 413,
                                    f"the request body is {size_text(int(length))}; the "
                                    f"limit here is {size_text(limit)}", "too_large")
        received, complete = 0, False

        async def limited_receive():  # raises inside the app: its handlers answer
            nonlocal received, complete
            if complete:  # the body is in; waiting for a disconnect may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), limits.body_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body stalled for {limits.body_timeout:g} s",
                               "timeout") from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"the request body is larger than {size_text(limit)}",
                                   "too_large")
            return message

        await self.app(scope, limited_receive, send)
