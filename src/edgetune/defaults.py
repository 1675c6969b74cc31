"""The defaults of one choice, shared by the CLI, the Python API and the server."""

from __future__ import annotations

EPOCHS = 30  # upper bound: training stops early on a plateau
OPTIMIZER = "adam"  # reaches a better head than SGD from the same start (issue 12 measures)
LR = 1e-3  # Adam's; used where the manifest names none
MIN_IMAGE_SIZE = 16  # pixels on the short side: 28x28 Fashion-MNIST is fine, an icon is not
HOST = "127.0.0.1"
PORT = 8321
