"""The teachable camera: a local web app that personalizes a model from the camera.

    edgetune serve [--bundle B] [--profile P] [--host 127.0.0.1] [--port 8321] [--token T]
    python -m edgetune.server            # the same command (what `make run` starts)

A person opens the page, adds classes, holds a button per class to record samples from
the camera (or drops image files when there is no camera), presses Train, watches the
loss fall and sees live predictions with confidence bars. Samples (as features, not
images) and the trained head persist in the profile; the personalized model downloads
as one standalone ONNX file.

Defaults:

- bundle: the profile's own copy if it has one, else the default bundle
  (EfficientNet-Lite0 + softmax head, Adam 1e-3), built once with
  :func:`edgetune.converter.convert.convert` into ``default_cache_dir()/default-2.edgetune``
  (``$EDGETUNE_CACHE``, else ``$XDG_CACHE_HOME/edgetune``, else ``~/.cache/edgetune``).
  Building needs the ``build`` extra; a device with only a bundle does not.
- profile: ``$EDGETUNE_PROFILE``, else ``$XDG_DATA_HOME/edgetune/profile``, else
  ``~/.local/share/edgetune/profile``.
- host: 127.0.0.1. Any other address than a loopback one is refused unless an access
  token is given (``--token`` or ``$EDGETUNE_TOKEN``); with a token every request
  needs it (open ``http://HOST:PORT/?token=T`` once; the page keeps it in a cookie).

This module imports no web framework; :mod:`edgetune.server.app` holds the
Starlette app (the ``serve`` extra: starlette, uvicorn, websockets, python-multipart).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgetune.errors import EdgetuneError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "check_bind",
    "default_bundle",
    "default_profile",
    "is_loopback",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8321
DEFAULT_BUNDLE_NAME = "default-2.edgetune"  # -2: the Scan epoch layout


def default_profile() -> Path:
    """``$EDGETUNE_PROFILE``, else ``$XDG_DATA_HOME/edgetune/profile``, else
    ``~/.local/share/edgetune/profile``."""
    env = os.environ.get("EDGETUNE_PROFILE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return root / "edgetune" / "profile"


def default_bundle(cache_dir: str | os.PathLike | None = None, *, log=None) -> Path:
    """The default bundle (EfficientNet-Lite0 + softmax head, Adam lr 1e-3), built into
    the cache the first time (a few seconds; needs the ``build`` extra)."""
    from edgetune.converter.bases import default_cache_dir

    path = default_cache_dir(cache_dir) / DEFAULT_BUNDLE_NAME
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
    bundle = convert("efficientnet-lite0", "softmax", "adam", classes=2, lr=1e-3,
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


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without an access token."""
    if token is not None and not token.strip():
        raise EdgetuneError("the access token is empty; pass a non-empty --token")
    if not is_loopback(host) and not token:
        raise EdgetuneError(
            f"refusing to listen on {host}: other devices could reach the camera and the "
            f"samples. Pass an access token (--token T or $EDGETUNE_TOKEN) to require it, "
            f"or use --host 127.0.0.1")


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve(bundle: str | os.PathLike | None = None, profile: str | os.PathLike | None = None,
          host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          *, log_level: str = "warning") -> int:
    """Run the teachable camera until interrupted (Ctrl-C). Returns an exit code."""
    check_bind(host, token)
    if not 1 <= port <= 65535:
        raise EdgetuneError(f"port {port} is not between 1 and 65535")

    def log(message: str) -> None:
        print(f"edgetune serve: {message}", file=sys.stderr, flush=True)

    import uvicorn

    from edgetune.runtime.personalizer import Personalizer
    from edgetune.server.app import create_app, uvicorn_config_kwargs

    profile = Path(profile) if profile is not None else default_profile()
    if bundle is None and not (profile / "bundle.edgetune").is_dir():
        bundle = default_bundle(log=log)
    personalizer = Personalizer(bundle, profile=profile)
    try:
        app = create_app(personalizer, token=token, loopback_only=token is None)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                **uvicorn_config_kwargs())
        server = uvicorn.Server(config)
        counts = personalizer.counts()
        log(f"profile {profile} ({len(counts)} classes, {sum(counts.values())} samples)")
        url = _url(host, port)
        if token:
            log(f"open {url}?token=<your token> in a browser (Ctrl-C stops)")
        else:
            log(f"open {url} in a browser (Ctrl-C stops)")
        server.run()
    finally:
        personalizer.close()
    return 0
