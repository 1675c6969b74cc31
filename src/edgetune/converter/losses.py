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

    # A loss may also split into a part that reads only the labels and sample weights
    # (`targets`) and a short closed form on the logits. The epoch graph computes the
    # targets for every mini-batch before its loop and the loss values after it, so a
    # step runs only `logits_gradient`: fewer kernels make small steps fast.
    def targets(self, b: GraphBuilder, labels: Var, sample_weight: Var,
                classes: Var) -> dict[str, Var] | None:
        """Per-row tensors [..., n, d] from labels [..., n] and weights [..., n] (any
        leading batch axes; classes: int64 [1]); None when this loss has no closed form."""
        return None

    def scaled_targets(self, b: GraphBuilder, targets: dict[str, Var],
                       scale: Var) -> dict[str, Var] | None:
        """Targets whose `logits_gradient` is `scale` times theirs (scale broadcasts
        against each [..., n, d] target), or None. The epoch graph folds plain SGD's
        learning rate in here, outside its loop."""
        return None

    def logits_gradient(self, b: GraphBuilder, logits: Var, targets: dict[str, Var]) -> Var:
        """d loss / d logits [n, classes], from `targets` of one mini-batch."""
        raise NotImplementedError

    def batch_loss(self, b: GraphBuilder, logits: Var, targets: dict[str, Var]) -> Var:
        """The loss of each mini-batch: logits [..., n, classes] -> [...]."""
        raise NotImplementedError

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

    def targets(self, b, labels, sample_weight, classes):
        if self.class_weights is not None:
            return None
        # loss = -sum_i w_i sum_c t_ic log p_ic / sum_i w_i, with targets t smoothed;
        # its gradient is (p - t) * w_i / sum_i w_i = p * row_weight + neg_targets.
        target = b.OneHot(labels, classes, b.const([0.0, 1.0]), axis=-1)
        eps = self.label_smoothing
        if eps:
            target = target * (1.0 - eps) + eps / b.as_float(classes)
        total = b.ReduceSum(sample_weight, b.ints([-1]), keepdims=1)
        weight = b.Unsqueeze(sample_weight / b.Max(total, b.const(_TINY)), b.ints([-1]))
        return {"neg_targets": -(target * weight), "row_weight": weight}

    def scaled_targets(self, b, targets, scale):
        return {k: v * scale for k, v in targets.items()}  # the gradient is linear in them

    def logits_gradient(self, b, logits, targets):
        return b.Softmax(logits, axis=-1) * targets["row_weight"] + targets["neg_targets"]

    def batch_loss(self, b, logits, targets):
        log_p = b.LogSoftmax(logits, axis=-1)
        return b.ReduceSum(targets["neg_targets"] * log_p, b.ints([-2, -1]), keepdims=0)


@dataclass
class MultiClassHinge(Loss):
    """Multi-class SVM loss, as torch.nn.MultiMarginLoss: mean over rows of
    sum_{j != y} max(0, margin - x_y + x_j)^p / C. p=2 (squared hinge) is smooth."""

    margin: float = 1.0
    p: int = 1

    def __post_init__(self):
        if self.p not in (1, 2):
            raise ValueError(f"MultiClassHinge p is {self.p!r}; it must be 1 or 2")

    def __call__(self, b, logits, labels, sample_weight):
        one_hot = _one_hot(b, logits, labels)
        picked = b.ReduceSum(logits * one_hot, b.ints([1]), keepdims=1)
        violations = b.Relu(self.margin - picked + logits) * (1.0 - one_hot)
        if self.p == 2:
            violations = violations * violations
        rows = b.ReduceSum(violations, b.ints([1]), keepdims=0) / _class_count(b, logits)
        return _weighted_mean(b, rows, sample_weight)


@dataclass
class OneVsRestHinge(Loss):
    """One-vs-rest hinge, as scikit-learn's LinearSVC: each class is its own binary SVM
    (targets +1 for the row's class, -1 for the others); mean over rows of
    sum_c max(0, margin - t_c x_c)^p. p=2 (squared hinge, LinearSVC's default) is smooth."""

    margin: float = 1.0
    p: int = 2

    def __post_init__(self):
        if self.p not in (1, 2):
            raise ValueError(f"OneVsRestHinge p is {self.p!r}; it must be 1 or 2")

    def __call__(self, b, logits, labels, sample_weight):
        signs = _one_hot(b, logits, labels) * 2.0 - 1.0
        violations = b.Relu(self.margin - signs * logits)
        if self.p == 2:
            violations = violations * violations
        return _weighted_mean(b, b.ReduceSum(violations, b.ints([1]), keepdims=0), sample_weight)


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


#: CLI names -> loss classes (``--loss cross-entropy|hinge|mse|bce``).
LOSSES: dict[str, type[Loss]] = {"cross-entropy": SoftmaxCrossEntropy, "hinge": MultiClassHinge,
                                 "ovr-hinge": OneVsRestHinge, "mse": MeanSquaredError,
                                 "bce": BinaryCrossEntropyWithLogits}
_ALIASES = {"softmax-cross-entropy": "cross-entropy", "ce": "cross-entropy",
            "multi-class-hinge": "hinge", "binary-cross-entropy": "bce"}


def resolve_loss(loss: Loss | str | None) -> Loss | None:
    """A Loss from an object or a name of :data:`LOSSES` (``_`` and ``-`` alike, a few
    aliases such as ``softmax-cross-entropy``); None stays None (the head's default)."""
    if loss is None or isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise ValueError(f"loss must be a Loss or one of {', '.join(LOSSES)}; "
                         f"got {type(loss).__name__}")
    key = loss.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of: {', '.join(LOSSES)}")
    return LOSSES[key]()
