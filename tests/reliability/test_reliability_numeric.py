"""Numeric faults: NaN and Inf never enter the sample store (not from the caller, not
from a base model that produces them, not from a damaged database row), and a
learning rate that makes training diverge (1e6, NaN, Inf) is rolled back and reported
while predictions stay finite, for SGD, Momentum and Adam."""

from __future__ import annotations

import sqlite3
import warnings

import numpy as np
import onnx
import pytest
from conftest import tiny_base
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import SGD, Adam, Momentum
from edgetune.runtime import BadInputError, EdgetuneError, SampleStore
from edgetune.runtime.personalizer import Personalizer

SIZE = 16
CLASSES = ["a", "b", "c"]


def images(n: int, seed: int = 0, low: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(low, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


def _all_finite(result: dict) -> bool:
    return all(np.isfinite(v) for v in result["scores"].values())


# -- the store -----------------------------------------------------------------------------
F = 6
specials = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, 0.0, -0.0, 1e-45, 3.4e38])
rows = st.one_of(
    hnp.arrays(np.float32, (3, F), elements=st.floats(width=32)),
    hnp.arrays(np.float64, (3, F), elements=st.floats() | specials),
    hnp.arrays(np.float16, (3, F), elements=st.floats(width=16)))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(features=rows)
def test_the_store_takes_finite_features_only(features):
    """A batch is stored iff every value is finite as float32 (1e39 overflows to Inf);
    a refused batch leaves the store exactly as it was."""
    with SampleStore(":memory:") as store:
        store.add(np.ones((2, F), np.float32), ["a", "b"])
        before = store.features_and_labels()[0].copy(), store.counts()
        with np.errstate(over="ignore"):
            as_stored = features.astype(np.float32)
        finite = np.isfinite(as_stored).all()
        try:
            store.add(features, ["a", "b", "new"])
        except BadInputError as e:
            assert not finite and "NaN or Inf" in str(e)
            after = store.features_and_labels()[0], store.counts()
            np.testing.assert_array_equal(after[0], before[0])
            assert after[1] == before[1]
        else:
            assert finite
            X, _ = store.features_and_labels()
            np.testing.assert_array_equal(X[-3:], as_stored)
        assert np.isfinite(store.features_and_labels()[0]).all()


@pytest.mark.parametrize("blob", [
    np.array([np.nan] + [1.0] * (F - 1), "<f4").tobytes(),
    np.array([1.0] * (F - 1) + [-np.inf], "<f4").tobytes(),
    b"\x80\x04\x95",                         # too short (and a pickle's opening bytes)
    np.zeros(F + 1, "<f4").tobytes(),        # too long
    "not bytes at all",                      # SQLite columns take any type
    12345,
])
def test_a_damaged_row_is_reported_not_returned(tmp_path, blob):
    path = tmp_path / "s.sqlite"
    with SampleStore(path) as store:
        ids = store.add(np.ones((3, F), np.float32), ["a", "b", "a"])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE samples SET features=? WHERE id=?", (blob, ids[1]))
    with SampleStore(path) as store:
        with pytest.raises(EdgetuneError, match=rf"damaged: samples with ids \[{ids[1]}\]"):
            store.features_and_labels()
        store.remove_sample(ids[1])
        X, y = store.features_and_labels()
        assert X.shape == (2, F) and np.isfinite(X).all() and list(y) == [0, 0]


# -- a base that produces NaN / Inf --------------------------------------------------------
def log_base(path):
    """features = mean over pixels of log(pixel) (per channel), or its square root less
    4: -Inf for an image with a black pixel, NaN for a dark one."""
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Log", ["f"], ["log"]),
             helper.make_node("ReduceMean", ["log", "axes"], ["mean"], keepdims=0),
             helper.make_node("Sub", ["mean", "four"], ["shifted"]),
             helper.make_node("Sqrt", ["shifted"], ["root"]),
             helper.make_node("Concat", ["mean", "root"], ["emb"], axis=1)]
    graph = helper.make_graph(
        nodes, "log", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                     ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
         helper.make_tensor("four", TensorProto.FLOAT, [], [4.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def log_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    return convert(log_base(root / "log.onnx"), SoftmaxClassifier(2), Adam(lr=0.01)).save(
        root / "log.edgetune")


BLACK = np.zeros((SIZE, SIZE, 3), np.uint8)   # log(0) = -Inf
DARK = np.full((SIZE, SIZE, 3), 20, np.uint8)   # sqrt(log(20) - 4) = sqrt(-1.0) = NaN


def test_non_finite_base_output_is_refused_and_adds_nothing(log_bundle, tmp_path):
    p = Personalizer(log_bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    p.add_samples(images(6, low=100), CLASSES * 2)
    assert np.isfinite(p.features(images(6, low=100))).all()
    assert not np.isfinite(p.features([BLACK])).all() and np.isnan(p.features([DARK])).any()
    before = p.counts()
    for bad in (BLACK, DARK):
        with pytest.raises(BadInputError, match="non-finite features"):
            p.add_sample(bad, "a")
        with pytest.raises(BadInputError, match="non-finite features"):
            p.add_samples([images(1, low=100)[0], bad], ["a", "new"])
    assert p.counts() == before and "new" not in p.classes()
    assert np.isfinite(p.store.features_and_labels()[0]).all()
    p.close()


def test_non_finite_base_output_is_refused_at_prediction(log_bundle, tmp_path):
    p = Personalizer(log_bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    p.add_samples(images(6, low=100), CLASSES * 2)
    with pytest.raises(BadInputError):        # prototypes: refused
        p.predict(BLACK)
    p.fit(epochs=2)
    try:
        result = p.predict(DARK)              # the trained head
    except BadInputError:
        return
    finally:
        p.close()
    assert _all_finite(result), result


# -- diverging learning rates ------------------------------------------------------------------
@pytest.fixture(scope="module", params=[SGD, Momentum, Adam], ids=["sgd", "momentum", "adam"])
def bundle(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.__name__)
    return convert(tiny_base(root / "tiny.onnx", size=SIZE), SoftmaxClassifier(2),
                   request.param(lr=0.05)).save(root / "t.edgetune")


def _params(p: Personalizer) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in p._snapshot.params.items()}


def _photos():
    from conftest import photo_crops

    pixels, labels = photo_crops(per_class=4, size=SIZE, classes=("chelsea", "coffee", "rocket"))
    return list(pixels), [CLASSES[i] for i in labels]


@pytest.mark.parametrize("lr", [1e6, 1e30])
@pytest.mark.parametrize("batch_size", [None, 4], ids=["full-batch", "batch-4"])
def test_a_diverging_learning_rate_rolls_back_reports_and_predictions_stay_finite(
        bundle, tmp_path, lr, batch_size):
    p = Personalizer(bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    samples, names = _photos()
    p.add_samples(samples, names)
    p.fit(epochs=10, batch_size=batch_size, early_stop=False)
    events = []
    with pytest.warns(RuntimeWarning, match="rolled back to the last good parameters"):
        history = p.fit(epochs=6, lr=lr, batch_size=batch_size, early_stop=False,
                        callback=events.append)
    rollbacks = [r for r in history if r.get("event") == "rollback"]
    assert len(rollbacks) == 3 and all(r in events for r in rollbacks)
    assert history[-2]["event"] == "stopped" and "3 rollbacks" in history[-2]["message"]
    assert history[-1]["event"] == "kept" and not history[-1]["improved"]
    assert all(any(why in r["message"] for why in ("loss became", "exploded", "non-finite"))
               for r in rollbacks)
    assert [r["lr"] for r in rollbacks][-1] < lr
    assert all(np.isfinite(v).all() for v in _params(p).values())
    answers = p.predict_many(samples)
    assert all(r["source"] == "head" and _all_finite(r) for r in answers)
    p.close()
    # What is on disk answers the same.
    reopened = Personalizer(profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    assert reopened.predict_many(samples) == answers
    reopened.close()


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1.0, 0.0])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused_before_training(
        bundle, tmp_path, lr):
    p = Personalizer(bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    samples, names = _photos()
    p.add_samples(samples, names)
    try:
        with pytest.raises(BadInputError, match="learning rate"):
            p.fit(epochs=3, lr=lr)
        assert not p.trained and p.checkpoints.latest() is None
    finally:
        p.close()


@pytest.mark.parametrize("batch_size", [None, 4], ids=["full-batch", "batch-4"])
def test_a_diverging_fit_restores_the_parameters_from_before(bundle, tmp_path, batch_size):
    """The stronger property: every epoch at lr 1e6, 1e5, 1e4 diverges, so nothing of
    this fit may remain, even with one step per epoch."""
    p = Personalizer(bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    samples, names = _photos()
    p.add_samples(samples, names)
    p.fit(epochs=10, batch_size=batch_size, early_stop=False)
    good, step, expected = _params(p), p.step, p.predict_many(samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p.fit(epochs=6, lr=1e6, batch_size=batch_size, early_stop=False)
    try:
        assert p.step == step
        for name, value in _params(p).items():
            np.testing.assert_array_equal(value, good[name])
        assert p.predict_many(samples) == expected
    finally:
        p.close()


def test_a_diverging_first_fit_keeps_predictions_finite(bundle, tmp_path):
    p = Personalizer(bundle, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    samples, names = _photos()
    p.add_samples(samples, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = p.fit(epochs=6, lr=1e6, early_stop=False)
    assert [r.get("event") for r in history].count("rollback") == 3
    assert history[-2]["event"] == "stopped" and history[-1]["event"] == "kept"
    assert all(_all_finite(r) for r in p.predict_many(samples))
    p.close()
