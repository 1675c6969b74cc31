"""The defaults of one choice, shared by the CLI, the Python API and the server.

Measured in bench/head_accuracy.py (BENCHMARKS.md, "Learning quality"): a softmax
head trained with these defaults reaches scikit-learn's LogisticRegression on the same
features; at Adam's usual 1e-3 (or SGD at 0.01) 30 epochs stop short of convergence.
"""

from __future__ import annotations

EPOCHS = 100  # upper bound: training stops once the objective stops improving
OPTIMIZER = "adam"
# Learning rates for training a head (trainable="head") when none is given; deeper
# training (last:K, bias:K) keeps each optimizer's own default (Adam 1e-3, SGD 0.01).
HEAD_LR = {"adam": 1e-2, "adamw": 1e-2, "sgd": 0.1, "momentum": 0.1}
LR = HEAD_LR[OPTIMIZER]  # used where a manifest names none
MIN_IMAGE_SIZE = 16  # pixels on the short side: 28x28 Fashion-MNIST is fine, an icon is not
HOST = "127.0.0.1"
PORT = 8321
