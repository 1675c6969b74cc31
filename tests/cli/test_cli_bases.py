"""Any ONNX model as a base, through the command line: `inspect MODEL.onnx --tensors`
shows where to cut; `convert --preprocess --cut` builds a bundle whose base takes real
photo files. The model: light_squeezenet.onnx as the onnx package ships it (an old export
that onnx's checker rejects as is: initializers listed as inputs, opset 9)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from cli_helpers import image_folder

from edgetune.cli import main

SQUEEZENET = next(Path(onnx.__file__).parent.rglob("light_squeezenet.onnx"), None)


@pytest.fixture(scope="module")
def squeezenet():
    assert SQUEEZENET is not None, "the onnx package ships light_squeezenet.onnx"
    return str(SQUEEZENET)


def test_inspect_a_model_lists_cut_candidates(squeezenet, capsys):
    assert main(["inspect", squeezenet, "--tensors", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert info["input"]["preprocessing"]["name"] == "imagenet"  # detected, and said
    assert info["suggested_cut"] in {t["name"] for t in info["tensors"]}
    depths = [t["depth"] for t in info["tensors"]]
    assert depths == sorted(depths) and any(t["good_cut"] for t in info["tensors"])
    assert any("initializers listed as graph inputs" in r for r in info["repairs"])
    assert main(["inspect", squeezenet]) == 0
    text = capsys.readouterr().out
    assert "preprocessing imagenet (detected)" in text and "--tensors lists" in text


def test_convert_a_model_with_preprocess_and_cut(squeezenet, tmp_path, capsys):
    out = tmp_path / "squeeze.edgetune"
    assert main(["convert", "--base", squeezenet, "--cut", "r65", "--preprocess", "imagenet",
                 "--classes", "2", "-o", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["features"]["shape"] == [1000, 1, 1]  # the global pool's output
    assert built["int8_base"] == "base.int8.onnx"  # an image base: int8 by default
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "image" and manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["preprocessing"]["name"] == "imagenet"
    # Its weights are placeholders (ConstantOfShape), so the features say nothing; the
    # bundle itself must still hold and run: the base on real photo files.
    data = image_folder(tmp_path / "data", per_class=2)
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["dtype"] == "uint8"
    from edgetune.runtime.personalizer import Personalizer

    with Personalizer(str(out), profile=tmp_path / "p") as p:
        feats = p.features(sorted(data.rglob("*.png")))
    assert feats.shape == (4, 1000, 1, 1)


def test_a_bad_input_size_or_preprocess_is_one_line(squeezenet, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--base", squeezenet, "--input-size", "0x5", "-o", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert main(["convert", "--base", squeezenet, "--preprocess", "sepia",
                 "-o", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "sepia" in err and "Traceback" not in err and not (tmp_path / "y").exists()
