"""Class names: one rule for the store, the Personalizer, the CLI and the server.

A class name is a string; surrounding whitespace is dropped (" crimson " is "crimson"
everywhere: in the store, the parameter columns and what is published); the result
must be non-empty, at most MAX_CLASS_NAME characters, without control characters, and
encodable as UTF-8.
"""

from __future__ import annotations

from edgetune.errors import BadInputError

__all__ = ["MAX_CLASS_NAME", "class_name"]

MAX_CLASS_NAME = 200


def class_name(name: object) -> str:
    """The canonical form of a class name, or BadInputError saying what is wrong."""
    if not isinstance(name, str):
        raise BadInputError(f"class names must be strings; got {type(name).__name__} {name!r}")
    name = name.strip()
    if not name:
        raise BadInputError("class name is empty; give the class a name, e.g. 'mug'")
    if len(name) > MAX_CLASS_NAME:
        raise BadInputError(f"class name is {len(name)} characters long; use at most "
                            f"{MAX_CLASS_NAME}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BadInputError(f"class name {name!r} contains control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        raise BadInputError(f"class name {name!r} is not valid Unicode") from None
    return name
