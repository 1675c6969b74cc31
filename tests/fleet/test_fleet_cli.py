"""`edgetune fleet` refuses bad requests before starting anything: one JSON error, exit 1."""

from __future__ import annotations

import json

import pytest

from edgetune.cli import main


@pytest.fixture
def tiny(fashion_bundle) -> str:  # any bundle will do; this one is built anyway
    return fashion_bundle


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    return json.loads(capsys.readouterr().out)["error"]


def test_differential_privacy_needs_noise_and_clipping(tiny, tmp_path, capsys):
    message = _error(capsys, ["fleet", "server", tiny, "--rounds", "1", "--min-clients", "3",
                              "--dp-noise", "1.0", "-o", str(tmp_path / "g.edgetune"),
                              "--json"])
    assert "--dp-noise and --dp-clip" in message
    assert not (tmp_path / "g.edgetune").exists()


def test_secagg_needs_three_devices(tiny, tmp_path, capsys):
    message = _error(capsys, ["fleet", "server", tiny, "--rounds", "1", "--min-clients", "2",
                              "--secagg", "-o", str(tmp_path / "g.edgetune"), "--json"])
    assert "at least 3 clients" in message


def test_a_device_without_samples_cannot_join(tiny, tmp_path, capsys):
    from edgetune.runtime.personalizer import Personalizer

    Personalizer(tiny, profile=tmp_path / "empty").close()
    message = _error(capsys, ["fleet", "join", "--profile", str(tmp_path / "empty"),
                              "--server", "127.0.0.1:9", "--json"])
    assert "no samples" in message and "empty" in message


def test_a_bad_partition_is_named(tiny, tmp_path, capsys):
    from edgetune.fleet.simulate import partition

    labels = ["a", "b"] * 10
    with pytest.raises(Exception, match="ALPHA must be a number"):
        partition(labels, 2, "dirichlet:zero")
    with pytest.raises(Exception, match="cannot make 20 devices"):
        partition(labels, 20, "iid")
