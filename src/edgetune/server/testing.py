"""A live server for tests and benchmarks: the app on uvicorn in a background thread."""

from __future__ import annotations

import threading
import time

from edgetune.server.limits import Limits, uvicorn_config_kwargs

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Run an app on uvicorn in a thread::

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
