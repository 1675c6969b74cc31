"""Checkpoints: trained parameters and optimizer state in verified safetensors files.

A checkpoint is a safetensors file whose metadata carries a format tag
(``edgetune.format = "edgetune.checkpoint"``, ``edgetune.format_version = "1"``) and
``edgetune.sha256``: a SHA-256 over the metadata (all but the hash itself) and, for
each tensor in name order, its name, dtype, shape and little-endian bytes. So a
flipped bit anywhere — data, shapes, dtypes, metadata — is detected on load.

Writes are atomic (:func:`edgetune.files.atomic_write`): the file is written under a
temporary name in the same folder, flushed and fsynced, renamed over the target, and
the folder is fsynced; a crash leaves either the old file or the new one, never half of one::

    save_checkpoint("me/ckpt.safetensors", {"W": W, "b": b}, {"step": "120"})
    tensors, meta = load_checkpoint("me/ckpt.safetensors",
                                    expected={"W": ((1280, None), "float32"),
                                              "b": ((None,), "float32")})

:class:`CheckpointDir` keeps numbered checkpoints (the new one and the last good one)
and falls back to the previous one when the newest does not verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy as st_numpy
from safetensors import SafetensorError

from edgetune.errors import BadInputError, CorruptCheckpointError, IncompatibleCheckpointError
from edgetune.files import atomic_write, fsync_dir

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointDir",
    "Expected",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "edgetune.checkpoint"
FORMAT_VERSION = 1
_KEY_FORMAT = "edgetune.format"
_KEY_VERSION = "edgetune.format_version"
_KEY_SHA = "edgetune.sha256"
_RESERVED_PREFIX = "edgetune."

#: ``{name: (shape, dtype)}``; a dim is an int, ``None`` (any size) or a str (a named
#: size that must be equal wherever the same name appears, e.g. ``"classes"``).
Expected = Mapping[str, tuple[Sequence[int | str | None], Any]]


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` atomically, with a format tag and hash.

    Keys of ``meta`` starting with ``edgetune.`` are reserved. Returns the path.

    >>> save_checkpoint("a.safetensors", {"W": np.zeros((3, 2), np.float32)})  # doctest: +SKIP
    """
    path = Path(path)
    arrays = _check_tensors(tensors)
    user_meta = _check_meta(meta)
    full_meta = {**user_meta, _KEY_FORMAT: FORMAT, _KEY_VERSION: str(FORMAT_VERSION)}
    full_meta[_KEY_SHA] = _digest(arrays, full_meta)
    try:
        payload = st_numpy.save(arrays, metadata=full_meta)
    except (SafetensorError, ValueError, TypeError) as e:
        raise BadInputError(f"cannot serialize checkpoint {path}: {e}") from None
    _atomic_write(path, payload)
    return path


def load_checkpoint(
    path: str | os.PathLike, expected: Expected | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read and verify a checkpoint: ``(tensors, meta)`` with the caller's meta only.

    Raises :class:`CorruptCheckpointError` if the file is truncated, damaged (hash) or
    not a safetensors file, and :class:`IncompatibleCheckpointError` if it is not an
    edgetune checkpoint, is of a newer format, or does not match ``expected``
    (missing or extra tensors, other shapes or dtypes).

    >>> tensors, meta = load_checkpoint("me/ckpt.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    data = path.read_bytes()
    where = f"checkpoint {path}"
    header = _parse_header(data, where)
    try:
        arrays = st_numpy.load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError) as e:
        raise CorruptCheckpointError(f"{where} is damaged: {e}") from None
    raw_meta = header.get("__metadata__") or {}
    if not isinstance(raw_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
    ):
        raise CorruptCheckpointError(f"{where} is damaged: its metadata is not a str->str map")
    if _KEY_FORMAT not in raw_meta and _KEY_SHA not in raw_meta:
        raise IncompatibleCheckpointError(
            f"{path} is a safetensors file but not an edgetune checkpoint (no "
            f"{_KEY_FORMAT!r} tag); initial parameters belong in the bundle, checkpoints "
            "are written by save_checkpoint()"
        )
    if raw_meta.get(_KEY_FORMAT) == FORMAT:
        version = raw_meta.get(_KEY_VERSION, "")
        if version.isdigit() and int(version) > FORMAT_VERSION:
            raise IncompatibleCheckpointError(
                f"{where} has format version {version}; this edgetune reads version "
                f"{FORMAT_VERSION}: upgrade edgetune"
            )
    stored_sha = raw_meta.get(_KEY_SHA)
    if stored_sha is None:
        raise CorruptCheckpointError(f"{where} is damaged: its sha256 entry is missing")
    actual_sha = _digest(arrays, raw_meta)
    if actual_sha != stored_sha:
        raise CorruptCheckpointError(
            f"{where} is damaged: content sha256 {actual_sha[:12]}... does not match the "
            f"recorded {stored_sha[:12]}...; use the previous checkpoint"
        )
    if raw_meta.get(_KEY_FORMAT) != FORMAT or raw_meta.get(_KEY_VERSION) != str(FORMAT_VERSION):
        raise IncompatibleCheckpointError(
            f"{where} has format {raw_meta.get(_KEY_FORMAT)!r} version "
            f"{raw_meta.get(_KEY_VERSION)!r}; expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    if expected is not None:
        _check_expected(arrays, expected, where)
    user_meta = {k: v for k, v in raw_meta.items() if not k.startswith(_RESERVED_PREFIX)}
    # Writable copies: the arrays safetensors returns are read-only views of `data`.
    return {k: np.array(v) for k, v in arrays.items()}, user_meta


@dataclass
class Checkpoint:
    """One verified checkpoint of a :class:`CheckpointDir`."""

    path: Path
    number: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    meta: dict[str, str]


class CheckpointDir:
    """Numbered checkpoints in a folder, ``ckpt-000012.safetensors``, keeping the new one
    and the last one(s) that verify (``keep=2``: the new one plus the last good one).

    One process writes at a time (the profile's owner); saves from several threads of
    that process are serialized.

    >>> ckpts = CheckpointDir("me/checkpoints")                      # doctest: +SKIP
    >>> ckpts.save({"W": W, "b": b}, {"epoch": "3"})                 # doctest: +SKIP
    >>> ckpts.latest().tensors["W"]                                  # doctest: +SKIP
    """

    _NAME = re.compile(r"^ckpt-(\d{6,})\.safetensors$")

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        if keep < 1:
            raise BadInputError(f"keep must be at least 1 (got {keep})")
        self.directory = Path(directory)
        self.keep = keep
        self._lock = threading.Lock()

    def paths(self) -> list[Path]:
        """The checkpoint files, oldest first (verified or not)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _number(self, path: Path) -> int:
        m = self._NAME.match(path.name)
        assert m is not None
        return int(m.group(1))

    def save(
        self, tensors: Mapping[str, np.ndarray], meta: Mapping[str, str] | None = None
    ) -> Path:
        """Write the next numbered checkpoint, verify it, then prune old ones.

        Keeps the new checkpoint and the newest ``keep - 1`` older ones that verify;
        older and damaged files are deleted. Returns the new file's path.
        """
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_files()
            existing = self.paths()
            number = self._number(existing[-1]) + 1 if existing else 1
            path = self.directory / f"ckpt-{number:06d}.safetensors"
            save_checkpoint(path, tensors, meta)
            load_checkpoint(path)  # read back: a bad disk must not cost the old checkpoint
            kept = 1
            for old in reversed(existing):
                if kept < self.keep and _verifies(old):
                    kept += 1
                    continue
                old.unlink(missing_ok=True)
            fsync_dir(self.directory)
            return path

    def latest(self, expected: Expected | None = None) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None if there is no checkpoint.

        A damaged newest file is skipped with a warning (falling back to the previous
        one). Raises :class:`CorruptCheckpointError` if checkpoints exist but none
        verifies, and :class:`IncompatibleCheckpointError` if the newest intact one
        does not match ``expected``.
        """
        paths = self.paths()
        errors: list[str] = []
        for path in reversed(paths):
            try:
                tensors, meta = load_checkpoint(path, expected)
            except (CorruptCheckpointError, OSError) as e:
                errors.append(str(e))
                warnings.warn(
                    f"skipping damaged checkpoint {path.name}: {e}; falling back to the "
                    "previous checkpoint",
                    stacklevel=2,
                )
                continue
            return Checkpoint(path=path, number=self._number(path), tensors=tensors, meta=meta)
        if paths:
            raise CorruptCheckpointError(
                f"no usable checkpoint in {self.directory}: " + "; ".join(errors)
            )
        return None

    def entries(self) -> list[dict]:
        """Every checkpoint file, oldest first: ``{"number", "path", "bytes", "verified",
        "meta"}`` (meta is the caller's metadata, empty when the file does not verify;
        ``"error"`` says why it does not)."""
        out = []
        for path in self.paths():
            entry = {"number": self._number(path), "path": path,
                     "bytes": path.stat().st_size, "verified": True, "meta": {}}
            try:
                entry["meta"] = load_checkpoint(path)[1]
            except (CorruptCheckpointError, IncompatibleCheckpointError, OSError) as e:
                entry.update(verified=False, error=str(e))
            out.append(entry)
        return out

    def restore(self, number: int) -> Path:
        """Make checkpoint ``number`` the newest again: its verified bytes are written
        atomically as the next numbered checkpoint. Nothing is deleted (the checkpoints
        after it stay, to be restored in turn); the next save() prunes as usual."""
        with self._lock:
            existing = {self._number(p): p for p in self.paths()}
            if number not in existing:
                known = ", ".join(map(str, existing)) or "none"
                raise BadInputError(f"no checkpoint {number} in {self.directory}; "
                                    f"there are: {known}")
            source = existing[number]
            data = source.read_bytes()
            load_checkpoint(source)  # a damaged checkpoint is never made the newest
            target = self.directory / f"ckpt-{max(existing) + 1:06d}.safetensors"
            _atomic_write(target, data)
            load_checkpoint(target)
            return target

    def _remove_stale_temp_files(self) -> None:
        # `.ckpt-N.safetensors.XXXX.tmp` (edgetune.files) and older `.tmp-PID-XXXX` names
        for p in self.directory.glob(".ckpt-*.tmp*"):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- internals


def _verifies(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except (CorruptCheckpointError, IncompatibleCheckpointError, OSError):
        return False
    return True


def _check_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(tensors, Mapping):
        raise BadInputError(
            f"tensors must be a dict of name -> numpy array; got {type(tensors).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise BadInputError(f"tensor names must be non-empty str; got {name!r}")
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise BadInputError(
                f"tensor {name!r} has dtype {a.dtype}; checkpoints hold bool, integer and "
                "float arrays"
            )
        out[name] = _little_endian_c(a)
    return out


def _check_meta(meta: Mapping[str, str] | None) -> dict[str, str]:
    if meta is None:
        return {}
    out = {}
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise BadInputError(
                f"checkpoint meta must map str to str; {k!r}: {v!r} is "
                f"{type(k).__name__}: {type(v).__name__} (convert numbers with str())"
            )
        if k.startswith(_RESERVED_PREFIX):
            raise BadInputError(f"meta key {k!r} is reserved (keys starting with 'edgetune.')")
        out[k] = v
    return out


def _digest(arrays: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(b"edgetune.checkpoint.sha256/1\n")
    covered = {k: v for k, v in meta.items() if k != _KEY_SHA}
    h.update(json.dumps(covered, sort_keys=True).encode() + b"\n")
    for name in sorted(arrays):
        a = arrays[name]
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode() + b"\n")
        h.update(_little_endian_c(a).tobytes())
    return h.hexdigest()


def _little_endian_c(a: np.ndarray) -> np.ndarray:
    """``a`` as a little-endian, C-contiguous array of the same shape (0-d stays 0-d)."""
    return np.require(a.astype(a.dtype.newbyteorder("<"), copy=False), requirements="C")


def _parse_header(data: bytes, where: str) -> dict[str, Any]:
    if len(data) < 8:
        raise CorruptCheckpointError(
            f"{where} is {len(data)} bytes long: truncated or not a safetensors file"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if data[8:9] != b"{":
        raise CorruptCheckpointError(f"{where} is not a safetensors file (no JSON header)")
    if 8 + n > len(data):
        raise CorruptCheckpointError(
            f"{where} is truncated: its header needs {n} bytes, the file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(
            f"{where} is damaged: header is not valid JSON ({e})"
        ) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{where} is damaged: header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CorruptCheckpointError(
                f"{where} is damaged: bad header entry for tensor {name!r}"
            ) from None
    have = len(data) - 8 - n
    if have < end:
        raise CorruptCheckpointError(
            f"{where} is truncated: the header describes {end} bytes of tensor data, "
            f"the file holds {have}"
        )
    return header


def _check_expected(arrays: Mapping[str, np.ndarray], expected: Expected, where: str) -> None:
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise IncompatibleCheckpointError(
            f"{where} does not fit this model: {'; '.join(parts)} (was it saved for another "
            "bundle?)"
        )
    bound: dict[str, tuple[int, str]] = {}
    for name in sorted(expected):
        shape, dtype = expected[name]
        a = arrays[name]
        want_dtype = np.dtype(dtype)
        if a.dtype != want_dtype:
            raise IncompatibleCheckpointError(
                f"{where}: tensor {name!r} has dtype {a.dtype}; expected {want_dtype}"
            )
        shape = tuple(shape)
        shown = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        if len(a.shape) != len(shape):
            raise IncompatibleCheckpointError(
                f"{where}: tensor {name!r} has shape {a.shape}; expected {shown}"
            )
        for got, want in zip(a.shape, shape, strict=True):
            if want is None:
                continue
            if isinstance(want, str):
                if want in bound and bound[want][0] != got:
                    size, other = bound[want]
                    raise IncompatibleCheckpointError(
                        f"{where}: tensor {name!r} has {want}={got} but tensor {other!r} has "
                        f"{want}={size}; the checkpoint is inconsistent with itself"
                    )
                bound.setdefault(want, (got, name))
            elif got != int(want):
                raise IncompatibleCheckpointError(
                    f"{where}: tensor {name!r} has shape {a.shape}; expected {shown}"
                )


def _atomic_write(path: Path, payload: bytes) -> None:
    """The one place checkpoints are written (a seam: bench/soak.py swaps it for an
    in-place write, its negative control)."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {path}: folder {directory} does not exist")
    atomic_write(path, payload)
