"""The real `edgetune` command in a process: Ctrl-C during training, a reader that
leaves early (`| head`), warnings as one line."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import cli_helpers
import pytest
from cli_helpers import EXE, image_folder

bundle, trained = cli_helpers.bundle, cli_helpers.trained  # the fixtures

CLASSES = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """120 photos: with --batch-size 1 an epoch takes milliseconds and training lasts
    seconds, long enough to be interrupted."""
    return image_folder(tmp_path_factory.mktemp("many"), classes=CLASSES, per_class=30)


def _train(bundle, data, profile, *extra):
    return subprocess.Popen([str(EXE), "train", bundle, "--data", str(data), "--profile",
                             str(profile), "--epochs", "100000", "--batch-size", "1",
                             "--no-early-stop", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_stops_training_keeps_the_best_and_exits_130(bundle, many, tmp_path):
    profile = tmp_path / "p"
    proc = _train(bundle, many, profile)
    seen = []
    for line in proc.stderr:  # plain progress lines: stderr is a pipe
        seen.append(line)
        if line.startswith("epoch 5/"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "stopping after the current step" in err and "Traceback" not in err
    assert "interrupted: kept the parameters of epoch" in out and "ckpt-" in out
    from edgetune.runtime.personalizer import Personalizer

    with Personalizer(profile=profile, read_only=True) as p:
        assert p.trained and p.checkpoints.latest() is not None
        assert sum(p.counts().values()) == 120


def test_ctrl_c_under_json_is_a_json_object(bundle, many, tmp_path):
    proc = _train(bundle, many, tmp_path / "p", "--json")
    time.sleep(4)  # features take about a second, training about ten
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    result = json.loads(out)
    assert result["interrupted"] is True and result["epochs"] > 0
    assert result["checkpoint"] and "epoch " not in err


def test_a_reader_that_leaves_early_ends_it_quietly(trained):
    profile, data = trained
    files = [str(p) for p in sorted(data.rglob("*.png"))] * 50
    proc = subprocess.Popen([str(EXE), "predict", "--profile", str(profile), *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `edgetune predict ... | head -0`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "" and proc.returncode == 1


def test_warnings_are_one_line_without_source(bundle, tmp_path):
    data = image_folder(tmp_path / "data")
    (data / "coffee" / "notes.txt").write_text("not an image")
    (data / "empty").mkdir()
    r = subprocess.run([str(EXE), "train", bundle, "--data", str(data), "--profile",
                        str(tmp_path / "p"), "--epochs", "2", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    warned = [line for line in r.stderr.splitlines() if "warning" in line]
    assert warned and all(line.startswith("edgetune: warning: ") for line in warned)
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr
    json.loads(r.stdout)
