"""The serve command's arguments, shared by ``edgetune serve`` and
``python -m edgetune.server``::

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    sys.exit(run_from_args(parser.parse_args()))

Imports no web framework: a refused address fails before uvicorn is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgetune import defaults
from edgetune.errors import EdgetuneError

__all__ = ["add_serve_arguments", "main", "run_from_args"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --bundle, --base/--audio, --profile, --host, --port, --token and
    --tls-cert/--tls-key (help texts show defaults)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", help="bundle to personalize (default: the profile's own "
                        "copy, else the default bundle of --base, built once into the "
                        "cache: $EDGETUNE_CACHE, else $XDG_CACHE_HOME/edgetune or "
                        "~/.cache/edgetune)")
    source.add_argument("--base", choices=("efficientnet-lite0", "speech-embedding"),
                        help="which default bundle: efficientnet-lite0 (the camera, the "
                        "default; with an int8 base, which a new profile uses in server "
                        "mode, while the tab runs fp32) or speech-embedding (keywords "
                        "from the microphone); each has its own default profile")
    source.add_argument("--audio", dest="base", action="store_const",
                        const="speech-embedding",
                        help="the microphone: the same as --base speech-embedding")
    parser.add_argument("--profile", help="profile directory (default: $EDGETUNE_PROFILE, "
                        "else $XDG_DATA_HOME/edgetune/profile or "
                        "~/.local/share/edgetune/profile; with --audio speech-profile "
                        "beside it)")
    parser.add_argument("--host", default=defaults.HOST,
                        help="address to listen on (default: %(default)s; any other than a "
                        "loopback address needs --token)")
    parser.add_argument("--port", type=int, default=defaults.PORT,
                        help="port (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get("EDGETUNE_TOKEN"),
                        help="access token every request must carry (default: "
                        "$EDGETUNE_TOKEN); required to listen on a non-loopback address")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="serve HTTPS with this PEM certificate (with --tls-key). "
                        "Default: plain HTTP on a loopback address; on any other address "
                        "HTTPS with a self-signed certificate made once into "
                        "$EDGETUNE_CACHE/tls (its SHA-256 fingerprint is printed: check it "
                        "in the browser), since browsers give the camera only to https pages")
    parser.add_argument("--tls-key", metavar="FILE",
                        help="the certificate's unencrypted PEM private key (with --tls-cert)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed arguments until Ctrl-C; raises EdgetuneError when it cannot."""
    from edgetune.server.launch import serve

    return serve(bundle=args.bundle, profile=args.profile, host=args.host, port=args.port,
                 token=args.token or None, base=getattr(args, "base", None),
                 tls_cert=args.tls_cert, tls_key=args.tls_key)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgetune.server``: errors on stderr with exit code 1, as ``edgetune``
    (2 stays argparse's usage error); Ctrl-C exits 130."""
    parser = argparse.ArgumentParser(
        prog="python -m edgetune.server",
        description="The teachable camera (or microphone, --audio): a local web app that "
                    "records samples, trains and predicts live (the same as `edgetune "
                    "serve`).")
    args = add_serve_arguments(parser).parse_args(argv)
    try:
        return run_from_args(args)
    except KeyboardInterrupt:
        return 130
    except (EdgetuneError, ValueError, FileNotFoundError) as e:
        print(f"edgetune serve: error: {e}", file=sys.stderr)
        return 1
