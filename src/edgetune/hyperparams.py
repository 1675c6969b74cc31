"""One validation of hyperparameters for every entry point: the converter, the Python
API, the CLI and the server. Each check raises BadInputError before any work is done,
naming the value and the range it must be in."""

from __future__ import annotations

import math
import numbers

from edgetune.errors import BadInputError

__all__ = ["MAX_BATCH_SIZE", "MAX_CLASSES", "MAX_EPOCHS", "check_batch_size",
           "check_classes", "check_epochs", "check_lr", "check_non_negative"]

MAX_EPOCHS = 1_000_000  # 'until stopped' in practice (start_training)
MAX_BATCH_SIZE = 1 << 20
MAX_CLASSES = 100_000


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadInputError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_lr(value, name: str = "learning rate") -> float:
    """A finite learning rate above 0. (A huge one is allowed: training rolls back and
    keeps the best parameters, and says that nothing improved.)"""
    lr = _number(name, value)
    if not math.isfinite(lr) or lr <= 0:
        raise BadInputError(f"{name} is {value!r}; it must be a finite number above 0, "
                            f"e.g. 0.001")
    return lr


def _whole(name: str, value, low: int, high: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise BadInputError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise BadInputError(f"{name} is {value}; it must be between {low} and {high}, "
                            f"e.g. {example}")
    return int(value)


def check_epochs(value) -> int:
    return _whole("epochs", value, 1, MAX_EPOCHS, "30")


def check_batch_size(value) -> int:
    return _whole("batch size", value, 1, MAX_BATCH_SIZE, "32")


def check_classes(value) -> int:
    return _whole("number of classes", value, 1, MAX_CLASSES, "4")


def check_non_negative(value, name: str) -> float:
    """A finite value >= 0 (weight decay, L2, label smoothing)."""
    number = _number(name, value)
    if not math.isfinite(number) or number < 0:
        raise BadInputError(f"{name} is {value!r}; it must be a finite number of at least 0")
    return number
