"""edgetune.runtime.prototypes on real images.

Features are flattened, downsampled pixels: weak features, so the thresholds are
"well above chance", not state of the art. Two data sources:

- scikit-image's bundled photos (chelsea, coffee, astronaut, rocket): 4 classes, each
  sample a random crop / flip / brightness change of one photo;
- Fashion-MNIST (10 classes) when the Debian package ``dataset-fashion-mnist`` is
  installed under /usr/share/datasets/fashion-mnist/.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from edgetune.runtime import BadInputError, PrototypeClassifier, imprint_weights, prepare

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _crops(img: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        s = rng.uniform(0.5, 0.8)
        ch, cw = int(h * s), int(w * s)
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        c = img[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        c = np.clip(c.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
        out.append(prepare(np.ascontiguousarray(c), (16, 16)).reshape(-1))
    return np.stack(out).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def photos():
    """(X_train [40, 768], y_train, X_test [160, 768], y_test, n_classes)."""
    data = pytest.importorskip("skimage.data")
    images = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(0)
    Xtr, ytr, Xte, yte = [], [], [], []
    for k, img in enumerate(images):
        Xtr.append(_crops(img, 10, rng))
        Xte.append(_crops(img, 40, rng))
        ytr += [k] * 10
        yte += [k] * 40
    return np.concatenate(Xtr), np.array(ytr), np.concatenate(Xte), np.array(yte), 4


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        X = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28 * 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    X = X.astype(np.float32) / 255.0
    return X[:5000], y[:5000], X[5000:], y[5000:], 10


def _first(y: np.ndarray, n_classes: int, shots: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == k)[:shots] for k in range(n_classes)])


def _accuracy(clf: PrototypeClassifier, X: np.ndarray, y: np.ndarray) -> float:
    return float((clf.predict(X) == y).mean())


def test_photos_accuracy_well_above_chance(photos):
    Xtr, ytr, Xte, yte, C = photos
    clf = PrototypeClassifier().fit(Xtr, ytr, C)
    assert _accuracy(clf, Xte, yte) > 0.7  # chance is 0.25


def test_photos_one_sample_per_class(photos):
    Xtr, ytr, Xte, yte, C = photos
    idx = _first(ytr, C, 1)
    assert len(idx) == C
    clf = PrototypeClassifier().fit(Xtr[idx], ytr[idx], C)
    assert _accuracy(clf, Xte, yte) > 0.45
    # Each training sample is its own prototype: classified correctly, most confidently.
    scores = clf.predict_scores(Xtr[idx])
    np.testing.assert_array_equal(scores.argmax(axis=1), np.arange(C))


def test_fashion_mnist_accuracy(fashion):
    Xtr, ytr, Xte, yte, C = fashion
    clf = PrototypeClassifier().fit(Xtr[_first(ytr, C, 20)], ytr[_first(ytr, C, 20)], C)
    assert _accuracy(clf, Xte, yte) > 0.55  # chance is 0.1
    one = _first(ytr, C, 1)
    clf1 = PrototypeClassifier().fit(Xtr[one], ytr[one], C)
    assert _accuracy(clf1, Xte, yte) > 0.3


def test_scores_are_a_softmax_over_cosines(photos):
    Xtr, ytr, Xte, _, C = photos
    clf = PrototypeClassifier(temperature=0.05).fit(Xtr, ytr, C)
    s = clf.predict_scores(Xte[:7])
    assert s.shape == (7, C) and s.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)
    means = clf.class_means()
    x = Xte[:7] / np.linalg.norm(Xte[:7], axis=1, keepdims=True)
    logits = x @ means.T / 0.05
    ref = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-6)
    # Scale invariance (cosine): scaling an input changes nothing.
    np.testing.assert_allclose(clf.predict_scores(Xte[:7] * 7.5), s, rtol=1e-5, atol=1e-7)


def test_classes_without_samples_are_never_chosen(photos):
    Xtr, ytr, Xte, yte, C = photos
    keep = ytr != 2  # class 2 has no samples
    clf = PrototypeClassifier().fit(Xtr[keep], ytr[keep], C + 1)  # and class 4 neither
    s = clf.predict_scores(Xte)
    assert (s[:, 2] == 0).all() and (s[:, 4] == 0).all()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.isin(clf.predict(Xte), [2, 4]).any()
    np.testing.assert_array_equal(clf.counts, [10, 10, 0, 10, 0])
    assert (clf.class_means()[[2, 4]] == 0).all()
    # No samples at all: every score is 0.
    empty = PrototypeClassifier().fit(np.zeros((0, Xtr.shape[1]), np.float32), np.zeros(0, int), 3)
    assert (empty.predict_scores(Xte[:2]) == 0).all()


def test_partial_fit_equals_fit(photos):
    Xtr, ytr, Xte, _, C = photos
    full = PrototypeClassifier().fit(Xtr, ytr, C)
    inc = PrototypeClassifier().fit(Xtr[:5], ytr[:5], C)
    for i in range(5, len(Xtr)):
        inc.partial_fit(Xtr[i : i + 1], ytr[i : i + 1])
    np.testing.assert_allclose(inc.class_means(), full.class_means(), atol=1e-6)
    np.testing.assert_allclose(inc.predict_scores(Xte), full.predict_scores(Xte), atol=1e-5)


def test_imprinted_head_matches_the_prototype_classifier(photos):
    Xtr, ytr, Xte, yte, C = photos
    clf = PrototypeClassifier().fit(Xtr, ytr, C)
    W, b = imprint_weights(Xtr, ytr, C, scale=10.0)
    assert W.shape == (Xtr.shape[1], C) and b.shape == (C,)
    assert W.dtype == np.float32 and b.dtype == np.float32
    # On the class means, the head picks each mean's own class, like the classifier.
    means = clf.class_means()
    np.testing.assert_array_equal(np.argmax(means @ W + b, axis=1), np.arange(C))
    np.testing.assert_array_equal(clf.predict(means), np.arange(C))
    # And on held-out samples the argmax agrees everywhere.
    np.testing.assert_array_equal(np.argmax(Xte @ W + b, axis=1), clf.predict(Xte))
    # Columns are prototypes scaled so typical logits span about [-scale, scale].
    r = np.linalg.norm(Xtr, axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 10.0 / r, rtol=1e-5)
    logits = Xte @ W
    assert 3 < np.abs(logits).max() < 20


def test_imprinting_with_an_empty_class(photos):
    Xtr, ytr, Xte, _, C = photos
    keep = ytr != 1
    W, b = imprint_weights(Xtr[keep], ytr[keep], C, scale=10.0)
    assert (W[:, 1] == 0).all() and b[1] == -10.0
    assert (b[[0, 2, 3]] == 0).all()
    assert not (np.argmax(Xte @ W + b, axis=1) == 1).any()


def test_input_checks(photos):
    Xtr, ytr, _, _, C = photos
    with pytest.raises(BadInputError, match="labels must be in 0..3"):
        PrototypeClassifier().fit(Xtr, ytr + 1, C)
    with pytest.raises(BadInputError, match="X has 40 rows but y has 39"):
        PrototypeClassifier().fit(Xtr, ytr[:-1], C)
    with pytest.raises(BadInputError, match="batch"):
        PrototypeClassifier().fit(Xtr[0], ytr[:1], C)
    with pytest.raises(BadInputError, match="NaN or Inf"):
        PrototypeClassifier().fit(np.full_like(Xtr, np.nan), ytr, C)
    clf = PrototypeClassifier().fit(Xtr, ytr, C)
    with pytest.raises(BadInputError, match="10 features per row; the classifier was fit on 768"):
        clf.predict_scores(np.zeros((1, 10), np.float32))
    with pytest.raises(BadInputError, match="call fit"):
        PrototypeClassifier().predict(Xtr)
    with pytest.raises(BadInputError, match="temperature"):
        PrototypeClassifier(temperature=0)
    # Multi-dimensional features are flattened.
    X4 = Xtr.reshape(len(Xtr), 16, 16, 3)
    np.testing.assert_array_equal(
        PrototypeClassifier().fit(X4, ytr, C).predict(X4), clf.predict(Xtr)
    )
