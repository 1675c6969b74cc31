"""Fan-out of JSON messages to every open WebSocket; publish() works from any thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Hub"]


class Hub:
    """Subscribers are asyncio queues, each served by its own event loop."""

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
