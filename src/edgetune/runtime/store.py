"""The profile's sample store: cached features and their classes, in one SQLite file.

The device keeps *features* (the base's output for each sample), not images: training
the head then never runs the base again. Features are stored as raw little-endian
float32 bytes with their shape (no pickle anywhere)::

    with SampleStore("me/samples.sqlite") as store:
        store.add(features_of_mug_photo, "mug")   # a [F] float32 vector, class created
        X, y = store.features_and_labels()          # float32 [n, F], int64 [n]
        store.class_names()                         # ["mug"]; y indexes this list

Class indices. Each class has a dense ``position`` 0..C-1 (the label index used to
train the head and the column of the head's weights). Classes are numbered in the
order they are created. Renaming a class keeps its position, so a trained head stays
valid. Removing class *k* deletes its samples and shifts every later class down by
one, so indices stay dense; :meth:`SampleStore.remove_class` returns *k* so the caller
can drop column *k* of the head.

Durability. The database runs in WAL mode (readers never block the writer, so
prediction can read while samples are added) with ``synchronous=FULL``: every commit
is fsynced to the WAL before ``add()`` returns, so a sample the user added survives
a power loss, not just an application crash (``NORMAL`` may lose the last commits
on power loss). Samples arrive at human pace, so the fsync per commit costs nothing
noticeable.

Thread safety: one store object may be shared between threads (calls are serialized
by a lock); other processes may open the same file (SQLite locking, 5 s busy timeout).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

import edgetune.runtime.store_schema as schema
from edgetune.errors import BadInputError, EdgetuneError
from edgetune.names import class_name

__all__ = ["SampleInfo", "SampleStore"]

@dataclass(frozen=True)
class SampleInfo:
    """One stored sample, without its features."""

    id: int
    label: str
    created_at: str
    source: str | None
    sha256: str | None = None  # of the source file's bytes, when the caller gave it


class SampleStore:
    """A SQLite store of feature vectors and their class labels (see the module doc).

    >>> with SampleStore(":memory:") as s:
    ...     _ = s.add(np.ones(4, np.float32), "mug")
    ...     s.counts()
    {'mug': 1}
    """

    def __init__(self, path: str | os.PathLike, feature_shape: Sequence[int] | None = None,
                 *, read_only: bool = False) -> None:
        """Open or create the store at ``path``.

        ``feature_shape`` (e.g. the bundle manifest's ``features.shape``) fixes the shape
        of one feature up front, so a wrong first sample cannot set it; it must equal the
        shape already stored, if any. Without it the first sample fixes the shape.
        ``read_only``: open an existing store for reading only (it must exist; nothing
        is created or changed, every write raises EdgetuneError; SQLite may still add
        its own -wal/-shm files next to it, as any reader of a WAL database does).
        """
        self.path = os.fspath(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._has_sha256 = True  # False for an old (schema 1) store opened read-only
        self._has_thumbnail = True  # False for a schema 1 or 2 store opened read-only
        if read_only and not os.path.isfile(self.path):
            raise EdgetuneError(f"no sample store at {self.path} to read")
        try:
            conn = sqlite3.connect(
                f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro"
                if read_only else self.path,
                timeout=5.0, isolation_level=None, check_same_thread=False, uri=read_only,
            )
        except sqlite3.Error as e:
            raise EdgetuneError(f"cannot open sample store {self.path}: {e}") from None
        self._conn: sqlite3.Connection | None = conn
        try:
            self._setup()
            if feature_shape is not None:
                self._fix_feature_shape(feature_shape)
        except sqlite3.DatabaseError as e:
            conn.close()
            self._conn = None
            raise EdgetuneError(
                f"{self.path} is not a usable edgetune sample store ({e}); "
                "pass the path of a new file or of an existing store"
            ) from None
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # ------------------------------------------------------------------ lifecycle

    def _setup(self) -> None:
        conn = self._db
        if self.read_only:
            self._check_format(conn)
            return
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and self.path != ":memory:":
            raise EdgetuneError(f"sample store {self.path}: cannot enable WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            user_tables = tables - {"sqlite_sequence"}
            if user_tables and "meta" not in user_tables:
                raise EdgetuneError(
                    f"{self.path} is an SQLite database but not an edgetune sample store"
                )
            for statement in schema.SCHEMA:
                conn.execute(statement)
            fmt = self._get_meta("format")
            if fmt is None:
                self._set_meta("format", schema.FORMAT)
                self._set_meta("schema_version", str(schema.SCHEMA_VERSION))
            elif fmt != schema.FORMAT:
                raise EdgetuneError(f"{self.path} is not an edgetune sample store ({fmt!r})")
            else:
                version = int(self._get_meta("schema_version") or 0)
                if version > schema.SCHEMA_VERSION:
                    raise EdgetuneError(
                        f"sample store {self.path} has schema version {version}; this "
                        f"edgetune reads up to {schema.SCHEMA_VERSION}: upgrade edgetune"
                    )
                self._migrate(conn)
            for statement in schema.INDEXES:
                conn.execute(statement)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older store up to this schema, in the caller's transaction.
        1 -> 2: samples get a nullable sha256 column (old samples have none).
        2 -> 3: samples get a nullable thumbnail column (old samples have none)."""
        columns = self._columns(conn, "samples")
        if "sha256" not in columns:
            conn.execute("ALTER TABLE samples ADD COLUMN sha256 TEXT")
        if "thumbnail" not in columns:
            conn.execute("ALTER TABLE samples ADD COLUMN thumbnail BLOB")
        self._set_meta("schema_version", str(schema.SCHEMA_VERSION))

    @staticmethod
    def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    def _check_format(self, conn: sqlite3.Connection) -> None:
        """Read-only: the file must already be a complete store of a schema this reads."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "classes", "samples"} <= tables:
            raise EdgetuneError(f"{self.path} is not an edgetune sample store (or was never "
                                "completed); open it for writing once")
        fmt, version = self._get_meta("format"), self._get_meta("schema_version") or "0"
        if fmt != schema.FORMAT:
            raise EdgetuneError(f"{self.path} is not an edgetune sample store ({fmt!r})")
        if not version.isdigit() or int(version) not in schema.READABLE_VERSIONS:
            raise EdgetuneError(f"sample store {self.path} has schema version {version}; this "
                                f"edgetune reads versions {list(schema.READABLE_VERSIONS)} "
                                "(read-only: nothing is migrated)")
        self._has_sha256 = "sha256" in self._columns(conn, "samples")
        self._has_thumbnail = "thumbnail" in self._columns(conn, "samples")

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EdgetuneError(f"sample store {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: commits on success, rolls back on any exception."""
        with self._lock:
            conn = self._db
            if self.read_only:
                raise EdgetuneError(f"sample store {self.path} is open read-only")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ meta

    def _get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """The value stored under ``key`` in the meta table, or ``default``."""
        with self._lock:
            value = self._get_meta(key)
        return default if value is None else value

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (e.g. the bundle's sha256)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadInputError(
                f"meta keys and values must be str; got {type(key).__name__}: "
                f"{type(value).__name__}"
            )
        with self._transaction():
            self._set_meta(key, value)

    def _fix_feature_shape(self, feature_shape: Sequence[int]) -> None:
        try:
            shape = tuple(int(d) for d in feature_shape)
        except (TypeError, ValueError):
            raise BadInputError(
                f"feature_shape must be a sequence of ints, e.g. (1280,); got {feature_shape!r}"
            ) from None
        if not shape or any(d < 1 for d in shape):
            raise BadInputError(f"feature_shape must be positive ints; got {feature_shape!r}")
        with self._lock if self.read_only else self._transaction():
            stored = self._get_meta("feature_shape")
            if stored is None:
                if not self.read_only:
                    self._set_meta("feature_shape", json.dumps(list(shape)))
            elif tuple(json.loads(stored)) != shape:
                raise BadInputError(
                    f"sample store {self.path} holds features of shape "
                    f"{tuple(json.loads(stored))}, not {shape}; a store belongs to one base "
                    "model: use a new profile for a different bundle"
                )

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """The shape of one stored feature, fixed by the first sample (None before)."""
        with self._lock:
            raw = self._get_meta("feature_shape")
        return None if raw is None else tuple(json.loads(raw))

    # ------------------------------------------------------------------ classes

    def class_names(self) -> list[str]:
        """Class names ordered by label index: ``class_names()[y]`` names label ``y``."""
        with self._lock:
            rows = self._db.execute("SELECT name FROM classes ORDER BY position").fetchall()
        return [r[0] for r in rows]

    def class_index(self, name: str) -> int:
        """The label index of class ``name``."""
        with self._lock:
            row = self._db.execute("SELECT position FROM classes WHERE name=?", (name,)).fetchone()
        if row is None:
            raise BadInputError(self._unknown_class(name))
        return int(row[0])

    def add_class(self, name: str) -> int:
        """Create an empty class at the end and return its label index."""
        _check_name(name)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM classes WHERE name=?", (name,)).fetchone():
                raise BadInputError(f"class {name!r} already exists")
            return self._create_class(name)

    def _create_class(self, name: str) -> int:
        conn = self._db
        position = conn.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
        conn.execute(
            "INSERT INTO classes(name, position, created_at) VALUES(?, ?, ?)",
            (name, position, _now()),
        )
        return int(position)

    def rename_class(self, old: str, new: str) -> None:
        """Rename class ``old`` to ``new``; its label index and samples are kept."""
        _check_name(new)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM classes WHERE name=?", (old,)).fetchone() is None:
                raise BadInputError(self._unknown_class(old))
            if old == new:
                return
            if conn.execute("SELECT 1 FROM classes WHERE name=?", (new,)).fetchone():
                raise BadInputError(
                    f"cannot rename class {old!r} to {new!r}: a class {new!r} already exists; "
                    f"remove it first or choose another name"
                )
            conn.execute("UPDATE classes SET name=? WHERE name=?", (new, old))

    def remove_class(self, name: str) -> int:
        """Delete class ``name`` and its samples; return its former label index *k*.

        Classes after *k* move down by one (indices stay ``0..C-1``): drop column *k*
        of a trained head to keep it aligned.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT id, position FROM classes WHERE name=?", (name,)).fetchone()
            if row is None:
                raise BadInputError(self._unknown_class(name))
            class_id, position = row
            conn.execute("DELETE FROM samples WHERE class_id=?", (class_id,))
            conn.execute("DELETE FROM classes WHERE id=?", (class_id,))
            # Two steps keep `position` unique at every row update.
            conn.execute("UPDATE classes SET position = -position WHERE position > ?", (position,))
            conn.execute("UPDATE classes SET position = -position - 1 WHERE position < 0")
        return int(position)

    def counts(self) -> dict[str, int]:
        """Samples per class, in label order; classes without samples count 0."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.name, COUNT(s.id) FROM classes c "
                "LEFT JOIN samples s ON s.class_id = c.id "
                "GROUP BY c.id ORDER BY c.position"
            ).fetchall()
        return {name: int(n) for name, n in rows}

    def _unknown_class(self, name: object) -> str:
        names = self.class_names()
        known = ", ".join(repr(n) for n in names) if names else "none yet"
        return f"unknown class {name!r}; known classes: {known}"

    # ------------------------------------------------------------------ samples

    def add(
        self,
        features: np.ndarray | Sequence[float],
        label: str | Sequence[str],
        *,
        source: str | Sequence[str | None] | None = None,
        sha256: str | Sequence[str | None] | None = None,
    ) -> list[int]:
        """Store samples and return their ids; all-or-nothing in one transaction.

        ``label`` a ``str``: ``features`` is ONE sample (e.g. ``[F]``). ``label`` a list of
        ``n`` names: ``features`` is ``[n, F]`` (``[n, *feature_shape]``). Unknown class
        names are created, in order of first appearance. ``source`` is an optional note
        per sample (e.g. the file name), ``sha256`` the hash of its bytes (so a
        re-run can recognize a file that moved). Features must be finite floats; they are
        stored as float32 and must all have the shape of the first stored sample.
        """
        if isinstance(label, str):
            labels = [label]
            batch = _as_float32(features, "features")[None]
        else:
            labels = list(label)
            batch = _as_float32(features, "features")
            if batch.ndim < 2 or batch.shape[0] != len(labels):
                raise BadInputError(
                    f"features of shape {batch.shape} do not match {len(labels)} labels; for "
                    "a batch pass [n, F] features and n labels, for one sample pass a str label"
                )
        for name in labels:
            _check_name(name)
        sources = _sources(source, len(labels))
        hashes = _sources(sha256, len(labels))
        if batch.shape[0] == 0:
            return []
        shape = tuple(int(d) for d in batch.shape[1:])
        finite = np.isfinite(batch.reshape(batch.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise BadInputError(
                f"features of sample {bad} (label {labels[bad]!r}) contain NaN or Inf; "
                f"{int((~finite).sum())} of {len(labels)} rows are not finite; nothing was "
                "added (check the base model's input)"
            )
        now = _now()
        shape_json = json.dumps(list(shape))
        ids: list[int] = []
        with self._transaction() as conn:
            stored = self._get_meta("feature_shape")
            if stored is None:
                self._set_meta("feature_shape", shape_json)
            elif tuple(json.loads(stored)) != shape:
                hint = (
                    f"; to add {shape[0]} samples of one class pass a list of {shape[0]} labels"
                    if isinstance(label, str) and shape[1:] == tuple(json.loads(stored))
                    else "; a store belongs to one base model: use a new profile for a "
                    "different bundle"
                )
                raise BadInputError(
                    f"features have shape {shape} per sample but this store holds features "
                    f"of shape {tuple(json.loads(stored))}{hint}"
                )
            class_ids: dict[str, int] = {}
            for name in labels:
                if name in class_ids:
                    continue
                row = conn.execute("SELECT id FROM classes WHERE name=?", (name,)).fetchone()
                if row is None:
                    self._create_class(name)
                    row = conn.execute("SELECT id FROM classes WHERE name=?", (name,)).fetchone()
                class_ids[name] = int(row[0])
            le = batch.astype("<f4", copy=False)
            for i, name in enumerate(labels):
                cur = conn.execute(
                    "INSERT INTO samples(class_id, features, shape, created_at, source, sha256) "
                    "VALUES(?, ?, ?, ?, ?, ?)",
                    (class_ids[name], le[i].tobytes(), shape_json, now, sources[i], hashes[i]),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def remove_sample(self, sample_id: int) -> None:
        """Delete one sample by id (its class stays, possibly with 0 samples)."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM samples WHERE id=?", (int(sample_id),))
            if cur.rowcount == 0:
                raise BadInputError(f"no sample with id {sample_id} in {self.path}")

    def annotate(self, ids: Sequence[int], *, source: Sequence[str | None] | None = None,
                 sha256: Sequence[str | None] | None = None) -> None:
        """Set the source and/or content hash of stored samples, in one transaction
        (for samples added without them, e.g. through a caller that knows no hash)."""
        ids = [int(i) for i in ids]
        columns = [(name, _sources(values, len(ids))) for name, values
                   in (("source", source), ("sha256", sha256)) if values is not None]
        with self._transaction() as conn:
            for name, values in columns:
                for sample_id, value in zip(ids, values):
                    cur = conn.execute(f"UPDATE samples SET {name}=? WHERE id=?",
                                       (value, sample_id))
                    if cur.rowcount == 0:
                        raise BadInputError(f"no sample with id {sample_id} in {self.path}")

    def set_thumbnails(self, ids: Sequence[int], thumbnails: Sequence[bytes | None]) -> None:
        """Store a small image per sample (e.g. a JPEG of what the model saw), for people
        to review their samples; in one transaction."""
        ids = [int(i) for i in ids]
        if len(thumbnails) != len(ids):
            raise BadInputError(f"got {len(thumbnails)} thumbnails for {len(ids)} samples")
        with self._transaction() as conn:
            for sample_id, data in zip(ids, thumbnails):
                if data is not None and not isinstance(data, bytes):
                    raise BadInputError(f"a thumbnail is bytes; got {type(data).__name__}")
                if conn.execute("UPDATE samples SET thumbnail=? WHERE id=?",
                                (data, sample_id)).rowcount == 0:
                    raise BadInputError(f"no sample with id {sample_id} in {self.path}")

    def thumbnail(self, sample_id: int) -> bytes | None:
        """The sample's thumbnail (None: stored without one); BadInputError if no such
        sample."""
        column = "thumbnail" if self._has_thumbnail else "NULL"
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM samples WHERE id=?",
                                   (int(sample_id),)).fetchone()
        if row is None:
            raise BadInputError(f"no sample with id {sample_id} in {self.path}")
        return row[0]

    def samples(self) -> list[SampleInfo]:
        """All samples (without features), oldest first."""
        sha = "s.sha256" if self._has_sha256 else "NULL"
        with self._lock:
            rows = self._db.execute(
                f"SELECT s.id, c.name, s.created_at, s.source, {sha} FROM samples s "
                "JOIN classes c ON c.id = s.class_id ORDER BY s.id"
            ).fetchall()
        return [SampleInfo(int(i), n, t, src, h) for i, n, t, src, h in rows]

    def features_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples, oldest first: ``X`` float32 ``[n, *feature_shape]``, ``y`` int64 ``[n]``.

        ``y`` holds label indices into :meth:`class_names`.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.features, c.position FROM samples s "
                "JOIN classes c ON c.id = s.class_id ORDER BY s.id"
            ).fetchall()
            shape = self.feature_shape
        if shape is None:
            shape = (0,)
        # A row changed behind the store's back (a damaged file, another program) must
        # not reach training as garbage: check the size and finiteness of every row.
        size = 4 * int(np.prod(shape))
        damaged = [r[0] for r in rows if not isinstance(r[1], bytes) or len(r[1]) != size]
        if not damaged:
            y = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            X = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape((len(rows), *shape))
            finite = np.isfinite(X.reshape(len(rows), size // 4)).all(axis=1)
            damaged = [rows[i][0] for i in np.flatnonzero(~finite)]
        if damaged:
            raise EdgetuneError(
                f"sample store {self.path} is damaged: samples with ids {damaged[:10]} hold no "
                f"valid features (wrong size, or NaN/Inf); remove them with remove_sample(id)"
            )
        return X, y

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{len(self)} samples"
        return f"SampleStore({self.path!r}, {state})"


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_name(name: object) -> None:
    """The store keeps names canonical (edgetune.names): it refuses, rather than
    changes, a name that is not (the Personalizer canonicalizes user input first)."""
    canonical = class_name(name)
    if canonical != name:
        raise BadInputError(
            f"class name {name!r} starts or ends with whitespace; did you mean {canonical!r}?"
        )


def _as_float32(features: object, what: str) -> np.ndarray:
    a = np.asarray(features)
    if a.dtype.kind != "f":
        raise BadInputError(
            f"{what} must be floating point (float32), as the base model outputs; "
            f"got dtype {a.dtype}"
        )
    if a.ndim == 0:
        raise BadInputError(f"{what} must be a vector [F] or a batch [n, F]; got a scalar")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a, dtype=np.float32)


def _sources(source: str | Iterable[str | None] | None, n: int) -> list[str | None]:
    if source is None:
        return [None] * n
    if isinstance(source, str):
        return [source] * n
    out = list(source)
    if len(out) != n:
        raise BadInputError(f"got {len(out)} values for {n} samples; pass one per sample")
    for s in out:
        if s is not None and not isinstance(s, str):
            raise BadInputError(f"sources and hashes must be str or None; got "
                                f"{type(s).__name__}")
    return out
