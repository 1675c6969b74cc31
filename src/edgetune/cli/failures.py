"""How a failed command ends: one line on stderr (or a JSON object on stdout with
--json) naming the path and the fix, exit code 1. Exit 2 is argparse's usage error."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from edgetune.cli.output import to_json

__all__ = ["describe", "fail", "output_file", "writing"]

_FIXES = {
    errno.EISDIR: "it is a folder: give a file name inside it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EACCES: "permission denied: choose a folder you can write, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a folder on a writable disk",
    errno.ENOENT: "it does not exist: check the path (create a missing folder with mkdir -p)",
    errno.ENOSPC: "the disk is full: free some space and run it again",
    errno.EEXIST: "it already exists: remove it or choose another name",
}


def describe(error: BaseException) -> str:
    """The one-line message of an error; an OSError names its path and the fix."""
    if isinstance(error, OSError) and not str(error).startswith("edgetune"):
        path = error.filename or "a file"
        fix = _FIXES.get(error.errno or 0, error.strerror or str(error))
        return f"{path}: {fix}"
    return str(error)


def fail(args, error: BaseException) -> int:
    message = describe(error)
    if getattr(args, "json", False):
        print(to_json({"error": message, "type": type(error).__name__}), flush=True)
    else:
        print(f"edgetune {args.command}: error: {message}", file=sys.stderr, flush=True)
    return 1


@contextmanager
def writing(path: str | os.PathLike):
    """OSErrors while writing `path` name `path` (not a temporary file next to it)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        target = Path(path)
        named = e.filename and Path(e.filename).name.startswith(f".{target.name}.")
        raise type(e)(e.errno, e.strerror, str(target) if named or not e.filename
                      else e.filename) from None


def output_file(path: str | os.PathLike) -> Path:
    """Check a file to write before any work: not a folder, in a folder that exists.
    A missing folder is refused rather than created (a typo must not make folders)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "No such folder", str(parent))
    return path
