"""Losses as graph pieces: (logits, labels, sample_weight) -> scalar loss.

Every loss is a weighted mean over rows: a sample weight of 0 masks a row (padding,
a removed sample), and the result matches PyTorch's `reduction="mean"` when all
weights are 1. Labels are int64 class indices; the class count is read from the
logits at run time, so one graph serves any number of classes.

    loss = SoftmaxCrossEntropy(label_smoothing=0.1)(b, logits, labels, weights)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgetune.autodiff import GraphBuilder, Var

_TINY = 1e-12


def _one_hot(b: GraphBuilder, logits: Var, labels: Var) -> Var:
    depth = b.shape_of(logits, 1, 2)
    return b.OneHot(labels, depth, b.const([0.0, 1.0]), axis=-1)


def _class_count(b: GraphBuilder, logits: Var) -> Var:
    return b.as_float(b.shape_of(logits, 1, 2))


def _weighted_mean(b: GraphBuilder, rows: Var, weights: Var, norm: Var | None = None) -> Var:
    """sum(w * rows) / sum(norm or w); 0 when every weight is 0."""
    total = b.sum_all(weights * rows)
    return total / b.Max(b.sum_all(weights if norm is None else norm), b.const(_TINY))


@dataclass
class Loss:
    """Base class: subclasses build the loss and the probabilities shown to users."""

    def __call__(self, b: GraphBuilder, logits: Var, labels: Var, sample_weight: Var) -> Var:
        raise NotImplementedError

    def probabilities(self, b: GraphBuilder, logits: Var) -> Var:
        return b.Softmax(logits, axis=1)

    def with_logits_gradient(self, b: GraphBuilder, logits: Var, labels: Var,
                             sample_weight: Var) -> tuple[Var, Var] | None:
        """(loss, d loss / d logits) in closed form, when a loss has a short one; None
        lets autodiff differentiate `__call__` instead. Fewer nodes make small steps fast."""
        return None

    def config(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}


@dataclass
class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits), as torch.nn.functional.cross_entropy.

    class_weights: one weight per class (fixes the class count); label_smoothing: eps.
    """

    class_weights: Sequence[float] | None = None
    label_smoothing: float = 0.0

    def __call__(self, b, logits, labels, sample_weight):
        log_p = b.LogSoftmax(logits, axis=1)
        one_hot = _one_hot(b, logits, labels)
        axis1 = b.ints([1])
        eps = self.label_smoothing
        if self.class_weights is None:
            nll = -b.ReduceSum(one_hot * log_p, axis1, keepdims=0)
            rows = nll if eps == 0 else (1 - eps) * nll - eps * b.ReduceMean(
                log_p, axes=[1], keepdims=0)
            return _weighted_mean(b, rows, sample_weight)
        cw = b.const(np.asarray(self.class_weights, np.float32))
        label_weight = b.Gather(cw, labels)
        nll = -b.ReduceSum(one_hot * log_p, axis1, keepdims=0) * label_weight
        rows = nll
        if eps:
            smooth = -b.ReduceSum(log_p * cw, axis1, keepdims=0) / _class_count(b, logits)
            rows = (1 - eps) * nll + eps * smooth
        return _weighted_mean(b, rows, sample_weight, sample_weight * label_weight)

    def with_logits_gradient(self, b, logits, labels, sample_weight):
        if self.class_weights is not None:
            return None
        # loss = -sum_i w_i sum_c t_ic log p_ic / sum_i w_i, with targets t smoothed;
        # its gradient is (p - t) * w_i / sum_i w_i.
        log_p = b.LogSoftmax(logits, axis=1)
        target = _one_hot(b, logits, labels)
        eps = self.label_smoothing
        if eps:
            target = target * (1.0 - eps) + eps / _class_count(b, logits)
        weight = sample_weight / b.Max(b.sum_all(sample_weight), b.const(_TINY))
        rows = b.ReduceSum(target * log_p, b.ints([1]), keepdims=0)
        loss = -b.sum_all(rows * weight)
        grad = (b.Exp(log_p) - target) * b.Unsqueeze(weight, b.ints([1]))
        return loss, grad


@dataclass
class MultiClassHinge(Loss):
    """Multi-class SVM loss, as torch.nn.MultiMarginLoss (p=1):
    mean over rows of sum_{j != y} max(0, margin - x_y + x_j) / C."""

    margin: float = 1.0

    def __call__(self, b, logits, labels, sample_weight):
        one_hot = _one_hot(b, logits, labels)
        picked = b.ReduceSum(logits * one_hot, b.ints([1]), keepdims=1)
        violations = b.Relu(self.margin - picked + logits) * (1.0 - one_hot)
        rows = b.ReduceSum(violations, b.ints([1]), keepdims=0) / _class_count(b, logits)
        return _weighted_mean(b, rows, sample_weight)


@dataclass
class MeanSquaredError(Loss):
    """Mean squared error between the outputs and one-hot targets."""

    def __call__(self, b, logits, labels, sample_weight):
        diff = logits - _one_hot(b, logits, labels)
        return _weighted_mean(b, b.ReduceMean(diff * diff, axes=[1], keepdims=0), sample_weight)

    def probabilities(self, b, logits):
        return logits


@dataclass
class BinaryCrossEntropyWithLogits(Loss):
    """Per-class sigmoid cross-entropy against one-hot targets, as
    torch.nn.functional.binary_cross_entropy_with_logits (numerically stable form)."""

    def __call__(self, b, logits, labels, sample_weight):
        t = _one_hot(b, logits, labels)
        # max(x, 0) - x * t + log(1 + exp(-|x|))
        elems = b.Relu(logits) - logits * t + b.Log(1.0 + b.Exp(-b.Abs(logits)))
        return _weighted_mean(b, b.ReduceMean(elems, axes=[1], keepdims=0), sample_weight)

    def probabilities(self, b, logits):
        return b.Sigmoid(logits)


LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "hinge": MultiClassHinge,
          "mse": MeanSquaredError, "bce": BinaryCrossEntropyWithLogits}
