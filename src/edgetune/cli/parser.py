"""The argument parser: one subcommand per command module; help shows every default;
with --json a usage error is a JSON object on stdout too (exit 2)."""

from __future__ import annotations

import argparse
import sys

from edgetune import __version__
from edgetune.cli.bundles import add_commands as bundle_commands
from edgetune.cli.fleet import add_commands as fleet_commands
from edgetune.cli.listen import add_commands as listen_commands
from edgetune.cli.manage import add_commands as manage_commands
from edgetune.cli.options import DefaultsFormatter
from edgetune.cli.output import to_json
from edgetune.cli.serve import add_commands as serve_commands
from edgetune.cli.train import add_commands as train_commands
from edgetune.cli.use import add_commands as use_commands

__all__ = ["Parser", "build_parser"]


class Parser(argparse.ArgumentParser):
    json_errors = False  # set by build_parser when the command line has --json

    def error(self, message):
        if Parser.json_errors:
            print(to_json({"error": f"{self.prog}: {message}", "type": "UsageError"}))
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    Parser.json_errors = json_errors
    parser = Parser(prog="edgetune", formatter_class=DefaultsFormatter,
                    description="Personalize neural networks on the device: build bundles, "
                    "train, predict, export.")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, **kwargs):
        return sub.add_parser(name, formatter_class=DefaultsFormatter, **kwargs)

    for add_commands in (bundle_commands, train_commands, use_commands, listen_commands,
                         manage_commands, serve_commands, fleet_commands):
        add_commands(add)
    return parser
