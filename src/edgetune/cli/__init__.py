"""The `edgetune` command. Each subcommand prints JSON with --json, text otherwise;
errors are one line on stderr (a JSON object on stdout with --json) and exit 1; exit 2
is a usage error, 130 an interrupt.

    edgetune convert --base efficientnet-lite0 --head softmax --classes 4 -o m.edgetune
    edgetune train m.edgetune --data photos/ --profile me/
    edgetune serve --profile me/        # the teachable camera on http://127.0.0.1:8321/

One module per group of commands: bundles (convert, inspect), train, use (eval,
predict, export), manage (samples, classes, checkpoints), serve; parser, options,
output, failures, readable (bad files), dedup, progress and interrupt serve them.
"""

from __future__ import annotations

import os
import sys

from edgetune.cli.failures import fail
from edgetune.cli.output import plain_warnings
from edgetune.cli.parser import build_parser
from edgetune.errors import EdgetuneError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(json_errors="--json" in argv).parse_args(argv)
    if getattr(args, "profile", "") is None and args.command != "serve":
        from edgetune.paths import default_profile

        args.profile = default_profile()
    with plain_warnings():
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print(f"edgetune {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `edgetune predict ... | head`: the reader left; say nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (EdgetuneError, ValueError, OSError) as e:
            return fail(args, e)
