"""Prototype (nearest class mean) classification and weight imprinting.

Useful from the very first sample, before any training step: each class is
represented by the mean direction of its samples' features, and an input goes to
the class whose mean it points at most closely (cosine similarity)::

    clf = PrototypeClassifier().fit(X, y, n_classes=3)   # X [n, F], y int [n]
    clf.predict_scores(X_new)                             # [m, 3], rows sum to 1

:func:`imprint_weights` turns the same class means into the initial weights of a
softmax head ("weight imprinting", Qi, Brown & Lowe, CVPR 2018), so training starts
from the prototype classifier instead of from zero.
"""

from __future__ import annotations

import numpy as np

from edgetune.errors import BadInputError

__all__ = ["PrototypeClassifier", "class_sums", "comparable", "imprint_weights"]

_EPS = 1e-12


def comparable(X: np.ndarray, layout: str | None = None) -> np.ndarray:
    """Cached features as rows ``[n, F]`` that prototypes and the open set compare: the
    features flattened, or for layout ``"tokens+mask"`` (a text bundle trained beyond its
    head caches ``[n, L, H + 1]``: each token's activations, its mask last) their mean
    over the real tokens, ``[n, H]``: a sentence vector, where flat rows would compare
    texts token position by token position."""
    X = np.asarray(X)
    if layout == "tokens+mask":
        mask = X[..., -1:]
        return (X[..., :-1] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return X.reshape(len(X), -1)


class PrototypeClassifier:
    """Nearest class mean under cosine similarity.

    A class's prototype is the mean of its L2-normalized samples, normalized again.
    ``predict_scores`` returns ``softmax(cos(x, prototype_c) / temperature)`` over the
    classes that have samples; classes without samples score exactly 0 and are never
    predicted (if no class has samples, every score is 0). The default temperature
    0.1 maps the cosine range [-1, 1] to logits in [-10, 10]: confident when one
    prototype is clearly closest, spread out when several are about as close.
    Scores are comparable between classes, not calibrated probabilities.

    >>> clf = PrototypeClassifier().fit(np.eye(2, dtype=np.float32), np.array([0, 1]), 2)
    >>> clf.predict(np.array([[0.9, 0.1]], np.float32))
    array([0])
    """

    def __init__(self, temperature: float = 0.1) -> None:
        if not temperature > 0:
            raise BadInputError(f"temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)
        self._sums: np.ndarray | None = None  # [C, F] sums of normalized samples
        self._counts: np.ndarray | None = None  # [C]

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> PrototypeClassifier:
        """Compute the class prototypes from ``X`` ``[n, ...]`` and labels ``y`` in
        ``0..n_classes-1``; returns ``self``."""
        X2, y2 = _check_xy(X, y, n_classes)
        self._sums = np.zeros((n_classes, X2.shape[1]), dtype=np.float64)
        self._counts = np.zeros(n_classes, dtype=np.int64)
        self._accumulate(X2, y2)
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> PrototypeClassifier:
        """Add samples to a fitted classifier (e.g. one new photo) in O(n * F)."""
        if self._sums is None or self._counts is None:
            raise BadInputError("call fit() before partial_fit(); fit() sets n_classes")
        X2, y2 = _check_xy(X, y, self.n_classes, n_features=self._sums.shape[1])
        self._accumulate(X2, y2)
        return self

    def _accumulate(self, X: np.ndarray, y: np.ndarray) -> None:
        assert self._sums is not None and self._counts is not None
        self._sums += class_sums(_normalize(X.astype(np.float64)), y, len(self._sums))
        self._counts += np.bincount(y, minlength=len(self._counts))

    @property
    def n_classes(self) -> int:
        return 0 if self._counts is None else len(self._counts)

    @property
    def counts(self) -> np.ndarray:
        """Samples per class, int64 ``[C]``."""
        self._require_fit()
        assert self._counts is not None
        return self._counts.copy()

    def class_means(self) -> np.ndarray:
        """The prototypes: L2-normalized class means, float32 ``[C, F]`` (zero rows for
        classes without samples)."""
        self._require_fit()
        assert self._sums is not None
        return _normalize(self._sums).astype(np.float32)

    def predict_scores(self, X: np.ndarray) -> np.ndarray:
        """Scores float32 ``[n, C]``: a softmax over the classes that have samples."""
        self._require_fit()
        assert self._counts is not None and self._sums is not None
        X2 = _as_matrix(X, "X", n_features=self._sums.shape[1])
        present = self._counts > 0
        scores = np.zeros((X2.shape[0], self.n_classes), dtype=np.float32)
        if not present.any() or X2.shape[0] == 0:
            return scores
        cos = _normalize(X2.astype(np.float64)) @ self.class_means()[present].T.astype(np.float64)
        logits = cos / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        scores[:, present] = e / e.sum(axis=1, keepdims=True)
        return scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most likely class per row, int64 ``[n]``."""
        return np.argmax(self.predict_scores(X), axis=1).astype(np.int64)

    def _require_fit(self) -> None:
        if self._sums is None:
            raise BadInputError("the classifier has no classes yet; call fit(X, y, n_classes)")


def imprint_weights(
    X: np.ndarray, y: np.ndarray, n_classes: int, scale: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Initial softmax-head weights from class means: ``W`` float32 ``[F, C]``, ``b`` ``[C]``.

    Column ``c`` of ``W`` is the prototype of class ``c`` (its L2-normalized mean, as
    in :class:`PrototypeClassifier`) times ``scale / r``, where ``r`` is the mean L2
    norm of the samples. For a feature vector ``x``, ``x @ W`` is then
    ``scale * (|x| / r) * cos(x, prototype_c)``: the head's argmax equals the
    prototype classifier's, and for inputs of typical norm the logits span about
    ``[-scale, scale]`` (the softmax temperature ``1 / scale``). ``b`` is 0, except for
    classes without samples: zero weights and bias ``-scale``, ranking them below any
    class the input is not opposite to; imprint again once they have samples.

    Qi et al. (2018) also normalize ``x`` inside the model; a plain linear head does
    not, which only rescales each row's logits and keeps its argmax.

    >>> W, b = imprint_weights(np.eye(2, dtype=np.float32), np.array([0, 1]), 2)
    >>> W.shape, b.shape
    ((2, 2), (2,))
    """
    if not scale > 0:
        raise BadInputError(f"scale must be > 0 (got {scale})")
    clf = PrototypeClassifier().fit(X, y, n_classes)
    X2, _ = _check_xy(X, y, n_classes)
    norms = np.linalg.norm(X2.astype(np.float64), axis=1)
    r = float(norms.mean()) if norms.size and norms.mean() > _EPS else 1.0
    W = (clf.class_means().T.astype(np.float64) * (scale / r)).astype(np.float32)
    b = np.where(clf.counts > 0, 0.0, -scale).astype(np.float32)
    return W, b


def class_sums(Z: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """The sum of the rows of ``Z`` ``[n, F]`` of each class: ``[n_classes, F]``, one
    vectorized sum per class (np.add.at, row by row, took 1-2 ms for 80 photos' features,
    at every fit's imprint, checkpoint and calibration)."""
    sums = np.zeros((n_classes, Z.shape[1]), dtype=Z.dtype)
    for c in np.flatnonzero(np.bincount(y, minlength=n_classes)):
        sums[c] = Z[y == c].sum(axis=0)
    return sums


# --------------------------------------------------------------------------- helpers


def _normalize(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, _EPS)


def _as_matrix(X: np.ndarray, what: str, n_features: int | None = None) -> np.ndarray:
    a = np.asarray(X)
    if a.dtype.kind not in "fiu":
        raise BadInputError(f"{what} must be a numeric array; got dtype {a.dtype}")
    if a.ndim < 2:
        raise BadInputError(
            f"{what} must be a batch [n, F] (one sample: X[None]); got shape {a.shape}"
        )
    a = a.reshape(a.shape[0], int(np.prod(a.shape[1:])))
    if n_features is not None and a.shape[1] != n_features:
        raise BadInputError(
            f"{what} has {a.shape[1]} features per row; the classifier was fit on {n_features}"
        )
    if not np.isfinite(a).all():
        raise BadInputError(f"{what} contains NaN or Inf")
    return a


def _check_xy(
    X: np.ndarray, y: np.ndarray, n_classes: int, n_features: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    if int(n_classes) != n_classes or n_classes < 1:
        raise BadInputError(f"n_classes must be a positive int (got {n_classes!r})")
    X2 = _as_matrix(X, "X", n_features)
    y2 = np.asarray(y)
    if y2.dtype.kind not in "iu" or y2.ndim != 1:
        raise BadInputError(f"y must be a 1-D int array of labels; got {y2.dtype} {y2.shape}")
    if len(y2) != len(X2):
        raise BadInputError(f"X has {len(X2)} rows but y has {len(y2)} labels")
    if y2.size and (y2.min() < 0 or y2.max() >= n_classes):
        raise BadInputError(
            f"labels must be in 0..{n_classes - 1}; got {int(y2.min())}..{int(y2.max())}"
        )
    return X2, y2.astype(np.int64)
