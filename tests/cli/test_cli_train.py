"""edgetune train: bad files listed, --strict, re-runs by content hash, one class refused,
plain progress lines, hyperparameters checked, --precision."""

from __future__ import annotations

import shutil

import cli_helpers
from cli_helpers import image_folder, run, run_json

bundle = cli_helpers.bundle  # the fixture


def test_bad_files_are_skipped_and_listed_strict_adds_nothing(bundle, tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    (data / "chelsea" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "coffee" / "empty.jpg").write_bytes(b"")
    profile = tmp_path / "strict"
    code, result, err = run_json(capsys, "train", bundle, "--data", data, "--profile",
                                 profile, "--epochs", "3", "--strict")
    assert code == 1 and result["type"] == "BadInputError"
    assert "2 of 14 files cannot be read" in result["error"] and "nothing was added" in \
        result["error"]
    assert not (profile / "samples.sqlite").exists() or run_json(
        capsys, "samples", "list", "--profile", profile)[1] == []

    profile = tmp_path / "lenient"
    code, result, err = run_json(capsys, "train", bundle, "--data", data, "--profile",
                                 profile, "--epochs", "3")
    assert code == 0, err
    assert result["samples_added"] == 12 and result["counts"] == {"chelsea": 6, "coffee": 6}
    assert sorted(e["path"] for e in result["errors"]) == sorted(
        [str(data / "chelsea" / "broken.png"), str(data / "coffee" / "empty.jpg")])
    assert "skipped 2 files that cannot be read" in err
    assert "broken.png" in err and "empty.jpg is empty" in err


def test_a_rerun_skips_known_files_and_relabels_a_moved_one(bundle, tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    profile = tmp_path / "profile"
    args = ("train", bundle, "--data", data, "--profile", profile, "--epochs", "3")
    code, first, _ = run_json(capsys, *args)
    assert code == 0 and first["samples_added"] == 12
    moved = sorted((data / "chelsea").iterdir())[0]
    shutil.move(moved, data / "coffee" / moved.name)  # the user fixes a wrong folder
    shutil.copy(data / "coffee" / moved.name, data / "coffee" / "copy.png")  # same bytes twice
    code, second, err = run_json(capsys, *args)
    assert code in (0, 1), err  # 1 when no epoch improved on the trained head
    assert (second["samples_added"], second["samples_relabelled"],
            second["samples_skipped"]) == (0, 1, 12)
    assert second["counts"] == {"chelsea": 5, "coffee": 7} and second["samples"] == 12
    code, samples, _ = run_json(capsys, "samples", "list", "--profile", profile)
    [sample] = [s for s in samples if s["source"] == str((data / "coffee" / moved.name).resolve())]
    assert sample["label"] == "coffee" and len(sample["sha256"]) == 64
    code, out, _ = run(capsys, *args)
    assert "added 0 samples, skipped 13 already stored, relabelled 0" in out


def test_one_class_is_refused_with_a_clear_message(bundle, tmp_path, capsys):
    data = image_folder(tmp_path / "data", classes=("rocket",))
    code, out, err = run(capsys, "train", bundle, "--data", data, "--profile",
                         tmp_path / "p", "--epochs", "3")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "at least two classes" in err and "rocket (6)" in err
    assert "Nothing was added" in err


def test_plain_progress_lines_off_a_terminal_and_none_with_json(bundle, tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    code, out, err = run(capsys, "train", bundle, "--data", data, "--profile",
                         tmp_path / "p", "--epochs", "3")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert lines and lines[0].startswith("epoch 1/3  loss ") and lines[0].endswith(" s")
    assert "trained" in out and "kept" in out
    code, out, err = run(capsys, "train", bundle, "--data", data, "--profile",
                         tmp_path / "q", "--epochs", "3", "--json")
    assert "epoch 1/3" not in err


def test_hyperparameters_are_checked_before_any_work(bundle, tmp_path, capsys):
    for option, value, words in [("--lr", "-1", "above 0"), ("--epochs", "0", "between 1"),
                                 ("--batch-size", "x", "not a whole number")]:
        code, out, err = run(capsys, "train", bundle, "--data", tmp_path, "--profile",
                             tmp_path / "p", option, value)
        assert code == 2 and words in err and option in err
    code, out, err = run(capsys, "convert", "--classes", "0", "-o", tmp_path / "b")
    assert code == 2 and "number of classes is 0" in err
    code, out, err = run(capsys, "convert", "--l2", "-0.5", "-o", tmp_path / "b")
    assert code == 2 and "l2 is -0.5" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()


def test_precision_option(bundle, tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    code, result, err = run_json(capsys, "train", bundle, "--data", data, "--profile",
                                 tmp_path / "p", "--epochs", "2", "--precision", "int8")
    assert code == 1 and "int8" in result["error"]  # the tiny bundle has no int8 base
    code, out, err = run(capsys, "train", bundle, "--help")
    assert "--precision {fp32,int8}" in out and "recorded precision" in out


def test_a_run_that_trains_nothing_says_why():
    from edgetune.cli.train import _why_untrained

    kept = {"event": "kept", "epoch": 0, "improved": False,
            "message": "kept the starting parameters: no epoch fit the samples better"}
    assert _why_untrained({"kept": kept, "epochs": 3, "events": [kept]}) == kept["message"]
    stopped = {"event": "stopped", "message": "stopped after 3 rollbacks"}
    assert _why_untrained({"kept": None, "epochs": 0, "events": [stopped]}) == \
        "stopped after 3 rollbacks"
    assert _why_untrained({"kept": {**kept, "improved": True}, "epochs": 3,
                           "events": []}) is None
