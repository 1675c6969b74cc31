"""Options shared by several commands, and argparse types that check hyperparameters
(edgetune.hyperparams) before any work: a bad value is a usage error naming the range."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from edgetune import hyperparams
from edgetune.errors import BadInputError

__all__ = ["PROFILE_HELP", "DefaultsFormatter", "add_json", "add_profile", "add_strict",
           "add_wait", "batch_size", "checked", "classes", "epochs", "input_size", "lr",
           "max_length", "non_negative"]

class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: {action.default})"


PROFILE_HELP = ("profile directory (default: $EDGETUNE_PROFILE, else "
                "$XDG_DATA_HOME/edgetune/profile or ~/.local/share/edgetune/profile)")


def checked(convert: Callable, check: Callable) -> Callable[[str], object]:
    """An argparse type: `convert` the text, then `check` it (hyperparams)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if convert is int else 'number'}") from None
        try:
            return check(value)
        except BadInputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


lr = checked(float, hyperparams.check_lr)
epochs = checked(int, hyperparams.check_epochs)
batch_size = checked(int, hyperparams.check_batch_size)
classes = checked(int, hyperparams.check_classes)


def max_length(text: str) -> int:
    """Tokens per text of a text base: a whole number in 8..512 (BERT's positions;
    edgetune.converter.text checks the same range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 8 <= value <= 512:
        raise argparse.ArgumentTypeError(f"{value} tokens is outside 8..512")
    return value


def input_size(text: str) -> tuple[int, int]:
    """HxW (e.g. 224x224) or one number for a square."""
    parts = text.lower().split("x")
    try:
        height, width = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 224x224") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be at least 1")
    return height, width


def non_negative(name: str) -> Callable[[str], float]:
    return checked(float, lambda value: hyperparams.check_non_negative(value, name))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (or list) on stdout; a failure is "
                        '{"error", "type"} (default: text)')


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help=PROFILE_HELP)


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", nargs="?", type=float, const=True, default=False,
                        metavar="SECONDS", help="if another process writes to the profile, "
                        "wait for it (at most SECONDS) instead of failing (default: fail)")


def add_strict(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--strict", action="store_true",
                        help=f"fail (exit 1, {what}) if any file cannot be read (default: "
                        "skip such files and list them at the end)")
