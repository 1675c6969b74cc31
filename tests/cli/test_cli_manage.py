"""The profile is not add-only: samples, classes and checkpoints list and change."""

from __future__ import annotations

import cli_helpers
from cli_helpers import run, run_json

bundle, trained = cli_helpers.bundle, cli_helpers.trained  # the fixtures


def test_samples_list_and_remove(trained, capsys):
    profile, _ = trained
    code, samples, _ = run_json(capsys, "samples", "list", "--profile", profile,
                                "--class", "coffee")
    assert code == 0 and len(samples) == 6 and {s["label"] for s in samples} == {"coffee"}
    assert {"id", "label", "created_at", "source", "sha256"} <= set(samples[0])
    ids = [str(s["id"]) for s in samples[:2]]
    code, result, _ = run_json(capsys, "samples", "remove", "--profile", profile, *ids)
    assert code == 0 and result["counts"] == {"chelsea": 6, "coffee": 4}
    code, out, err = run(capsys, "samples", "remove", "--profile", profile, ids[0])
    assert code == 1 and f"no sample with id {ids[0]}" in err


def test_classes_rename_keeps_the_trained_column_and_remove(trained, tmp_path, capsys):
    profile, data = trained
    cat = sorted((data / "chelsea").iterdir())[0]
    before = run_json(capsys, "predict", "--profile", profile, cat)[1][0]
    code, result, _ = run_json(capsys, "classes", "rename", "--profile", profile,
                               "chelsea", "cat")
    assert code == 0 and result["counts"] == {"cat": 6, "coffee": 6}
    after = run_json(capsys, "predict", "--profile", profile, cat)[1][0]
    assert after["label"] == "cat"
    assert abs(after["scores"]["cat"] - before["scores"]["chelsea"]) < 1e-6
    code, listed, _ = run_json(capsys, "classes", "list", "--profile", profile)
    assert listed == {"classes": [{"name": "cat", "samples": 6},
                                  {"name": "coffee", "samples": 6}], "trained": True}
    code, out, _ = run(capsys, "classes", "remove", "--profile", profile, "coffee")
    assert code == 0 and "removed class coffee and its 6 samples; classes: cat 6" in out
    code, out, err = run(capsys, "classes", "rename", "--profile", profile, "dog", "x")
    assert code == 1 and "unknown class 'dog'" in err


def test_checkpoints_list_and_restore_deletes_nothing(trained, capsys):
    profile, _ = trained
    run(capsys, "classes", "rename", "--profile", profile, "chelsea", "cat")  # a new save
    code, listed, _ = run_json(capsys, "checkpoints", "list", "--profile", profile)
    assert code == 0 and len(listed) == 2 and all(c["verified"] for c in listed)
    assert listed[0]["classes"] == ["chelsea", "coffee"]
    assert listed[1]["classes"] == ["cat", "coffee"]
    old = listed[0]["number"]
    code, result, _ = run_json(capsys, "checkpoints", "restore", "--profile", profile,
                               str(old))
    assert code == 0 and result["restored"] == old
    code, after, _ = run_json(capsys, "checkpoints", "list", "--profile", profile)
    assert [c["number"] for c in after] == [c["number"] for c in listed] + [
        listed[-1]["number"] + 1]
    assert after[-1]["classes"] == ["chelsea", "coffee"]
    code, out, err = run(capsys, "checkpoints", "restore", "--profile", profile, "99")
    assert code == 1 and "no checkpoint 99" in err
