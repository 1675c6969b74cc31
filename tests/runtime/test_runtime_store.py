"""edgetune.runtime.store: the profile's SQLite sample store."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from edgetune.runtime import BadInputError, EdgetuneError, SampleStore

F = 16


def _feats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, F)).astype(np.float32)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "samples.sqlite"


def test_add_and_read_back_across_reopen(db):
    X = _feats(5)
    with SampleStore(db) as s:
        ids = s.add(X[0], "mug")
        ids += s.add(X[1:4], ["cup", "mug", "cup"], source=["a.jpg", None, "c.jpg"])
        ids += s.add(X[4], "plant", source="camera")
        assert len(ids) == 5 and len(set(ids)) == 5
        assert len(s) == 5
    with SampleStore(db) as s:
        assert s.class_names() == ["mug", "cup", "plant"]
        assert s.counts() == {"mug": 2, "cup": 2, "plant": 1}
        assert s.feature_shape == (F,)
        got, y = s.features_and_labels()
        assert got.dtype == np.float32 and got.shape == (5, F)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(got, X)  # bit-exact float32 round trip
        np.testing.assert_array_equal(y, [0, 1, 0, 1, 2])
        infos = s.samples()
        assert [i.label for i in infos] == ["mug", "cup", "mug", "cup", "plant"]
        assert [i.source for i in infos] == [None, "a.jpg", None, "c.jpg", "camera"]
        assert [i.id for i in infos] == ids


def test_wal_mode_and_foreign_keys(db):
    with SampleStore(db) as s:
        s.add(_feats(1)[0], "mug")
        other = sqlite3.connect(db)  # an independent connection sees the file's mode
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            # Readers are not blocked while the store writes (WAL).
            assert other.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 1
        finally:
            other.close()


def test_batch_add_is_all_or_nothing(db):
    X = _feats(4)
    with SampleStore(db) as s:
        s.add(X[0], "mug")
        bad = X.copy()
        bad[2, 5] = np.nan
        with pytest.raises(BadInputError, match=r"sample 2 \(label 'newclass'\).*NaN or Inf"):
            s.add(bad, ["mug", "cup", "newclass", "cup"])
        bad[2, 5] = np.inf
        with pytest.raises(BadInputError, match="NaN or Inf"):
            s.add(bad, ["mug", "cup", "newclass", "cup"])
        # Nothing from the failed batches: no samples, no new classes.
        assert len(s) == 1
        assert s.class_names() == ["mug"]
        # float64 values beyond float32's range become Inf and are rejected too.
        with pytest.raises(BadInputError, match="NaN or Inf"):
            s.add(np.full(F, 1e300), "mug")
        # A bad class name in the middle of a batch also adds nothing.
        with pytest.raises(BadInputError, match="class name is empty"):
            s.add(X[:3], ["cup", "", "cup"])
        assert s.counts() == {"mug": 1}


def test_failure_inside_the_transaction_rolls_back(db):
    # Make the database itself refuse the 3rd insert of a batch (a trigger added from
    # another connection): by then two samples and two new classes were written, and
    # the rollback must remove them all.
    with SampleStore(db) as s:
        s.add(_feats(1)[0], "mug")
        other = sqlite3.connect(db)
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON samples WHEN NEW.source = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        other.commit()
        other.close()
        with pytest.raises(sqlite3.DatabaseError, match="disk says no"):
            s.add(_feats(3), ["cup", "bowl", "cup"], source=[None, None, "boom"])
        assert s.class_names() == ["mug"]
        assert len(s) == 1
        # The store is still usable after the failed transaction.
        s.add(_feats(1)[0], "cup")
        assert s.counts() == {"mug": 1, "cup": 1}


def test_feature_dimension_must_match(db):
    with SampleStore(db) as s:
        s.add(_feats(2), ["a", "b"])
    with SampleStore(db) as s:
        with pytest.raises(
            BadInputError, match=r"shape \(8,\) per sample but this store holds .*\(16,\)"
        ):
            s.add(np.zeros(8, np.float32), "a")
        with pytest.raises(BadInputError, match="do not match 3 labels"):
            s.add(_feats(2), ["a", "b", "c"])
        assert len(s) == 2


def test_multi_dimensional_features(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as s:
        X = np.random.default_rng(1).random((3, 2, 3, 4)).astype(np.float32)
        s.add(X, ["a", "b", "a"])
        s.add(X[0], "b")  # a str label means ONE sample of shape (2, 3, 4)
        got, y = s.features_and_labels()
        assert got.shape == (4, 2, 3, 4)
        np.testing.assert_array_equal(got[:3], X)
        np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_feature_dtype_checks(db):
    with SampleStore(db) as s:
        with pytest.raises(BadInputError, match="floating point"):
            s.add(np.arange(F), "a")
        with pytest.raises(BadInputError, match="scalar"):
            s.add(np.float32(1.0), "a")
        s.add(np.ones(F, np.float64), "a")  # finite float64 is stored as float32
        assert s.features_and_labels()[0].dtype == np.float32


def test_rename_keeps_label_indices(db):
    X = _feats(3)
    with SampleStore(db) as s:
        s.add(X, ["mug", "cup", "plant"])
        s.rename_class("cup", "glass")
        assert s.class_names() == ["mug", "glass", "plant"]
        assert s.class_index("glass") == 1
        np.testing.assert_array_equal(s.features_and_labels()[1], [0, 1, 2])
        with pytest.raises(BadInputError, match="'plant' already exists"):
            s.rename_class("mug", "plant")
        with pytest.raises(BadInputError, match="unknown class 'nope'; known classes: 'mug'"):
            s.rename_class("nope", "x")
        with pytest.raises(BadInputError, match="whitespace"):
            s.rename_class("mug", " mug")
        s.rename_class("mug", "mug")  # no-op
    with SampleStore(db) as s:
        assert s.class_names() == ["mug", "glass", "plant"]


def test_remove_class_renumbers_densely(db):
    X = _feats(6)
    with SampleStore(db) as s:
        s.add(X, ["a", "b", "c", "d", "b", "d"])
        assert s.remove_class("b") == 1
        assert s.class_names() == ["a", "c", "d"]
        assert s.counts() == {"a": 1, "c": 1, "d": 2}
        got, y = s.features_and_labels()
        np.testing.assert_array_equal(y, [0, 1, 2, 2])
        np.testing.assert_array_equal(got, X[[0, 2, 3, 5]])
        assert s.remove_class("a") == 0
        np.testing.assert_array_equal(s.features_and_labels()[1], [0, 1, 1])
        with pytest.raises(BadInputError, match="unknown class 'a'"):
            s.remove_class("a")
        # A class added after removals takes the next dense index.
        assert s.add_class("e") == 2
        assert s.class_names() == ["c", "d", "e"]
        assert s.counts() == {"c": 1, "d": 2, "e": 0}


def test_add_class_and_remove_sample(db):
    X = _feats(3)
    with SampleStore(db) as s:
        assert s.add_class("empty") == 0
        with pytest.raises(BadInputError, match="already exists"):
            s.add_class("empty")
        ids = s.add(X, ["x", "x", "y"])
        assert s.counts() == {"empty": 0, "x": 2, "y": 1}
        s.remove_sample(ids[0])
        assert s.counts() == {"empty": 0, "x": 1, "y": 1}
        np.testing.assert_array_equal(s.features_and_labels()[0], X[1:])
        with pytest.raises(BadInputError, match=f"no sample with id {ids[0]}"):
            s.remove_sample(ids[0])
        # Ids are never reused.
        assert s.add(X[0], "x")[0] > max(ids)
        # A class whose last sample is removed stays, with 0 samples.
        s.remove_sample(ids[2])
        assert s.counts()["y"] == 0


def test_empty_store(db):
    with SampleStore(db) as s:
        X, y = s.features_and_labels()
        assert X.shape[0] == 0 and y.shape == (0,) and X.dtype == np.float32
        assert s.counts() == {} and s.class_names() == [] and len(s) == 0
        assert s.feature_shape is None
        assert s.add(np.zeros((0, F), np.float32), []) == []


def test_meta_table(db):
    with SampleStore(db) as s:
        s.set_meta("bundle_sha256", "ab" * 32)
        assert s.get_meta("missing") is None
        assert s.get_meta("missing", "x") == "x"
        with pytest.raises(BadInputError, match="must be str"):
            s.set_meta("n", 3)
    with SampleStore(db) as s:
        assert s.get_meta("bundle_sha256") == "ab" * 32


def test_class_name_validation(db):
    with SampleStore(db) as s:
        for bad, msg in [
            (3, "must be str"),
            ("", "empty"),
            ("a\nb", "control"),
            ("x" * 300, "at most"),
        ]:
            with pytest.raises(BadInputError, match=msg):
                s.add_class(bad)
        s.add_class("Kaffeebecher ☕")  # unicode is fine
        assert s.class_names() == ["Kaffeebecher ☕"]


def test_closed_store_and_foreign_files(tmp_path, db):
    s = SampleStore(db)
    s.close()
    s.close()  # idempotent
    with pytest.raises(EdgetuneError, match="closed"):
        len(s)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(EdgetuneError, match="not a usable edgetune sample store"):
        SampleStore(junk)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(EdgetuneError, match="not an edgetune sample store"):
        SampleStore(other)


def test_concurrent_threads_share_one_store(db):
    with SampleStore(db) as s:
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            try:
                for i in range(20):
                    s.add(_feats(1, seed=100 * k + i)[0], f"class{k}")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        def reader() -> None:
            try:
                for _ in range(20):
                    X, y = s.features_and_labels()
                    assert len(X) == len(y)
                    s.counts()
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        counts = s.counts()  # class order depends on which thread came first
        assert sorted(counts) == ["class0", "class1", "class2"]
        assert list(counts.values()) == [20, 20, 20]
        assert len(s) == 60


def test_feature_shape_fixed_up_front(db):
    with SampleStore(db, feature_shape=(F,)) as s:
        assert s.feature_shape == (F,)
        # A batch passed with one str label is ONE sample of shape (3, F): refused, with
        # the fix in the message.
        with pytest.raises(BadInputError, match="pass a list of 3 labels"):
            s.add(_feats(3), "mug")
        assert len(s) == 0 and s.class_names() == []
        s.add(_feats(3), ["mug"] * 3)
    with SampleStore(db, feature_shape=[F]) as s:  # same shape: fine
        assert len(s) == 3
    with pytest.raises(BadInputError, match=r"holds features of shape \(16,\), not \(8,\)"):
        SampleStore(db, feature_shape=(8,))
    with pytest.raises(BadInputError, match="positive"):
        SampleStore(db, feature_shape=(0,))


def test_read_only_store_reads_and_refuses_every_write(tmp_path, db):
    with pytest.raises(EdgetuneError, match="no sample store"):
        SampleStore(tmp_path / "none.sqlite", read_only=True)
    assert not (tmp_path / "none.sqlite").exists()
    with SampleStore(db, feature_shape=(4,)) as s:
        s.add(np.ones((2, 4), np.float32), ["mug", "cup"])
    with SampleStore(db, feature_shape=(4,), read_only=True) as r:
        assert r.counts() == {"mug": 1, "cup": 1}
        X, y = r.features_and_labels()
        assert X.shape == (2, 4) and list(y) == [0, 1]
        for write in (lambda: r.add(np.ones(4, np.float32), "mug"),
                      lambda: r.add_class("plate"), lambda: r.rename_class("mug", "m"),
                      lambda: r.remove_class("mug"), lambda: r.set_meta("k", "v")):
            with pytest.raises(EdgetuneError, match="read-only"):
                write()
        with pytest.raises(BadInputError, match="holds features of shape"):
            SampleStore(db, feature_shape=(5,), read_only=True)
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t(x)").connection.close()
    with pytest.raises(EdgetuneError, match="not an edgetune sample store"):
        SampleStore(tmp_path / "other.sqlite", read_only=True)
