"""The fit's objective in numpy: the bundle's own loss on all of the user's samples.

The training graphs lower the loss the manifest names (`manifest["loss"]`); the fit
keeps the parameters for which that same loss, over every sample with class-balanced
weights, is lowest. Computed from the infer graph's logits, forward only. A loss this
runtime does not know falls back to the cross-entropy of the probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["row_losses"]

RowLoss = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(y), classes), np.float64)
    out[np.arange(len(y)), y] = 1.0
    return out


def _cross_entropy(config: Mapping) -> RowLoss:
    eps = float(config.get("label_smoothing") or 0.0)
    class_weights = config.get("class_weights")

    def rows(logits, y):
        log_p = _log_softmax(logits)
        nll = -log_p[np.arange(len(y)), y]
        if class_weights is not None:
            cw = np.asarray(class_weights, np.float64)
            nll = nll * cw[y]
            smooth = -(log_p * cw).sum(axis=1) / logits.shape[1]
        else:
            smooth = -log_p.mean(axis=1)
        return (1 - eps) * nll + eps * smooth

    return rows


def _hinge(config: Mapping) -> RowLoss:
    margin = float(config.get("margin", 1.0))
    power = int(config.get("p", 1))

    def rows(logits, y):
        picked = logits[np.arange(len(y)), y][:, None]
        violations = np.maximum(0.0, margin - picked + logits)
        violations[np.arange(len(y)), y] = 0.0
        return (violations ** power).sum(axis=1) / logits.shape[1]

    return rows


def _one_vs_rest_hinge(config: Mapping) -> RowLoss:
    margin = float(config.get("margin", 1.0))
    power = int(config.get("p", 2))

    def rows(logits, y):
        signs = 2.0 * _one_hot(y, logits.shape[1]) - 1.0
        return (np.maximum(0.0, margin - signs * logits) ** power).sum(axis=1)

    return rows


def _squared_error(config: Mapping) -> RowLoss:
    return lambda logits, y: ((logits - _one_hot(y, logits.shape[1])) ** 2).mean(axis=1)


def _binary_cross_entropy(config: Mapping) -> RowLoss:
    def rows(logits, y):
        t = _one_hot(y, logits.shape[1])
        elems = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
        return elems.mean(axis=1)

    return rows


_LOSSES: dict[str, Callable[[Mapping], RowLoss]] = {
    "SoftmaxCrossEntropy": _cross_entropy,
    "MultiClassHinge": _hinge,
    "OneVsRestHinge": _one_vs_rest_hinge,
    "MeanSquaredError": _squared_error,
    "BinaryCrossEntropyWithLogits": _binary_cross_entropy,
}


def row_losses(config) -> RowLoss | None:
    """logits [n, classes], labels [n] -> the loss of each row, for the manifest's loss
    config; None for a loss this runtime does not know."""
    if not isinstance(config, Mapping) or config.get("name") not in _LOSSES:
        return None
    return _LOSSES[config["name"]](config)
