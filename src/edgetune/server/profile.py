"""What the server opens when told nothing: the default bundle, built once into the
cache (:func:`edgetune.paths.cache_dir`), and the default profile
(:func:`edgetune.paths.default_profile`).

Two default bundles: the camera's (``efficientnet-lite0``, EfficientNet-Lite0 + softmax
head) and the microphone's (``speech-embedding`` + softmax head, ``edgetune serve
--audio``), each with its own default profile (the speech one beside the camera's, named
``speech-profile``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgetune import paths
from edgetune.errors import EdgetuneError
from edgetune.paths import default_profile

__all__ = ["BASES", "DEFAULT_BASE", "DEFAULT_BUNDLE_NAME", "SPEECH_BASE", "default_bundle",
           "default_profile", "default_profile_for"]

DEFAULT_BUNDLE_NAME = "default-4.edgetune"  # -4: with the int8 base; -3: Adam 1e-2
DEFAULT_BASE = "efficientnet-lite0"
SPEECH_BASE = "speech-embedding"
#: base -> (bundle folder in the cache, what it is called in messages)
BASES = {DEFAULT_BASE: (DEFAULT_BUNDLE_NAME, "EfficientNet-Lite0 + softmax head"),
         SPEECH_BASE: ("speech-1.edgetune", "speech-embedding + softmax head")}


def default_profile_for(base: str | None = None) -> Path:
    """The default profile of a base's default bundle: the camera's is
    :func:`default_profile`, the speech one ``speech-profile`` beside it."""
    profile = default_profile()
    if base in (None, DEFAULT_BASE):
        return profile
    return profile.with_name(f"{base.split('-')[0]}-{profile.name}")


def default_bundle(cache_dir: str | os.PathLike | None = None, *, log=None,
                   base: str | None = None) -> Path:
    """A default bundle (base ``efficientnet-lite0`` unless told ``speech-embedding``, a
    softmax head, the default optimizer), built into the cache the first time (about ten
    seconds; needs the ``build`` extra, and the ``audio`` extra for speech). The camera's
    also has the int8 base (calibrated on the shipped images), which its new profiles
    use; the tab (edgetune.js) runs the fp32 base, faster in wasm. A profile pinned to an
    older default bundle keeps it."""
    base = base or DEFAULT_BASE
    if base not in BASES:
        raise EdgetuneError(f"no default bundle for base {base!r}; use one of "
                            f"{', '.join(BASES)} or give --bundle")
    name, what = BASES[base]
    path = paths.cache_dir(cache_dir) / name
    if (path / "manifest.json").is_file():
        return path
    if log:
        log(f"building the default bundle ({what}) into {path} ...")
    try:
        from edgetune.converter.convert import convert
    except ImportError as e:  # a device without the build extra
        raise EdgetuneError(f"no bundle given and the default bundle {path} is not built yet; "
                            f"building it needs the build extra (pip install "
                            f"'edgetune[build]'): {e}") from None
    bundle = convert(base, "softmax", classes=2, cache_dir=cache_dir, quantize=True)
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
