"""Heads: the small networks trained on the device, as ONNX graphs.

A head maps a batch of features [N, F] to logits [N, classes]. The class dimension of
its parameters is declared symbolic ("classes"), so one bundle serves any number of
classes; `classes` only sets the initial values' size.

    model, shapes = SoftmaxClassifier(4).build(features_shape=[1280])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import onnx

from edgetune.autodiff import GraphBuilder
from edgetune.converter.losses import Loss, MultiClassHinge, SoftmaxCrossEntropy

CLASSES = "classes"
#: Name prefix of every head's output layer (the one with a "classes" dimension).
OUTPUT_LAYER = "head"


@dataclass
class Head:
    classes: int = 2
    seed: int = 0

    #: (weight, bias) parameter names of the output layer: one row (weight [classes,
    #: in]) and one entry (bias [classes]) per class, e.g. for weight imprinting.
    output_params: ClassVar[tuple[str, str]] = (f"{OUTPUT_LAYER}.weight",
                                                f"{OUTPUT_LAYER}.bias")

    #: The optimizer a head trains with when none is named (edgetune.defaults.OPTIMIZER
    #: unless a head measures better with another: bench/head_accuracy.py).
    default_optimizer: ClassVar[str | None] = None
    #: Learning rates by optimizer name for training this head (trainable="head")
    #: when none is given, where they measure better than edgetune.defaults.HEAD_LR.
    default_lrs: ClassVar[dict[str, float]] = {}
    #: L2 on the parameters in the loss when none is given (trainable="head").
    default_l2: ClassVar[float] = 0.0

    def default_loss(self) -> Loss:
        return SoftmaxCrossEntropy()

    def config(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}

    def build(self, features_shape: list[int]) -> tuple[onnx.ModelProto, dict[str, list]]:
        """The head graph and its parameters' declared shapes (class dim symbolic)."""
        b = GraphBuilder()
        features = b.input("features", np.float32, ["N", *features_shape])
        x = b.Flatten(features, axis=1) if len(features_shape) != 1 else features
        rng = np.random.default_rng(self.seed)
        logits, shapes = self.layers(b, x, int(np.prod(features_shape)), rng)
        return b.model({"logits": logits}, name=type(self).__name__), shapes

    def layers(self, b, x, dim, rng):
        raise NotImplementedError


def _linear(b, x, name, fan_in, fan_out, rng, scale, out_dim):
    """A linear layer with the weight stored [out, in], as torch.nn.Linear does."""
    w = b.initializer(f"{name}.weight",
                      (rng.standard_normal((fan_out, fan_in)) * scale).astype(np.float32))
    bias = b.initializer(f"{name}.bias", np.zeros(fan_out, np.float32))
    shapes = {w.name: [out_dim, fan_in], bias.name: [out_dim]}
    if out_dim == CLASSES:
        # (W x^T)^T: onnxruntime's GEMM is several times faster with the few classes as
        # rows than as columns, forward and (for the weight gradient) backward.
        return b.Transpose(b.Gemm(w, x, transB=1), perm=[1, 0]) + bias, shapes
    return b.Gemm(x, w, bias, transB=1), shapes


@dataclass
class SoftmaxClassifier(Head):
    """One linear layer; softmax cross-entropy. Starts at zero (training is convex)."""

    def layers(self, b, x, dim, rng):
        return _linear(b, x, OUTPUT_LAYER, dim, self.classes, rng, 0.0, CLASSES)


@dataclass
class LinearSVM(SoftmaxClassifier):
    """One linear layer trained with the squared multi-class hinge loss and L2: the
    max-margin separator (bench/head_accuracy.py)."""

    # Without L2 the hinge is 0 for every separator with margin 1, and a few samples in
    # 1280 dimensions are always separable: where training stopped was arbitrary (up to
    # 2.2 points below LogisticRegression). The squared hinge is smooth; the features
    # (norm about 15, all positive) make its curvature large, so Adam at 1e-3: SGD at
    # 0.1 diverges and Adam at 1e-2 overshoots.
    default_lrs: ClassVar[dict[str, float]] = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.01,
                                               "momentum": 1e-3}
    default_l2: ClassVar[float] = 0.03

    def default_loss(self) -> Loss:
        return MultiClassHinge(p=2)


@dataclass
class MLP(Head):
    """One hidden ReLU layer (He-initialized) beside a linear path to the classes:
    logits = head(x) + out(relu(hidden(x))). The linear path is the output layer that
    weight imprinting starts at the class means, and `out` starts at zero, so training
    starts from the linear classifier and adds only what the hidden layer learns (plain
    one-hidden-layer MLPs fell 1.5-2.5 points below it at 5-10 samples per class).
    residual=False: the plain MLP."""

    # Adam at 1e-2 overshoots with the hidden layer: 1.5 points below LogisticRegression
    # at 10 digits per class; 3e-3 is within 0.6 everywhere measured.
    default_lrs: ClassVar[dict[str, float]] = {"adam": 3e-3, "adamw": 3e-3}

    hidden: int = 128
    residual: bool = True

    def layers(self, b, x, dim, rng):
        h, shapes = _linear(b, x, "hidden", dim, self.hidden, rng, np.sqrt(2.0 / dim),
                            self.hidden)
        if not self.residual:
            logits, out_shapes = _linear(b, b.Relu(h), OUTPUT_LAYER, self.hidden,
                                         self.classes, rng, np.sqrt(1.0 / self.hidden),
                                         CLASSES)
            return logits, {**shapes, **out_shapes}
        learned, out_shapes = _linear(b, b.Relu(h), "out", self.hidden, self.classes, rng,
                                      0.0, CLASSES)
        linear, skip_shapes = _linear(b, x, OUTPUT_LAYER, dim, self.classes, rng, 0.0, CLASSES)
        return linear + learned, {**shapes, **out_shapes, **skip_shapes}


#: CLI names -> head classes (``--head softmax|mlp:HIDDEN|svm``).
HEADS: dict[str, type[Head]] = {"softmax": SoftmaxClassifier, "svm": LinearSVM, "mlp": MLP}
