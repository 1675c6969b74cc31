"""What opening a profile costs (issue 17): bundle files hashed once and trusted while
they stay the same file (edgetune.verified); the base's optimized form saved once per
machine (runtime.optimized); training sessions made when training starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny_base

import edgetune.bundle as bundle_module
from edgetune.bundle import Bundle, BundleError
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Adam
from edgetune.runtime.optimized import FOLDER
from edgetune.runtime.personalizer import Personalizer
from edgetune.runtime.trainer import make_session, training_threads
from edgetune.verified import VerifiedFiles

HOUR_NS = 3600 * 10**9


@pytest.fixture
def saved(tmp_path):
    base = tiny_base(tmp_path / "tiny.onnx")
    path = convert(base, SoftmaxClassifier(2), Adam(lr=0.01)).save(tmp_path / "t.edgetune")
    for file in path.iterdir():  # written an hour ago: not "racily" new (edgetune.verified)
        os.utime(file, ns=(time.time_ns() - HOUR_NS,) * 2)
    return path


@pytest.fixture
def counted(monkeypatch):
    """How many files loading hashes and how many graphs it scans for external data."""
    calls = {"sha256": 0, "scan": 0}
    sha256, scan = bundle_module.sha256, bundle_module.external_data_locations

    def counting_sha256(data):
        calls["sha256"] += 1
        return sha256(data)

    def counting_scan(data):
        calls["scan"] += 1
        return scan(data)

    monkeypatch.setattr(bundle_module, "sha256", counting_sha256)
    monkeypatch.setattr(bundle_module, "external_data_locations", counting_scan)
    return calls


def _loads(path, verified, counted):
    before = dict(counted)
    bundle = Bundle.load(path, verified=verified)
    return bundle, {k: counted[k] - before[k] for k in counted}


def test_files_are_hashed_once_and_again_when_their_size_or_time_changes(saved, tmp_path,
                                                                          counted):
    record = tmp_path / "verified.json"
    files = len(list(saved.glob("*"))) - 1  # all but the manifest
    _, first = _loads(saved, VerifiedFiles(record), counted)
    assert first == {"sha256": files, "scan": 4}
    bundle, again = _loads(saved, VerifiedFiles(record), counted)
    assert again == {"sha256": 0, "scan": 0}, "unchanged files are trusted"
    assert bundle.graph("train") == (saved / "train.onnx").read_bytes()

    copy = bundle.save(tmp_path / "copy.edgetune")  # trusted graphs not read: linked
    assert (copy / "base.onnx").stat().st_ino == (saved / "base.onnx").stat().st_ino
    assert Bundle.load(copy, verified=False).manifest == bundle.manifest

    train = saved / "train.onnx"
    good, st = train.read_bytes(), train.stat()
    bad = good[:-1] + bytes([good[-1] ^ 1])
    unread = Bundle.load(saved, verified=VerifiedFiles(record))
    train.write_bytes(bad)  # changed after a load that trusted it: refused when read
    with pytest.raises(BundleError, match="sha256 of train.onnx does not match"):
        unread.graph("train")
    train.write_bytes(bad)  # the same size, another time
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    with pytest.raises(BundleError, match="sha256 of train.onnx does not match"):
        Bundle.load(saved, verified=VerifiedFiles(record))
    train.write_bytes(good + b"\0")  # another size, the recorded time
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="sha256 of train.onnx does not match"):
        Bundle.load(saved, verified=VerifiedFiles(record))

    train.write_bytes(good)  # restored just now: hashed, but not trusted yet (racy)
    for _ in range(2):
        _, now = _loads(saved, VerifiedFiles(record), counted)
        assert now == {"sha256": 1, "scan": 1}
    assert _loads(saved, False, counted)[1]["sha256"] == files, "verified=False hashes all"


def test_an_unreadable_record_means_hashing_again(saved, tmp_path, counted):
    record = tmp_path / "verified.json"
    record.write_text("{not json")
    assert _loads(saved, VerifiedFiles(record), counted)[1]["sha256"] > 0
    assert _loads(saved, VerifiedFiles(record), counted)[1]["sha256"] == 0, "rewritten whole"



def test_the_optimized_base_is_saved_once_and_rebuilt_if_it_changed(saved, tmp_path,
                                                                     monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGETUNE_CACHE", str(cache))
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    plain = make_session(Bundle.load(saved, verified=False).graph("base"), 1)
    expected = plain.run(None, {"image": np.stack(images)})[0]

    def features(profile):
        with Personalizer(saved, tmp_path / profile, threads=1, min_image_size=16) as p:
            return p.features(images)

    np.testing.assert_allclose(features("a"), expected, rtol=1e-5, atol=1e-6)
    (saved_model,) = (cache / FOLDER).glob("*.onnx")
    inode = saved_model.stat().st_ino
    np.testing.assert_allclose(features("b"), expected, rtol=1e-5, atol=1e-6)
    assert saved_model.stat().st_ino == inode, "a second profile loads the saved one"

    data = bytearray(saved_model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damaged in place: the same size, a new time
    saved_model.write_bytes(bytes(data))
    np.testing.assert_allclose(features("c"), expected, rtol=1e-5, atol=1e-6)
    assert saved_model.read_bytes() != bytes(data), "rebuilt, not used"


def test_training_sessions_are_made_when_training_starts(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    images = list(np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    with Personalizer(saved, tmp_path / "p", threads=2, min_image_size=16) as p:
        p.add_samples(images, ["a", "b", "a", "b"])
        assert p.predict(images[0])["source"] == "prototypes"
        assert p._sessions.roles == ["base"], "prototype answers need no head, no training"
        p.fit(epochs=2)
        assert sorted(p._sessions.roles) == ["base", "infer", "train", "train_epoch"]
        assert p.predict(images[0])["source"] == "head"
        threads = {role: s.get_session_options().intra_op_num_threads
                   for role, s in {**p._sessions.training(), "base": p._sessions.base()}.items()}
        assert threads == {"train": 1, "train_epoch": 1, "base": 2}, "a head trains on one"


def test_idle_sessions_are_released_and_made_again(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    images = list(np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    with Personalizer(saved, tmp_path / "p", threads=1, min_image_size=16) as p:
        p.add_samples(images[:4], ["a", "b", "a", "b"])
        p.fit(epochs=3)
        answer = p.predict(images[4])
        assert p.release_sessions(idle=3600) == [], "all were used within the hour"
        assert sorted(p.release_sessions()) == ["base", "infer", "train", "train_epoch"]
        assert p._sessions.roles == []
        again = p.predict(images[4])  # made again, from the same files
        assert again["label"] == answer["label"]
        np.testing.assert_allclose(list(again["scores"].values()),
                                   list(answer["scores"].values()), rtol=1e-6)
        assert sorted(p._sessions.roles) == ["base", "infer"]
        p.start_training(epochs=200, early_stop=False)
        assert p.release_sessions() == [] or not p.is_training, "kept while training"
        p.wait_training(timeout=60)
        assert p.fit(epochs=2)[-1]["event"] == "kept"


def test_only_a_head_trains_on_one_thread(saved):
    bundle = Bundle.load(saved)
    assert training_threads(bundle, 2) == 1
    bundle.manifest["trainable"] = {**bundle.manifest["trainable"], "mode": "last", "blocks": 1}
    assert training_threads(bundle, 2) == 2 and training_threads(bundle, None) is None
    bundle.manifest["trainable"] = "head"  # not an object: the caller's threads
    assert training_threads(bundle, 2) == 2


def test_an_unusable_cache_means_plain_sessions_and_hashing(saved, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"  # the cache "folder" is a file: nothing can be saved
    blocker.write_text("")
    monkeypatch.setenv("EDGETUNE_CACHE", str(blocker))
    images = list(np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    plain = make_session(Bundle.load(saved).graph("base"), 1)
    with Personalizer(saved, tmp_path / "p", threads=1, min_image_size=16) as p:
        np.testing.assert_allclose(p.features(images),
                                   plain.run(None, {"image": np.stack(images)})[0],
                                   rtol=1e-5, atol=1e-6)
    assert blocker.read_text() == ""


def test_the_open_set_calibration_waits_until_asked(saved, tmp_path, monkeypatch):
    import edgetune.runtime.openset as openset

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    calibrate = openset.calibrate
    monkeypatch.setattr(openset, "calibrate", lambda *a, **k: calls.append(1) or calibrate(*a, **k))
    images = list(np.random.default_rng(3).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    with Personalizer(saved, tmp_path / "p", threads=1, min_image_size=16) as p:
        p.add_samples(images[:4], ["a", "b", "a", "b"])
        assert p.predict(images[4])["source"] == "prototypes" and not calls
        thresholds = p.open_set_thresholds()
        assert set(thresholds) == {"a", "b"} and len(calls) == 1
        assert "unknown" in p.predict(images[4], open_set=True) and len(calls) == 1
        p.add_sample(images[4], "a")
        p.predict(images[0])
        assert len(calls) == 1, "samples changed: calibrated again only when asked"
        p.save()
        assert len(calls) == 2


def test_a_personalization_from_pixels_imports_only_what_it_needs(saved, tmp_path):
    """Pixels at the base's size, trained and answered, in a new process: Pillow,
    numpy.random, numpy.ma and tempfile (2.2, 6.7, 1.3 and 1.4 MiB, 45 ms of imports
    together) are never imported."""
    script = f"""
import sys
import numpy as np
from edgetune.runtime.personalizer import Personalizer
images = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)]
with Personalizer({str(saved)!r}, {str(tmp_path / "p")!r}, threads=1, min_image_size=16) as p:
    p.add_samples(images, ["a", "b", "a", "b"])
    assert p.predict(images[0])["source"] == "prototypes"
    p.fit(epochs=3)
    assert p.predict(images[1])["source"] != "prototypes" and p.open_set_thresholds()
print(sorted(m for m in ("PIL", "numpy.random", "numpy.ma", "tempfile") if m in sys.modules))
"""
    env = {**os.environ, "EDGETUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
