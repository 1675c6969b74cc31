"""Crash safety: a worker process that adds samples and saves checkpoints is killed with
SIGKILL at random moments, aimed at the phases the worker reports (so that the kills land
inside operations on a fast or a loaded machine alike); afterwards the profile always
opens, a checkpoint always loads (the last one saved, or the one being saved at the
kill), no sample is half written and no add is half stored.

The machinery lives in bench/soak.py (its module docstring lists every check); the
soak runs it with hundreds of kills, this test with a couple of dozen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
_spec = importlib.util.spec_from_file_location("edgetune_soak", SOAK)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)

TARGETS = {"saves": {"ckpt", "bulk", "fit", "save", "fresh"}, "adds": {"store", "images"}}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return soak.build_bundle(tmp_path_factory.mktemp("bundle") / "tiny.edgetune")


@pytest.mark.parametrize("mix", ["saves", "adds"])
def test_sigkill_at_random_moments_loses_nothing(bundle, tmp_path, mix):
    """15 kills while checkpoints (and new profiles) are written, 15 while samples are
    added (random float32 features through SampleStore, images through the
    Personalizer)."""
    soak.prepare(tmp_path / "crash", bundle)
    result = soak.crash_rounds(tmp_path / "crash", kills=15, seed=1 if mix == "adds" else 2,
                               max_delay=0.15, mix=mix, aim=TARGETS[mix])
    assert result["problems"] == []
    during = sum(n for kind, n in result["interrupted"].items() if kind in TARGETS[mix])
    assert during >= 8, result["interrupted"]  # the kills did land inside operations
    if mix == "saves":  # and some inside the writing of a checkpoint file
        assert result["interrupted_while_writing_a_checkpoint_file"] >= 1, result


def test_the_checks_find_damage_when_writes_are_not_atomic(bundle, tmp_path):
    """The negative control: large checkpoints written in place (in 64 KiB steps, each
    fsynced) instead of to a temporary file renamed into place. Killing that worker
    must be noticed."""
    soak.prepare(tmp_path / "control", bundle)
    result = soak.crash_rounds(tmp_path / "control", kills=5, seed=3, max_delay=0.15,
                               mix="bulk", unsafe=True)
    assert result["problems"], result
    assert any("damaged" in p or "truncated" in p for p in result["problems"])
