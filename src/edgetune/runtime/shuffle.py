"""The order of a fit's epochs: mulberry32 draws and a Fisher-Yates shuffle, the rule
edgetune.js's fit.js uses, so a seed gives Python and the browser tab the same orders.

numpy.random is not used: importing it costs a device 13 ms and 6.7 MiB at its first
fit, for a few hundred draws. mulberry32's k-th draw depends only on the seed and k, so
the draws of one shuffle are computed as one numpy expression.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Shuffle"]

_STEP = 0x6D2B79F5
_MASK = 0xFFFFFFFF


class Shuffle:
    """Seeded permutations; ``permutation(n)`` as numpy's Generator has it."""

    def __init__(self, seed: int = 0):
        self._state = int(seed) & _MASK

    def uniform(self, n: int) -> np.ndarray:
        """The next `n` draws in [0, 1) (fit.js ``mulberry32``), float64."""
        k = np.arange(1, n + 1, dtype=np.uint64)
        a = ((self._state + k * _STEP) & _MASK).astype(np.uint32)
        self._state = (self._state + n * _STEP) & _MASK
        with np.errstate(over="ignore"):  # 32-bit wraparound is the algorithm (Math.imul)
            t = (a ^ (a >> 15)) * (a | 1)
            t ^= t + (t ^ (t >> 7)) * (t | 61)
            t ^= t >> 14
        return t / 4294967296.0

    def permutation(self, n: int) -> np.ndarray:
        """A random order of ``range(n)`` (fit.js ``permutation``), int64."""
        order = list(range(n))
        draws = self.uniform(max(n - 1, 0)).tolist()
        for k, i in enumerate(range(n - 1, 0, -1)):
            j = int(draws[k] * (i + 1))
            order[i], order[j] = order[j], order[i]
        return np.array(order, dtype=np.int64)
