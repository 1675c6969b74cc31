"""One profile, one writer, with real processes: a second writer is refused with the
holder's PID (or waits), readers always work and change nothing, and the lock goes
away with its process, even a killed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import tiny_base
from PIL import Image

from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Momentum
from edgetune.errors import BundleError, EdgetuneError, ProfileLockedError
from edgetune.runtime.lock import ProfileLock
from edgetune.runtime.personalizer import Personalizer

# A writer in another process: opens the profile, says so, holds it until a line arrives.
WRITER = ("import sys\n"
          "from edgetune.runtime.personalizer import Personalizer\n"
          "p = Personalizer(profile=sys.argv[1], threads=1)\n"
          "print('ready', flush=True)\n"
          "sys.stdin.readline()\n"
          "p.close()\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    base = tiny_base(root / "tiny.onnx")
    return convert(base, SoftmaxClassifier(3), Momentum(lr=0.1)).save(root / "t.edgetune")


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [np.full((16, 16, 3), 40 * (i % 3), np.uint8) + rng.integers(0, 30, (16, 16, 3),
                                                                        np.uint8)
            for i in range(n)]


@pytest.fixture
def profile(tiny, tmp_path):
    """A trained profile, closed."""
    path = tmp_path / "me"
    with Personalizer(tiny, profile=path, threads=1) as p:
        p.add_samples(_images(), ["a", "b", "c"] * 2)
        p.fit(epochs=3)
    return path


def _start_writer(profile):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(profile)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "ready", line
    return proc


def _stop(proc):
    if proc.poll() is None:
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait(30)


def _files(profile):
    """Everything in the profile with its bytes, but SQLite's own -wal/-shm files."""
    return {str(p.relative_to(profile)): p.read_bytes() for p in sorted(profile.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_a_second_writer_is_refused_readers_work_and_the_lock_ends_with_its_process(
        profile, tmp_path):
    proc = _start_writer(profile)
    try:
        with pytest.raises(ProfileLockedError) as refused:
            Personalizer(profile=profile, threads=1)
        message = str(refused.value)
        assert f"process {proc.pid}" in message and "-c" in message  # its PID and command
        assert "Stop it, or pass --wait to wait for it (wait=True in Python)" in message
        assert ProfileLock(profile).holder()[0] == proc.pid

        files = _files(profile)
        with Personalizer(profile=profile, threads=1, read_only=True) as reader:
            result = reader.predict(_images()[0])
            assert result["source"] == "head" and set(result["scores"]) == {"a", "b", "c"}
            assert reader.trained
            data = tmp_path / "data"
            for i, (image, label) in enumerate(zip(_images(), ["a", "b", "c"] * 2)):
                (data / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(data / label / f"{i}.png")
            assert reader.evaluate(data)["n"] == 6
            out = reader.export(tmp_path / "personal.onnx")
            assert out.is_file()
        assert _files(profile) == files  # the reader changed nothing

        t0 = time.monotonic()
        with pytest.raises(ProfileLockedError, match=f"process {proc.pid}.*after waiting 2 s"):
            Personalizer(profile=profile, threads=1, wait=2)
        assert 1.9 <= time.monotonic() - t0 < 10
    finally:
        _stop(proc)
    with Personalizer(profile=profile, threads=1) as writer:  # free again
        writer.add_sample(_images()[1], "b")
        assert writer.counts()["b"] == 3


def test_wait_true_waits_for_the_writer_to_finish(profile):
    proc = _start_writer(profile)
    threading.Timer(1.0, _stop, [proc]).start()
    t0 = time.monotonic()
    with Personalizer(profile=profile, threads=1, wait=True) as p:
        assert time.monotonic() - t0 >= 0.9
        assert ProfileLock(profile).holder()[0] == os.getpid()
        assert p.counts() == {"a": 2, "b": 2, "c": 2}
    proc.wait(30)


def test_a_killed_writer_leaves_no_lock_behind(profile):
    proc = _start_writer(profile)
    with pytest.raises(ProfileLockedError):
        Personalizer(profile=profile, threads=1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    Personalizer(profile=profile, threads=1).close()


def test_two_writers_in_one_process_are_refused_too(profile):
    with Personalizer(profile=profile, threads=1):
        with pytest.raises(ProfileLockedError, match="this very process"):
            Personalizer(profile=profile, threads=1)
    Personalizer(profile=profile, threads=1).close()  # closed: free


def test_a_reader_refuses_every_change_and_writes_nothing(profile, tmp_path):
    files = _files(profile)
    reader = Personalizer(profile=profile, threads=1, read_only=True)
    image = _images()[0]
    for change in (lambda: reader.add_sample(image, "a"),
                   lambda: reader.add_samples([image], ["a"]),
                   lambda: reader.add_features(np.ones((1, 8), np.float32), ["a"]),
                   lambda: reader.fit(epochs=1),
                   lambda: reader.start_training(epochs=1),
                   reader.save,
                   lambda: reader.rename_class("a", "z"),
                   lambda: reader.remove_class("a"),
                   lambda: reader.add_class("z"),
                   lambda: reader.remove_sample(1)):
        with pytest.raises(EdgetuneError, match="open read-only"):
            change()
    assert reader.counts() == {"a": 2, "b": 2, "c": 2}
    assert reader.predict_many(_images(2))
    reader.close()
    assert _files(profile) == files
    # A reader with a writer active at the same time sees the saved state.
    with Personalizer(profile=profile, threads=1) as writer, \
            Personalizer(profile=profile, threads=1, read_only=True) as reader:
        writer.add_sample(image, "a")
        assert reader.counts()["a"] == 3


def test_a_read_only_open_of_a_missing_profile_creates_nothing(tiny, tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(EdgetuneError, match="does not exist"):
        Personalizer(profile=missing, read_only=True)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no bundle yet.*read-only open creates nothing"):
        Personalizer(tiny, profile=empty, read_only=True)
    assert list(empty.iterdir()) == []
    Personalizer(tiny, profile=empty).close()  # a writer makes the bundle copy and store
    (empty / "samples.sqlite").unlink()
    files = sorted(p.name for p in empty.iterdir())
    with pytest.raises(EdgetuneError, match="no sample store yet"):
        Personalizer(profile=empty, read_only=True)
    assert sorted(p.name for p in empty.iterdir()) == files


def test_the_lock_note_names_the_holder(tmp_path):
    lock = ProfileLock(tmp_path).acquire()
    try:
        pid, command = ProfileLock(tmp_path).holder()
        assert pid == os.getpid() and "python" in command.lower()
        with pytest.raises(ProfileLockedError, match=f"process {os.getpid()}"):
            ProfileLock(tmp_path).acquire(wait=0.2)
    finally:
        lock.release()
    ProfileLock(tmp_path).acquire().release()
