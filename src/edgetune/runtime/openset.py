"""Open-set answers: "unknown" for an input far from every class the user taught.

A classifier always picks one of its classes, so an unrelated photo (or, for a wake
word detector, any other sound) gets a confident label. The rule here looks at the
cached features only, not at the head, so it works the same for every head and
before training (prototype answers) as after it:

- the distance of an input to a class is the cosine distance ``1 - cos(x, p_c)`` to
  the class prototype ``p_c`` (the L2-normalized mean of the class's L2-normalized
  features, as in :class:`~edgetune.runtime.prototypes.PrototypeClassifier`);
- each class gets a threshold calibrated from the user's own samples: the
  leave-one-out distance of each sample to the prototype of the *other* samples of
  its class, its ``QUANTILE`` (0.95) quantile, times ``MARGIN`` (2). Classes with
  fewer than ``MIN_OWN`` (5) samples use at least the pooled threshold of all classes
  (the same quantile over every leave-one-out distance), so one or two samples do not
  make a class accept nothing (1 sample) or everything (2 very different samples:
  their own quantile still counts when larger);
- an answer is *unknown* when the input is farther than its threshold from the class
  the head (or the prototypes) picked.

What it guarantees: for a class with ``MIN_OWN`` or more samples, at least 95% of its
own samples, each judged against a prototype that has not seen it, lie within
``threshold / MARGIN``; the margin leaves room for new inputs being more spread than
the leave-one-out estimate (measured on held-out photo crops: 97-100% accepted).
Nothing is promised for unrelated inputs; measured with EfficientNet-Lite0, unrelated
photos lie at 0.63-0.88 from the nearest prototype while the thresholds are 0.2-0.4
(all rejected; BENCHMARKS.md).
The distance to the nearest sample of a class was measured as well: as good on
EfficientNet-Lite0 (AUROC 1.0 both), slightly better on a tiny 8-feature base, but the
prototype needs no stored samples at prediction time, which is what the "speaker
space" comparison asks for (a prototype plus a calibrated distance).

Until some class has two samples nothing can be calibrated: the threshold is None
and nothing is rejected.

The background class: a class named ``BACKGROUND`` ("none"): recorded noise, other
speech, other objects. It is trained like any other class and answered as "none";
it has no threshold (a background is diverse by nature) and is left out of the
pooled calibration. In a profile that has it, an open-set rejection is answered
"none" too (with ``"unknown": true``), so a detector's answers are its classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from edgetune.runtime.prototypes import class_sums

__all__ = ["BACKGROUND", "MARGIN", "META", "MIN_OWN", "QUANTILE", "UNKNOWN", "Calibration",
           "OpenSet", "calibrate", "distances", "judge", "judge_all", "loo_distances"]

UNKNOWN = "unknown"  # the label of an input far from the class it would get
BACKGROUND = "none"  # the background class's name: never rejected, absorbs rejections
QUANTILE = 0.95
MARGIN = 2.0  # 1.5 accepted 92-97% of held-out crops, 2.0 97-100% (BENCHMARKS.md)
MIN_OWN = 5  # samples a class needs before its own threshold may be below the pooled one
_EPS = 1e-12
META = "open_set"  # the store's record of the open-set default; also a checkpoint key


def _normalize(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)


@dataclass
class Calibration:
    """Per-class thresholds on the cosine distance to the class prototype.

    thresholds: class name -> threshold, or None (background, a class without
    samples, nothing calibrated yet). signature: what the samples were (counts and
    ids) so a stored calibration is reused only for the same samples.
    """

    thresholds: dict[str, float | None] = field(default_factory=dict)
    pooled: float | None = None
    signature: str = ""
    quantile: float = QUANTILE
    margin: float = MARGIN

    def to_json(self) -> str:
        return json.dumps({"thresholds": self.thresholds, "pooled": self.pooled,
                           "signature": self.signature, "quantile": self.quantile,
                           "margin": self.margin}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Calibration | None:
        """A stored calibration, or None if absent or unreadable (then it is recomputed)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            thresholds = {str(k): (None if v is None else float(v))
                          for k, v in raw["thresholds"].items()}
            pooled = raw.get("pooled")
            return cls(thresholds, None if pooled is None else float(pooled),
                       str(raw.get("signature", "")), float(raw.get("quantile", QUANTILE)),
                       float(raw.get("margin", MARGIN)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def loo_distances(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each sample's cosine distance to the prototype of the other samples of its class
    (NaN for a class's only sample): float64 ``[n]``."""
    Z = _normalize(X) if len(X) else np.zeros((0, 1))
    y = np.asarray(y, np.int64)
    sums = class_sums(Z, y, n_classes)
    counts = np.bincount(y, minlength=n_classes)
    out = np.full(len(Z), np.nan)
    rest = sums[y] - Z
    norms = np.linalg.norm(rest, axis=1)
    ok = (counts[y] > 1) & (norms > _EPS)
    out[ok] = 1.0 - np.einsum("ij,ij->i", rest[ok], Z[ok]) / norms[ok]
    return out


def linear_quantile(values: np.ndarray, q: float) -> float:
    """numpy.quantile(values, q) with its default linear method, as openset.js has it:
    np.quantile's first call imports numpy.ma (15 ms, 1.3 MiB), at every first fit."""
    a = np.sort(np.asarray(values, np.float64))
    pos = q * (len(a) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(a) - 1)
    t, diff = pos - lo, a[hi] - a[lo]
    return float(a[hi] - diff * (1 - t) if t >= 0.5 else a[lo] + diff * t)  # numpy's _lerp


def calibrate(X: np.ndarray, y: np.ndarray, classes: list[str], signature: str = "",
              quantile: float = QUANTILE, margin: float = MARGIN) -> Calibration:
    """Thresholds from the samples ``X`` ``[n, ...]`` with labels ``y`` (indices into
    ``classes``); see the module docstring for the rule."""
    d = loo_distances(X, y, len(classes))
    y = np.asarray(y, np.int64)
    counts = np.bincount(y, minlength=len(classes))
    foreground = np.array([c != BACKGROUND for c in classes], bool)
    pool = d[np.isfinite(d) & foreground[y]] if len(d) else d
    pooled = linear_quantile(pool, quantile) * margin if len(pool) else None
    thresholds: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        own = d[(y == i) & np.isfinite(d)]
        if name == BACKGROUND or counts[i] == 0:
            thresholds[name] = None
            continue
        t = linear_quantile(own, quantile) * margin if len(own) else None
        if counts[i] < MIN_OWN and pooled is not None:
            t = pooled if t is None else max(t, pooled)
        thresholds[name] = t
    return Calibration(thresholds, pooled, signature, quantile, margin)


def distances(feats: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Cosine distances ``[n, C]`` of features to prototypes (rows of ``means``, already
    L2-normalized; a zero row, a class without samples, is at distance 1)."""
    return 1.0 - _normalize(feats) @ np.asarray(means, np.float64).reshape(len(means), -1).T


def judge(answer: dict, distance: float | None, calibration: Calibration,
          background: bool) -> dict:
    """The open-set form of one answer ``{"label", "scores", ...}``: adds ``unknown``,
    ``class`` (the class picked), ``distance`` and ``threshold``; the label becomes
    "unknown" (or "none" when the profile has the background class ``background``)
    when the input is farther than the threshold of the class picked."""
    picked = answer["label"]
    threshold = calibration.thresholds.get(picked)
    if picked == BACKGROUND:
        far = False
    elif distance is None or not np.isfinite(distance):
        far = True  # a class without samples: nothing vouches for it
    else:
        far = threshold is not None and distance > threshold
    out = dict(answer)
    out.update({"unknown": bool(far), "class": picked,
                "distance": None if distance is None else round(float(distance), 6),
                "threshold": None if threshold is None else round(float(threshold), 6)})
    if far:
        out["label"] = BACKGROUND if background else UNKNOWN
    return out


def judge_all(feats: np.ndarray, answers: list[dict], classes: list[str], means: np.ndarray,
              calibration: Calibration) -> list[dict]:
    """:func:`judge` each answer, with the features ``feats`` of its input and the
    prototypes ``means`` of ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    d = distances(feats, means) if classes else np.zeros((len(feats), 0))
    background = BACKGROUND in index
    return [judge(a, float(d[k, index[a["label"]]]) if a["label"] in index else None,
                  calibration, background) for k, a in enumerate(answers)]


class OpenSet:
    """A profile's open-set state, held by its Personalizer: whether predict answers
    "unknown" unless told otherwise (``on``, recorded in the store's meta under
    ``META``) and the calibration of the current samples (``stored``: a checkpoint's,
    kept while the samples are the same)."""

    def __init__(self, store, read_only: bool, stored: str | None = None):
        self.store, self.read_only = store, read_only
        self.on = store.get_meta(META) == "1"
        self._calibration = Calibration.from_json(stored)
        self._pending: tuple | None = None  # samples to calibrate on, when first asked

    @property
    def calibration(self) -> Calibration | None:
        """The calibration of the current samples, made when first asked after they
        changed, unless the one held is of these very samples (their counts and ids): a
        prototype answer needs neither the leave-one-out pass nor the read of every
        sample's id that the check takes."""
        if self._pending is not None:
            X, y, classes = self._pending
            ids = [s.id for s in self.store.samples()]
            signature = hashlib.sha256(
                json.dumps([self.store.counts(), ids], sort_keys=True).encode()).hexdigest()
            current = self._calibration
            if current is None or current.signature != signature:
                self._calibration = calibrate(X, y, classes, signature)
            self._pending = None
        return self._calibration

    def set(self, on: bool) -> None:
        """Make open-set answers the default or not; recorded unless read-only."""
        self.on, value = bool(on), "1" if on else "0"
        if not self.read_only and self.store.get_meta(META) != value:
            self.store.set_meta(META, value)

    def refresh(self, X: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
        """The store's samples changed to ``X``, ``y``: `calibration` is checked against
        them (and remade if they are new) when next asked."""
        self._pending = (X, y, classes)
