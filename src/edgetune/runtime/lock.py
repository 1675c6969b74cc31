"""One profile, one writer: an exclusive advisory lock on ``<profile>/lock``.

    lock = ProfileLock(profile)
    lock.acquire(wait=False)      # or True (until free), or seconds; ProfileLockedError
    ...
    lock.release()                # also done by the OS when the process dies

The lock is ``fcntl.flock`` on POSIX (``msvcrt.locking`` on Windows): held by an open
file, so a crashed or killed writer never leaves a stale lock behind. After locking,
the holder writes its PID and command line into the file, so whoever finds the
profile locked can say which program has it. Readers take no lock.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edgetune.errors import ProfileLockedError

__all__ = ["LOCK_FILE", "ProfileLock"]

LOCK_FILE = "lock"
_POLL = 0.05  # seconds between attempts while waiting
_WINDOWS_OFFSET = 1 << 30  # Windows locks a byte range: one far past the holder's note

if sys.platform == "win32":  # pragma: no cover - not tested on this platform
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class ProfileLock:
    """The writer's lock of one profile folder (see the module docstring)."""

    def __init__(self, profile: str | os.PathLike):
        self.profile = Path(profile)
        self.path = self.profile / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool | float = False) -> ProfileLock:
        """Take the lock. wait: False (fail at once), True (block until free) or at most
        that many seconds. Raises ProfileLockedError naming the holder."""
        if self._fd is not None:
            return self
        limit = None if wait is True else max(float(wait or 0), 0.0)
        deadline = None if limit is None else time.monotonic() + limit
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() >= deadline:
                    raise ProfileLockedError(self._message(limit))
                time.sleep(_POLL if deadline is None
                           else min(_POLL, max(deadline - time.monotonic(), 0.0)))
            note = f"{os.getpid()}\n{_command_line()}\n".encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, note)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (idempotent). The note is left: the next holder rewrites it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def holder(self) -> tuple[int | None, str]:
        """(PID, command line) written by the current holder; (None, "") if unknown (it
        may be between taking the lock and writing them)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None, ""
        pid, _, command = text.partition("\n")
        return (int(pid) if pid.strip().isdigit() else None), command.strip()

    def _message(self, waited: float | None) -> str:
        pid, command = self.holder()
        for _ in range(10):  # the holder writes its note right after locking
            if pid is not None:
                break
            time.sleep(0.01)
            pid, command = self.holder()
        who = "another process" if pid is None else f"process {pid}"
        if command:
            who += f" ({command})"
        if pid == os.getpid():
            who += ": this very process, through a Personalizer not yet closed"
        after = f" after waiting {waited:g} s" if waited else ""
        return (f"profile {self.profile} is locked by {who}{after}; only one program at a "
                f"time may change a profile. Stop it, or pass --wait to wait for it "
                f"(wait=True in Python); reading works meanwhile (read_only=True)")

    def __enter__(self) -> ProfileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped Personalizer must not keep its profile locked
        try:
            self.release()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _command_line() -> str:
    """This process's command line, shortened; one line."""
    try:  # Linux: the real one (sys.argv lacks the interpreter's options, -c CODE)
        args = Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        args = [sys.executable, *sys.argv]
    text = " ".join(a for a in args if a)
    text = " ".join(text.split())  # one line
    return text if len(text) <= 300 else text[:297] + "..."
