"""Files verified once, trusted afterwards while they stay the same file.

Opening a bundle hashes every file (sha256) and scans its graphs for external data:
about 75 ms for EfficientNet-Lite0's 13 MB base, on every open. Here a file whose
contents matched its manifest is recorded by its identity (device, inode, size and
modification time, in nanoseconds); a later open of the same identity with the same
expected sha256 skips the hash and the scan. Any write that changes the size or the
modification time makes the file a stranger again and it is hashed once more.

What this trusts: a change that keeps the size and sets the modification time back to
the very nanosecond it had. A file modified within the last RACY_SECONDS is not
recorded at all (git's "racily clean" rule): a second write in the same clock tick as
the first could otherwise keep both the size and the time.

The record is one JSON file in the cache folder (edgetune.paths.cache_dir,
``verified.json``), rewritten atomically; an unreadable or unwritable record just
means files are hashed again. Processes that update it at once may lose an entry,
which costs one more hash, never a wrong answer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["RACY_SECONDS", "VerifiedFiles", "identity"]

RACY_SECONDS = 2.0
MAX_RECORDS = 512  # the newest are kept; a forgotten file is hashed again
RECORD = "verified.json"
_VERSION = 1


def identity(st: os.stat_result) -> list[int]:
    """What must stay equal for a verified file to stay trusted."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


class VerifiedFiles:
    """The record of verified files (module docstring); `path` defaults to the cache's."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            from edgetune.paths import cache_dir

            path = cache_dir() / RECORD
        self.path = Path(path)
        self._records: dict[str, dict] | None = None
        self._new: dict[str, dict] = {}

    def _load(self) -> dict[str, dict]:
        if self._records is None:
            try:
                data = json.loads(self.path.read_bytes())
                records = data["files"] if data.get("version") == _VERSION else {}
                self._records = records if isinstance(records, dict) else {}
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                self._records = {}
        return self._records

    def trusted(self, st: os.stat_result, sha256: str) -> dict | None:
        """The details recorded with this file (a dict) if it was verified against
        `sha256` and is still the same file; else None."""
        key = _key(st)
        record = self._new.get(key) or self._load().get(key)
        if (isinstance(record, dict) and record.get("id") == identity(st)
                and record.get("sha256") == sha256):
            details = record.get("details")
            return details if isinstance(details, dict) else {}
        return None

    def remember(self, st: os.stat_result, sha256: str, details: dict | None = None,
                 *, racy_ok: bool = False) -> None:
        """Record a file just verified against `sha256` (saved by flush()). racy_ok: the
        caller set the file's time itself after writing it, so no write can share it."""
        if not racy_ok and time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1e9:
            return
        self._new[_key(st)] = {"id": identity(st), "sha256": sha256,
                               "details": details or {}, "at": time.time_ns()}

    def annotate(self, ident: tuple, details: dict) -> None:
        """Add to the details of a file remembered in this session (ident: its identity
        as a tuple starting with device and inode)."""
        record = self._new.get(f"{ident[0]}:{ident[1]}")
        if record is not None and list(ident) == record["id"]:
            record["details"].update(details)

    def flush(self) -> None:
        """Merge the new records into the file (atomically); errors are ignored."""
        if not self._new:
            return
        from edgetune.files import atomic_write

        self._records = None  # another process may have added records meanwhile
        records = {**self._load(), **self._new}
        if len(records) > MAX_RECORDS:
            newest = sorted(records, key=lambda k: records[k].get("at", 0))[-MAX_RECORDS:]
            records = {k: records[k] for k in newest}
        try:
            atomic_write(self.path, json.dumps({"version": _VERSION, "files": records})
                         .encode())
        except OSError:  # a read-only cache: files are simply hashed again next time
            pass
        self._records, self._new = records, {}


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"
