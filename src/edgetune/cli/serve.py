"""`edgetune serve`: the teachable camera, wired to edgetune.server.options."""

from __future__ import annotations

__all__ = ["add_commands"]


def serve(args) -> int:
    from edgetune.server.options import run_from_args

    return run_from_args(args)


def add_commands(add) -> None:
    from edgetune.server.options import add_serve_arguments

    p = add_serve_arguments(add("serve", help="the teachable camera: a local web app that "
                                "records samples, trains and predicts live"))
    p.set_defaults(run=serve)
