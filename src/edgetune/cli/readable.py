"""Files (or rows of a data file, .tabular) that cannot be read are skipped and listed
together at the end (path and reason each); with --strict they fail the command before
anything changes."""

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
    kind: str = "file"  # or "row" (of a .csv/.jsonl file, or a text given to predict)

    def as_json(self) -> dict:
        return {"path": self.path, "error": self.reason}


def readable(preparer, paths: Iterable) -> tuple[list, list[Failure]]:
    """Split `paths` into those the bundle's preparer reads and the failures. A path may
    also be a text row (.tabular.Row: its `text` is read, its failure names the row)."""
    good, bad = [], []
    for path in paths:
        text = getattr(path, "text", None)
        try:
            preparer.prepare(os.fspath(path) if text is None else path.as_input())
        except (BadInputError, OSError) as e:
            bad.append(Failure(str(path), str(e)) if text is None else
                       Failure(str(path), f"{path}: {e}", "row"))
        else:
            good.append(path)
    return good, bad


def refuse_if_strict(args, bad: list[Failure], total: int, nothing: str) -> None:
    if getattr(args, "strict", False) and bad:
        listed = "; ".join(f.reason for f in bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise BadInputError(f"{len(bad)} of {total} {_noun(bad)}s cannot be read (--strict: "
                            f"{nothing}): {listed}")


def report(args, bad: list[Failure]) -> None:
    """List the skipped files on stderr (also under --json: stdout stays the answer)."""
    if not bad:
        return
    note(f"edgetune {args.command}: skipped {len(bad)} {_noun(bad)}{'s' if len(bad) > 1 else ''}"
         f" that cannot be read:")
    for failure in bad:
        note(f"  {failure.reason}")


def _noun(bad: list[Failure]) -> str:
    return "row" if all(f.kind == "row" for f in bad) else "file"
