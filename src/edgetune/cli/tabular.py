"""Labelled texts in one file, for `train --data` and `eval --data` of text bundles:

- ``FILE.csv``: a header row naming the columns ``text`` and ``label`` (others are
  ignored); read with the csv module (quoted fields may span lines).
- ``FILE.jsonl``: one JSON object per line with ``text`` and ``label`` strings.

Each row becomes a :class:`Row`, named ``FILE:LINE`` (the line where it starts) in
messages. A row without a text (empty or only whitespace), without a label, or a line
that is no such JSON object is skipped and listed like an unreadable file (``--strict``
fails instead). A missing column is an error naming the file and the column. For the
re-run dedup (.dedup) a row is known by the sha256 of its text's UTF-8 bytes.

Rows are also how `predict --text` and `predict -` (stdin) pass texts around.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgetune.cli.readable import Failure
from edgetune.errors import BadInputError

__all__ = ["SUFFIXES", "Row", "input_of", "list_data", "read_rows", "sha256_of", "source_of"]

SUFFIXES = (".csv", ".jsonl")
COLUMNS = ("text", "label")


@dataclass(frozen=True)
class Row:
    """One text given on the command line or in a data file."""

    text: str
    origin: str  # how messages name it: "data.csv:3", "--text 1", "stdin:2"
    source: str | None = None  # what the store records (default: origin)

    def __str__(self) -> str:
        return self.origin

    def as_input(self) -> str | bytes:
        """What the preparer reads: the text (a one-line text ending in .txt as UTF-8
        bytes: as a string the preparer would take it for a file name)."""
        if "\n" not in self.text and self.text.strip().lower().endswith(".txt"):
            return self.text.encode("utf-8")
        return self.text


def input_of(item):
    """What the preparer reads: a row's text, else the path."""
    return item.as_input() if isinstance(item, Row) else os.fspath(item)


def source_of(item) -> str:
    if isinstance(item, Row):
        return item.source or item.origin
    return str(Path(item).resolve())


def sha256_of(item) -> str:
    """The content hash of a row (its text); files are hashed by .dedup."""
    return hashlib.sha256(item.text.encode("utf-8")).hexdigest()


def list_data(preparer, data) -> tuple[list[tuple], list[Failure]]:
    """(item, class) pairs of --data and the rows skipped: a folder of class folders
    (preparer.list_folder), or for text bundles a .csv/.jsonl file."""
    path = Path(data)
    if path.suffix.lower() in SUFFIXES and not path.is_dir():
        if preparer.kind != "text":
            raise BadInputError(f"{data}: a {path.suffix.lower()} file of labelled texts is "
                                f"for text bundles; this bundle takes {preparer.noun}s: give "
                                f"a folder of class folders ({data}/<class>/<{preparer.noun}>)")
        return read_rows(path)
    return preparer.list_folder(data), []


def read_rows(path: Path) -> tuple[list[tuple[Row, str]], list[Failure]]:
    """(Row, label) pairs of a .csv or .jsonl file, and the rows skipped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() == ".csv":
                return _csv_rows(path, f)
            return _jsonl_rows(path, f)
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise BadInputError(f"{path} is not a readable CSV file ({e})") from None


def _row(path: Path, line: int, text, label, rows: list, bad: list) -> None:
    origin = f"{path}:{line}"
    if not isinstance(text, str) or not text.strip():
        bad.append(Failure(origin, f"{origin}: no text (the text is empty)", "row"))
    elif not isinstance(label, str) or not label.strip():
        bad.append(Failure(origin, f"{origin}: no label", "row"))
    else:
        rows.append((Row(text, origin, f"{path.resolve()}:{line}"), label.strip()))


def _csv_rows(path: Path, f) -> tuple[list, list[Failure]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise BadInputError(f"{path} is empty; a CSV of texts needs a header row naming "
                            f"the columns text and label")
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise BadInputError(f"{path} has no {' and no '.join(missing)} column (its header: "
                            f"{', '.join(header) or 'empty'}); the first row must name the "
                            f"columns text and label")
    at_text, at_label = names.index("text"), names.index("label")
    rows, bad = [], []
    line = reader.line_num + 1
    for record in reader:
        if record:  # a blank line is no row
            padded = record + [None] * (max(at_text, at_label) + 1 - len(record))
            _row(path, line, padded[at_text], padded[at_label], rows, bad)
        line = reader.line_num + 1
    return rows, bad


def _jsonl_rows(path: Path, f) -> tuple[list, list[Failure]]:
    rows, bad = [], []
    for line, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        origin = f"{path}:{line}"
        try:
            obj = json.loads(raw)
        except ValueError as e:
            bad.append(Failure(origin, f"{origin}: not a JSON object ({e})", "row"))
            continue
        if not isinstance(obj, dict):
            bad.append(Failure(origin, f"{origin}: not a JSON object with text and label",
                               "row"))
            continue
        _row(path, line, obj.get("text"), obj.get("label"), rows, bad)
    if not rows and not bad:
        raise BadInputError(f"{path} holds no rows; give one JSON object per line with "
                            f'text and label, e.g. {{"text": "...", "label": "sports"}}')
    return rows, bad
