"""Run the teachable camera in the foreground: check the address, open the profile,
serve on uvicorn until Ctrl-C."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgetune import defaults
from edgetune.errors import EdgetuneError
from edgetune.server.bind import check_bind, is_loopback, url_for
from edgetune.server.profile import default_bundle, default_profile_for

__all__ = ["serve"]


def _log(message: str) -> None:
    print(f"edgetune serve: {message}", file=sys.stderr, flush=True)


def serve(bundle: str | os.PathLike | None = None, profile: str | os.PathLike | None = None,
          host: str = defaults.HOST, port: int = defaults.PORT, token: str | None = None,
          *, log_level: str = "warning", base: str | None = None,
          tls_cert: str | os.PathLike | None = None,
          tls_key: str | os.PathLike | None = None) -> int:
    """Run the teachable camera until interrupted (Ctrl-C). Returns an exit code.

    base: which default bundle when no bundle is given ("efficientnet-lite0", the
    camera; "speech-embedding", the microphone), and so which default profile.
    tls_cert, tls_key: serve HTTPS with this pair; without them a non-loopback host is
    served HTTPS with a self-signed certificate (.tls), a loopback one plain HTTP."""
    check_bind(host, token)  # before anything is loaded or bound
    if not 1 <= port <= 65535:
        raise EdgetuneError(f"port {port} is not between 1 and 65535")
    tls = None
    if tls_cert is not None or tls_key is not None or not is_loopback(host):
        from edgetune.server.tls import certificate_for

        tls = certificate_for(tls_cert, tls_key, host=host)

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
        https = {} if tls is None else {"ssl_certfile": str(tls.cert),
                                        "ssl_keyfile": str(tls.key)}
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                **uvicorn_config_kwargs(), **https)
        server = uvicorn.Server(config)
        counts = personalizer.counts()
        _log(f"profile {profile} ({len(counts)} classes, {sum(counts.values())} samples)")
        scheme = "http" if tls is None else "https"
        if tls is not None:
            made = "made just now" if tls.created else "kept"
            what = f"self-signed certificate {tls.cert} ({made})" if tls.self_signed \
                else f"certificate {tls.cert}"
            _log(f"HTTPS with the {what}; SHA-256 fingerprint {tls.fingerprint}")
            if tls.self_signed:
                _log("the browser warns about a self-signed certificate: accept it only "
                     "if the fingerprint it shows (certificate details) is the one above")
        query = "?token=<your token>" if token else ""
        _log(f"open {url_for(host, port, scheme)}{query} in a browser (Ctrl-C stops)")
        if host in ("0.0.0.0", "::"):
            from edgetune.server.tls import local_addresses

            for address in local_addresses():
                if not is_loopback(address) and ":" not in address:
                    _log(f"from a phone on this network: {url_for(address, port, scheme)}"
                         f"{query}")
        server.run()
    finally:
        personalizer.close()
    return 0
