"""Files that cannot be read are skipped and listed together at the end (path and
reason each); with --strict they fail the command before anything changes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from edgetune.cli.output import note
from edgetune.errors import BadInputError

__all__ = ["Failure", "readable", "refuse_if_strict", "report"]


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str

    def as_json(self) -> dict:
        return {"path": self.path, "error": self.reason}


def readable(preparer, paths: Iterable) -> tuple[list, list[Failure]]:
    """Split `paths` into those the bundle's preparer reads and the failures."""
    good, bad = [], []
    for path in paths:
        try:
            preparer.prepare(os.fspath(path))
        except (BadInputError, OSError) as e:
            bad.append(Failure(str(path), str(e)))
        else:
            good.append(path)
    return good, bad


def refuse_if_strict(args, bad: list[Failure], total: int, nothing: str) -> None:
    if getattr(args, "strict", False) and bad:
        listed = "; ".join(f.reason for f in bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise BadInputError(f"{len(bad)} of {total} files cannot be read (--strict: "
                            f"{nothing}): {listed}")


def report(args, bad: list[Failure]) -> None:
    """List the skipped files on stderr (also under --json: stdout stays the answer)."""
    if not bad:
        return
    note(f"edgetune {args.command}: skipped {len(bad)} file{'s' if len(bad) > 1 else ''} "
         f"that cannot be read:")
    for failure in bad:
        note(f"  {failure.reason}")
