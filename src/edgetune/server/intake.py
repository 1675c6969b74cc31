"""Samples from the page into the profile: each input checked on its own (an upload of
several files adds the good ones and names the bad ones), and a small thumbnail of what
the model saw stored with each image sample, so people can review their samples::

    result = add_inputs(p, [("mug1.jpg", data), ("notes.txt", text)], "mug", "upload")
    result.ids       # [17]: the samples added, in order
    result.failed    # [{"file": "notes.txt", "error": "notes.txt: not a readable image file ..."}]
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from edgetune.errors import BadInputError
from edgetune.runtime.personalizer import Personalizer

__all__ = ["THUMBNAIL_SIZE", "Intake", "add_inputs", "thumbnail"]

THUMBNAIL_SIZE = 96  # pixels, the longer side: about 3 KB of JPEG
THUMBNAIL_QUALITY = 80


@dataclass
class Intake:
    """What happened to each input: the ids added and the inputs refused."""

    ids: list[int] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # {"file", "id"} or {"file", "error"}

    @property
    def failed(self) -> list[dict]:
        return [f for f in self.files if "error" in f]


def thumbnail(pixels: np.ndarray) -> bytes:
    """A small JPEG of uint8 RGB pixels (what the base sees, already cropped)."""
    image = Image.fromarray(np.ascontiguousarray(pixels, np.uint8), mode="RGB")
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def _named(message: str, described: str, name: str) -> str:
    """The preparer's message with the file's name instead of "image bytes (N bytes)",
    and advice a person at the page can follow (not a Python argument)."""
    message = message.replace("resize it first or raise max_pixels", "make it smaller "
                              "(the page does so before uploading) and add it again")
    if described in message:
        return message.replace(described, name, 1)
    return f"{name}: {message}"


def add_inputs(p: Personalizer, inputs: list[tuple[str | None, bytes]], label: str,
               source: str) -> Intake:
    """Add each (name, bytes) that the bundle's preparer accepts as a sample of `label`
    (in one transaction); refused ones are reported by name, not raised. Image samples
    get a thumbnail. The source of each sample is ``f"{source}:{name}"`` (a name of None:
    a camera frame, its source is `source`)."""
    result = Intake()
    rows, names = [], []
    for name, data in inputs:
        try:
            rows.append(p.preparer.prepare(data))
            names.append(name)
            result.files.append({"file": name})
        except BadInputError as e:
            described = p.preparer.describe(data)
            message = _named(str(e), described, name or "the camera frame")
            result.files.append({"file": name, "error": message})
    if not rows:
        return result
    features = p.base_features(rows)
    ids = p.add_features(features, [label] * len(rows),
                         [f"{source}:{name[:100]}" if name else source for name in names])
    if p.preparer.kind == "image":
        p.store.set_thumbnails(ids, [thumbnail(row) for row in rows])
    result.ids = ids
    added = iter(ids)
    for entry in result.files:
        if "error" not in entry:
            entry["id"] = next(added)
    return result
