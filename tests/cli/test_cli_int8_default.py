"""int8 by default: `edgetune convert` writes the int8 base calibrated on the images that
ship with edgetune, a new profile on it computes features with it, `--precision fp32`
and `--no-quantize` opt out, and a profile keeps the precision it recorded. Real
EfficientNet-Lite0, real photo crops (tests/conftest.py photo_crops) as files."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from cli_helpers import image_folder, run, run_json
from conftest import PHOTO_CLASSES

from edgetune.cli import main
from edgetune.runtime.personalizer import Personalizer


@pytest.fixture(scope="module")
def converted(edgetune_cache, tmp_path_factory):
    """`edgetune convert --classes 4 -o ...` with nothing about int8: (bundle, JSON)."""
    root = tmp_path_factory.mktemp("int8-default")
    out = root / "m.edgetune"
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(io.StringIO()) as s:
        env.setenv("EDGETUNE_CACHE", str(edgetune_cache))
        assert main(["convert", "--classes", "4", "-o", str(out), "--json"]) == 0
    return out, json.loads(s.getvalue())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return tuple(image_folder(root / part, PHOTO_CLASSES, per_class, seed, size=224,
                              suffix=".jpg") for part, per_class, seed in
                 (("train", 5, 0), ("test", 3, 7)))


def test_convert_writes_an_int8_base_calibrated_on_the_shipped_images(converted):
    out, result = converted
    assert (out / "base.int8.onnx").is_file() and result["int8_base"] == "base.int8.onnx"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["base_int8"]["file"] == "base.int8.onnx"
    report = result["quantization"]
    assert report == manifest["quantization"]
    assert report["calibration"].startswith("the 40 images that ship with edgetune")
    assert report["calibration_images"] == 40
    assert report["mean_cosine"] > 0.98 and report["int8_bytes"] < 0.35 * report["fp32_bytes"]


def _answers(capsys, profile, test):
    files = sorted(test.rglob("*.jpg"))
    code, results, err = run_json(capsys, "predict", "--profile", profile, *files)
    assert code == 0, err
    return [r["label"] for r in results], [f.parent.name for f in files]


def test_a_new_profile_is_int8_and_fp32_is_still_there(converted, data, tmp_path, capsys):
    bundle, _ = converted
    train, test = data
    for profile, asked, expected in ((tmp_path / "new", [], "int8"),
                                     (tmp_path / "asked", ["--precision", "fp32"], "fp32")):
        code, result, err = run_json(capsys, "train", bundle, "--data", train,
                                     "--profile", profile, *asked)
        assert code == 0, err
        with Personalizer(profile=profile, read_only=True) as p:
            assert p.precision == expected and p.store.get_meta("precision") == expected
        labels, truth = _answers(capsys, profile, test)
        assert labels == truth  # 12 held-out photos, 4 classes
    # A profile keeps its recorded precision: more training without --precision.
    code, _, err = run_json(capsys, "train", bundle, "--data", test, "--profile",
                            tmp_path / "asked")
    assert code == 0, err
    with Personalizer(profile=tmp_path / "asked", read_only=True) as p:
        assert p.precision == "fp32" and len(p.store) == 32
    code, out, err = run(capsys, "train", bundle, "--data", test, "--profile",
                         tmp_path / "asked", "--precision", "int8")
    assert code == 1 and "computed by the fp32 base" in err


def test_no_quantize_writes_no_int8_base(edgetune_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(edgetune_cache))
    out = tmp_path / "fp32.edgetune"
    code, text, err = run(capsys, "convert", "--classes", "2", "--no-quantize", "-o", out)
    assert code == 0, err
    assert "no int8 base: --no-quantize" in text
    assert not (out / "base.int8.onnx").exists()
    assert "base_int8" not in json.loads((out / "manifest.json").read_text())["graphs"]
    with Personalizer(out, profile=tmp_path / "p") as p:
        assert p.precision == "fp32"
    code, result, _ = run_json(capsys, "convert", "--quantize", tmp_path, "--no-quantize",
                               "-o", tmp_path / "both")
    assert code == 1 and "not both" in result["error"] and not (tmp_path / "both").exists()
    code, text, err = run(capsys, "convert", "--help")
    assert "--no-quantize" in text and "ship with edgetune" in text
