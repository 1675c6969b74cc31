"""The sample store's SQLite schema: its tables, indexes and versions (runtime/store.py
reads and migrates them)."""

FORMAT = "edgetune.samples"
SCHEMA_VERSION = 3  # 2: samples.sha256 (the content hash of the source file); 3: thumbnail
READABLE_VERSIONS = (1, 2, 3)  # a read-only open reads an old store as it is

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS classes (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL UNIQUE,
        position   INTEGER NOT NULL UNIQUE,  -- the label index, dense 0..C-1
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS samples (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        class_id   INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
        features   BLOB NOT NULL,            -- little-endian float32, C order
        shape      TEXT NOT NULL,            -- JSON list, e.g. [1280]
        created_at TEXT NOT NULL,            -- ISO 8601, UTC
        source     TEXT,                     -- optional note, e.g. a file name
        sha256     TEXT,                     -- optional: sha256 of the source file's bytes
        thumbnail  BLOB                      -- optional: a small JPEG for people to review
    )""",
)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS samples_by_class ON samples(class_id)",
    "CREATE INDEX IF NOT EXISTS samples_by_sha256 ON samples(sha256)",
)
