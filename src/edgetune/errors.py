"""The error family of edgetune, shared by the converter, the bundle format and the runtime.

Every error the runtime raises on purpose derives from :class:`EdgetuneError`, so
an application can catch them all in one place::

    try:
        image = load_image("photo.jpg")
    except EdgetuneError as e:
        show_to_user(str(e))    # messages name the input and the fix
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "BundleError",
    "CorruptCheckpointError",
    "EdgetuneError",
    "IncompatibleCheckpointError",
    "ProfileLockedError",
]


class EdgetuneError(Exception):
    """Base class of the errors the edgetune runtime raises on purpose."""


class BadInputError(EdgetuneError, ValueError):
    """An input cannot be used: a bad image, an unknown class, a wrong shape or dtype.

    Also a :class:`ValueError`, so code that already catches ``ValueError`` keeps working.
    """


class BundleError(EdgetuneError, ValueError):
    """A bundle is malformed, tampered with, or from a newer edgetune."""


class CorruptCheckpointError(EdgetuneError):
    """A checkpoint file is damaged: truncated, a failed hash, or not a safetensors file."""


class IncompatibleCheckpointError(EdgetuneError):
    """A checkpoint is intact but does not fit: missing or extra tensors, other shapes or
    dtypes than expected, or a format version this runtime does not read."""


class ProfileLockedError(EdgetuneError):
    """Another process writes to this profile; the message names its PID and what to do."""
