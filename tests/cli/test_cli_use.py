"""eval, predict, export: bad files listed, read-only profiles stay byte for byte,
OSErrors are one line naming the path and the fix, JSON failures are objects."""

from __future__ import annotations

import json
import os
import stat

import cli_helpers
from cli_helpers import image_folder, run, run_json, tree_bytes

bundle, trained = cli_helpers.bundle, cli_helpers.trained  # the fixtures


def test_predict_answers_every_readable_file_and_lists_the_rest(trained, tmp_path, capsys):
    profile, data = trained
    a, b = sorted((data / "chelsea").iterdir())[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"no jpeg at all")
    code, results, err = run_json(capsys, "predict", "--profile", profile, a, bad, b)
    assert code == 0
    assert [r["path"] for r in results] == [str(a), str(bad), str(b)]
    assert results[0]["label"] == "chelsea" and set(results[0]) == {"path", "label", "scores"}
    assert "bad.jpg" in results[1]["error"] and "label" not in results[1]
    assert "skipped 1 file that cannot be read" in err and "bad.jpg" in err
    code, out, err = run(capsys, "predict", "--profile", profile, a, bad, "--strict")
    assert code == 1 and out == "" and "--strict" in err and "bad.jpg" in err
    code, results, err = run_json(capsys, "predict", "--profile", profile, bad)
    assert code == 1 and "error" in results[0]


def test_eval_lists_bad_files_and_says_which_classes_it_does_not_know(trained, tmp_path,
                                                                       capsys):
    profile, _ = trained
    test = image_folder(tmp_path / "test", classes=("chelsea", "coffee", "rocket"),
                        per_class=4, seed=1)
    (test / "coffee" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, out, err = run(capsys, "eval", "--profile", profile, "--data", test)
    assert code == 0, err
    assert "on 8 files" in out
    assert "the profile does not know these classes of the data (4 files): rocket" in out
    assert "skipped 1 file that cannot be read" in err and "cut.png" in err
    code, result, _ = run_json(capsys, "eval", "--profile", profile, "--data", test)
    assert result["skipped_classes"] == ["rocket"] and result["n"] == 8
    assert [e["path"] for e in result["errors"]] == [str(test / "coffee" / "cut.png")]
    assert {"accuracy", "n", "per_class"} <= set(result)


def test_readers_change_nothing_and_create_no_profile(trained, tmp_path, capsys):
    profile, data = trained
    one = sorted((data / "coffee").iterdir())[0]
    before = tree_bytes(profile)
    for path in [profile, *profile.rglob("*")]:  # read-only files (root ignores the bits)
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o222)
    try:
        assert run(capsys, "predict", "--profile", profile, one)[0] == 0
        assert run(capsys, "eval", "--profile", profile, "--data", data)[0] == 0
        assert run(capsys, "export", "--profile", profile, "-o", tmp_path / "m.onnx")[0] == 0
        assert run(capsys, "samples", "list", "--profile", profile)[0] == 0
        assert run(capsys, "checkpoints", "list", "--profile", profile)[0] == 0
    finally:
        for path in [profile, *profile.rglob("*")]:
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o200)
    assert tree_bytes(profile) == before
    typo = tmp_path / "profle"
    for argv in (["predict", one], ["eval", "--data", data], ["export", "-o", tmp_path / "x"],
                 ["classes", "list"]):
        code, out, err = run(capsys, *argv, "--profile", typo)
        assert code == 1 and "does not exist" in err and err.count("\n") == 1
    assert not typo.exists()


def test_os_errors_are_one_line_with_the_path_and_leave_nothing(trained, tmp_path, capsys):
    profile, _ = trained
    folder = tmp_path / "out"
    folder.mkdir()
    code, out, err = run(capsys, "export", "--profile", profile, "-o", folder)
    assert code == 1 and err.count("\n") == 1
    assert f"{folder}: it is a folder: give a file name inside it" in err
    assert list(folder.iterdir()) == []
    missing = tmp_path / "missing" / "m.onnx"
    code, out, err = run(capsys, "export", "--profile", profile, "-o", missing)
    assert code == 1 and f"{missing.parent}: it does not exist" in err
    assert not missing.parent.exists()
    code, result, _ = run_json(capsys, "export", "--profile", profile, "-o", folder)
    assert code == 1 and result["type"] == "IsADirectoryError" and str(folder) in result["error"]
    # a folder nobody may write into (/proc refuses even root)
    code, out, err = run(capsys, "export", "--profile", profile, "-o", "/proc/m.onnx")
    assert code == 1 and err.startswith("edgetune export: error: /proc/m.onnx: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "profile"]
    assert not [p for p in profile.rglob("*.tmp")]


def test_convert_onto_an_existing_bundle_is_exit_1_as_json(bundle, capsys):
    code, result, _ = run_json(capsys, "convert", "-o", bundle)
    assert code == 1 and "--force" in result["error"] and result["type"] == "BundleError"


def test_json_never_holds_nan():
    from edgetune.cli.output import to_json

    text = to_json({"loss": float("nan"), "history": [float("inf"), 1.5]})
    assert json.loads(text) == {"loss": None, "history": [None, 1.5]}
