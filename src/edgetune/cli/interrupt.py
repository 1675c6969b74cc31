"""Ctrl-C during training: the first one asks training to stop after the current epoch
(what was reached is kept); a second one quits at once. The old handler comes back."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager

from edgetune.cli.output import note

__all__ = ["Interrupt", "stop_on_sigint"]


class Interrupt:
    def __init__(self, stop: Callable[[], None]):
        self._stop = stop
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.count > 0

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        note("edgetune: stopping after the current step (Ctrl-C again to quit at once)")
        self._stop()

    def again(self) -> None:
        """Ask again (a fit that started after the signal cleared the request)."""
        if self.requested:
            self._stop()


@contextmanager
def stop_on_sigint(stop: Callable[[], None]):
    interrupt = Interrupt(stop)
    if threading.current_thread() is not threading.main_thread():
        yield interrupt  # signals reach the main thread only
        return
    old = signal.signal(signal.SIGINT, interrupt.handle)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, old)
