"""Atomic writes: a crash at any moment leaves the old file or the new one, never half.

The bytes go to a temporary file in the same folder, are flushed and fsynced, renamed
over the target (atomic on POSIX), and the folder is fsynced so the rename itself
survives a power loss. Every file edgetune saves goes through here.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "temporary_dir", "temporary_file"]

_COUNTER = itertools.count()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see the module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def temporary_dir(path: str | os.PathLike) -> Path:
    """A new empty folder beside `path` (``.NAME.*``), to fill and rename over it."""
    return _new_sibling(Path(path), "", lambda tmp: tmp.mkdir(0o700))[1]


def temporary_file(path: str | os.PathLike) -> tuple[int, Path]:
    """A new file beside `path` (``.NAME.*.tmp``), created exclusively: its descriptor
    and its path."""
    return _new_sibling(Path(path), ".tmp",
                        lambda tmp: os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _new_sibling(path: Path, suffix: str, create):
    """create(name) on a new name beside `path`, as tempfile does but named by process,
    thread and counter (importing tempfile, random and shutil costs a device 11 ms and
    1.4 MiB at start); a name left by a crashed process of the same pid is skipped.
    Returns what create returned and the name."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}."
                             f"{next(_COUNTER)}{suffix}")
        try:
            return create(tmp), tmp
        except FileExistsError:
            continue
