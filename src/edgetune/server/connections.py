"""Connections that never send a request cannot lock the page out.

uvicorn bounds a connection between requests (``timeout_keep_alive``) but not before its
first one, and answers 503 to everyone once ``limit_concurrency`` connections are open:
63 sockets that connect and say nothing (or send half a request line) would keep the
page away for as long as they stay. :class:`BoundedH11Protocol` (uvicorn's h11 protocol,
given to ``uvicorn.Config(http=...)`` by :func:`edgetune.server.limits.uvicorn_config_kwargs`)
adds two rules for a connection that has not completed a request head yet:

- it is closed after ``FIRST_REQUEST_TIMEOUT`` seconds;
- when the server is full, a new connection closes the oldest such silent one, so a
  client that does send a request is served at once.

Connections that are busy with a request, a WebSocket, or between keep-alive requests
are never touched: those are bounded by uvicorn and the app (body timeouts).
"""

from __future__ import annotations

import asyncio
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["FIRST_REQUEST_TIMEOUT", "BoundedH11Protocol"]

FIRST_REQUEST_TIMEOUT = 10.0  # seconds from connecting to a complete request head
# (Limits.first_request_timeout sets it per server: uvicorn_config_kwargs)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the first request (module doc)."""

    first_request_timeout = FIRST_REQUEST_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened = time.monotonic()
        self._first_request = self.loop.call_later(self.first_request_timeout,
                                                   self._close_silent)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) > limit - 1:
            silent = [c for c in self.connections
                      if c is not self and isinstance(c, BoundedH11Protocol) and c.silent]
            if silent:
                min(silent, key=lambda c: c.opened)._close_silent()

    @property
    def silent(self) -> bool:
        """No request head has come in yet on this connection."""
        return self.scope is None and not self.transport.is_closing()

    def _close_silent(self) -> None:
        self._first_request = None
        if self.silent:
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:  # half a request line came in: just close
                pass
            self.transport.close()
            self.connections.discard(self)  # free its place now, not at connection_lost

    def handle_events(self) -> None:
        super().handle_events()
        if self.scope is not None and self._first_request is not None:
            self._first_request.cancel()
            self._first_request = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._first_request is not None:
            self._first_request.cancel()
            self._first_request = None
        super().connection_lost(exc)
