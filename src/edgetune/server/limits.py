"""Size and time limits of the web app, and the uvicorn settings that go with them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BATCH_SIZE", "MAX_EPOCHS", "Limits", "size_text", "uvicorn_config_kwargs"]

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4_096  # the page's field; larger is one batch of every sample anyway


@dataclass(frozen=True)
class Limits:
    """Size limits: a frame over the WebSocket, an HTTP upload, any other HTTP body, and
    a text WebSocket message that is not a frame. body_timeout: seconds an HTTP body may
    stall (a client that sends less than its Content-Length gets 408, and its connection
    is freed). first_request_timeout: seconds a new connection may take to send a complete
    request head (edgetune.server.connections). model_runs: base-model runs at once
    (predictions, recorded frames, uploads); each concurrent run holds its own activation
    memory, so this bounds the server's memory however many clients send frames.
    idle_seconds: the profile's onnxruntime sessions unused this long are released (the
    base holds 24 MiB; runtime.sessions) and made again by the next request."""

    frame_bytes: int = 2 * 1024 * 1024
    upload_bytes: int = 20 * 1024 * 1024
    json_bytes: int = 64 * 1024
    message_chars: int = 64 * 1024
    files_per_upload: int = 500
    body_timeout: float = 30.0
    model_runs: int = 3
    first_request_timeout: float = 10.0
    idle_seconds: float = 120.0

    @property
    def ws_max_size(self) -> int:
        """What uvicorn should accept per WebSocket message: a base64 frame and some
        room, so an oversized frame gets an error reply instead of a dropped connection."""
        return 2 * self.frame_bytes + self.message_chars


def uvicorn_config_kwargs(limits: Limits | None = None) -> dict:
    """Settings for uvicorn.Config that go with this app: at most 64 connections, and
    connections that send no request are closed (edgetune.server.connections)."""
    from edgetune.server.connections import BoundedH11Protocol

    limits = limits or Limits()
    protocol = type("BoundedH11Protocol", (BoundedH11Protocol,),
                    {"first_request_timeout": limits.first_request_timeout})
    return {"ws_max_size": limits.ws_max_size, "limit_concurrency": 64,
            "timeout_keep_alive": 5, "server_header": False, "http": protocol}


def size_text(n: int) -> str:
    """A byte count for people: "512 bytes", "64 KB", "2.0 MB"."""
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"
    return f"{n / (1024 * 1024):.1f} MB"
