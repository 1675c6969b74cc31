"""Training progress on stderr: a rich bar with the loss on a terminal; one plain line
per epoch (epoch, loss, seconds) when stderr is not a terminal or rich is missing;
nothing under --json."""

from __future__ import annotations

import sys

from edgetune.cli.output import note

__all__ = ["Bar", "EpochLines", "epoch_progress"]


class Bar:
    """A rich progress bar, or nothing (off a terminal, under --json, without rich)."""

    def __init__(self, args, total: int, description: str, loss: bool = False):
        self._progress = None
        if getattr(args, "json", False) or not sys.stderr.isatty() or not total:
            return
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return
        columns = [TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}")]
        if loss:
            columns.append(TextColumn("loss {task.fields[loss]}"))
        self._progress = Progress(*columns, TimeRemainingColumn(), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, loss="-")

    @property
    def active(self) -> bool:
        return self._progress is not None

    def advance(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class EpochLines:
    def __init__(self, total: int):
        self.total = total

    def advance(self, record: dict) -> None:
        note(f"epoch {record['epoch']}/{self.total}  loss {record['loss']:.4f}  "
             f"{record.get('seconds', 0.0):.2f} s")

    def close(self) -> None:
        pass


class _EpochBar:
    def __init__(self, bar: Bar):
        self.bar = bar

    def advance(self, record: dict) -> None:
        self.bar.advance(loss=f"{record['loss']:.4f}")

    def close(self) -> None:
        self.bar.close()


class _Quiet:
    def advance(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_progress(args, total: int):
    """What shows each finished epoch: advance(record) and close()."""
    if getattr(args, "json", False):
        return _Quiet()
    bar = Bar(args, total, "training", loss=True)
    return _EpochBar(bar) if bar.active else EpochLines(total)
