"""What a re-run of `train --data` adds: each file is known by the sha256 of its bytes.

- A file whose bytes are not in the profile is **new**: added, with its path and hash.
- Bytes already stored under the same class are **skipped** (also a second copy of the
  same bytes within one run).
- Bytes stored under another class are **relabelled**: the file moved to another class
  folder, and the folder is the truth, so the stored sample is replaced by one of the
  new class (added first, then the old one removed: a crash in between leaves a
  duplicate a later run skips, never a loss).
- A row of a .csv/.jsonl file (.tabular) is known by the sha256 of its text.
- Samples of older profiles have no hash: a file at the same path is taken as the same
  sample (skipped) and its hash recorded, so it is recognized wherever it moves later.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.cli.readable import Failure
from edgetune.cli.tabular import Row, sha256_of, source_of

__all__ = ["Plan", "plan"]


@dataclass
class Plan:
    new: list[tuple[Path, str, str]] = field(default_factory=list)  # path, class, sha256
    relabel: list[tuple[int, Path, str, str]] = field(default_factory=list)  # + old id
    skipped: int = 0
    backfill: list[tuple[int, str]] = field(default_factory=list)  # old id, sha256
    failures: list[Failure] = field(default_factory=list)
    done: int = 0  # files of new + relabel handled so far (new ones come first)

    def drop(self, bad: list[Failure]) -> None:
        """Leave out the files that turned out unreadable."""
        paths = {f.path for f in bad}
        self.new = [n for n in self.new if str(n[0]) not in paths]
        self.relabel = [r for r in self.relabel if str(r[1]) not in paths]
        self.failures += bad

    def counts_after(self, counts: dict[str, int], labels: dict[int, str]) -> Counter:
        after = Counter(counts)
        for _, label, _ in self.new:
            after[label] += 1
        for old, _, label, _ in self.relabel:
            after[labels[old]] -= 1
            after[label] += 1
        return after


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan(samples, items) -> Plan:
    """samples: the profile's SampleInfo list; items: (path, class) pairs of the data."""
    by_hash: dict[str, list] = {}
    by_source = {}
    for s in samples:
        if s.sha256:
            by_hash.setdefault(s.sha256, []).append(s)
        elif s.source:
            by_source[s.source] = s
    result, seen = Plan(), set()
    for path, label in items:
        try:
            sha = sha256_of(path) if isinstance(path, Row) else file_sha256(path)
        except OSError as e:
            result.failures.append(Failure(str(path), f"{path} cannot be read: "
                                           f"{e.strerror or e}"))
            continue
        if sha in seen:
            result.skipped += 1
            continue
        seen.add(sha)
        old = by_source.get(source_of(path))
        stored = by_hash.get(sha) or ([old] if old else [])
        if old is not None and not by_hash.get(sha):
            result.backfill.append((old.id, sha))
        if not stored:
            result.new.append((path, label, sha))
        elif any(s.label == label for s in stored):
            result.skipped += 1
        else:
            result.relabel.append((stored[0].id, path, label, sha))
    return result
