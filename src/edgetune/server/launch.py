"""Run the teachable camera in the foreground: check the address, open the profile,
serve on uvicorn until Ctrl-C."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgetune import defaults
from edgetune.errors import EdgetuneError
from edgetune.server.bind import check_bind, url_for
from edgetune.server.profile import default_bundle, default_profile_for

__all__ = ["serve"]


def _log(message: str) -> None:
    print(f"edgetune serve: {message}", file=sys.stderr, flush=True)


def serve(bundle: str | os.PathLike | None = None, profile: str | os.PathLike | None = None,
          host: str = defaults.HOST, port: int = defaults.PORT, token: str | None = None,
          *, log_level: str = "warning", base: str | None = None) -> int:
    """Run the teachable camera until interrupted (Ctrl-C). Returns an exit code.

    base: which default bundle when no bundle is given ("efficientnet-lite0", the
    camera; "speech-embedding", the microphone), and so which default profile."""
    check_bind(host, token)  # before anything is loaded or bound
    if not 1 <= port <= 65535:
        raise EdgetuneError(f"port {port} is not between 1 and 65535")

    import uvicorn

    from edgetune.runtime.personalizer import Personalizer
    from edgetune.server.app import create_app
    from edgetune.server.limits import uvicorn_config_kwargs

    if bundle is not None and base is not None:
        raise EdgetuneError("give either a bundle or a base, not both")
    profile = Path(profile) if profile is not None else default_profile_for(base)
    if bundle is None and (base is not None or not (profile / "bundle.edgetune").is_dir()):
        bundle = default_bundle(log=_log, base=base)
    personalizer = Personalizer(bundle, profile=profile)
    try:
        app = create_app(personalizer, token=token, loopback_only=token is None)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                **uvicorn_config_kwargs())
        server = uvicorn.Server(config)
        counts = personalizer.counts()
        _log(f"profile {profile} ({len(counts)} classes, {sum(counts.values())} samples)")
        url = url_for(host, port)
        if token:
            _log(f"open {url}?token=<your token> in a browser (Ctrl-C stops)")
        else:
            _log(f"open {url} in a browser (Ctrl-C stops)")
        server.run()
    finally:
        personalizer.close()
    return 0
