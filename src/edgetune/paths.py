"""Where edgetune keeps things on this machine: the build cache and the profile.

- cache (built bases, the default bundle): ``$EDGETUNE_CACHE``, else
  ``$XDG_CACHE_HOME/edgetune``, else ``~/.cache/edgetune``. Never inside the repository.
- profile (samples, checkpoints): ``$EDGETUNE_PROFILE``, else
  ``$XDG_DATA_HOME/edgetune/profile``, else ``~/.local/share/edgetune/profile``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "default_profile"]


def _xdg(variable: str, fallback: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else fallback


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The build cache: `override` if given, else the environment (module docstring)."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("EDGETUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return _xdg("XDG_CACHE_HOME", Path.home() / ".cache") / "edgetune"


def default_profile() -> Path:
    """The profile used when none is given (module docstring)."""
    env = os.environ.get("EDGETUNE_PROFILE")
    if env:
        return Path(env).expanduser()
    return _xdg("XDG_DATA_HOME", Path.home() / ".local" / "share") / "edgetune" / "profile"
