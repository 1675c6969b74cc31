"""What the server opens when told nothing: the default bundle, built once into the
cache (:func:`edgetune.paths.cache_dir`), and the default profile
(:func:`edgetune.paths.default_profile`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgetune import paths
from edgetune.errors import EdgetuneError
from edgetune.paths import default_profile

__all__ = ["DEFAULT_BUNDLE_NAME", "default_bundle", "default_profile"]

DEFAULT_BUNDLE_NAME = "default-3.edgetune"  # -3: the head defaults (Adam 1e-2)


def default_bundle(cache_dir: str | os.PathLike | None = None, *, log=None) -> Path:
    """The default bundle (EfficientNet-Lite0 + softmax head, the default optimizer), built into
    the cache the first time (a few seconds; needs the ``build`` extra)."""
    path = paths.cache_dir(cache_dir) / DEFAULT_BUNDLE_NAME
    if (path / "manifest.json").is_file():
        return path
    if log:
        log(f"building the default bundle (EfficientNet-Lite0 + softmax head) into {path} ...")
    try:
        from edgetune.converter.convert import convert
    except ImportError as e:  # a device without the build extra
        raise EdgetuneError(f"no bundle given and the default bundle {path} is not built yet; "
                            f"building it needs the build extra (pip install "
                            f"'edgetune[build]'): {e}") from None
    bundle = convert("efficientnet-lite0", "softmax", classes=2,
                     cache_dir=cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        bundle.save(tmp / path.name)
        try:
            os.rename(tmp / path.name, path)  # atomic; loses the race to a concurrent builder
        except OSError:
            if not (path / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
