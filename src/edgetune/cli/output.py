"""What the command prints: JSON with --json (never NaN or Infinity), text otherwise;
warnings as one `edgetune: warning: ...` line each."""

from __future__ import annotations

import json
import math
import sys
import warnings
from contextlib import contextmanager

__all__ = ["emit", "finite", "note", "plain_warnings", "size", "to_json"]


def finite(data):
    """`data` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def to_json(data) -> str:
    return json.dumps(finite(data), indent=2, allow_nan=False, default=str)


def emit(args, data, text: str) -> None:
    """Print `data` as JSON with --json, else `text`."""
    print(to_json(data) if getattr(args, "json", False) else text, flush=True)


def note(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout stays the answer)."""
    print(text, file=sys.stderr, flush=True)


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _format(message, category, filename, lineno, line=None) -> str:
    return f"edgetune: warning: {message}\n"


@contextmanager
def plain_warnings():
    """Warnings as `edgetune: warning: ...`, without source lines, while the command runs.
    (The format, not showwarning, is replaced: code that records warnings still can.)"""
    old = warnings.formatwarning
    warnings.formatwarning = _format
    try:
        yield
    finally:
        warnings.formatwarning = old
