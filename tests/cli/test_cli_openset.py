"""predict --open-set and eval --open-set (issue #13) on real photos through the tiny
image base: unrelated pictures are answered unknown, with the distance and threshold."""

from __future__ import annotations

import cli_helpers
import numpy as np
from cli_helpers import image_folder, run, run_json
from PIL import Image

bundle = cli_helpers.bundle  # the fixture


def test_predict_and_eval_open_set(bundle, tmp_path, capsys):
    from skimage import data

    train = image_folder(tmp_path / "train", per_class=10, seed=0)
    profile = tmp_path / "profile"
    assert run(capsys, "train", bundle, "--data", train, "--profile", profile,
               "--epochs", "20")[0] == 0
    test = image_folder(tmp_path / "test", per_class=6, seed=1)
    other = test / "unrelated"  # a class the profile does not know
    other.mkdir()
    for name in ("checkerboard", "text", "page"):
        gray = getattr(data, name)()
        Image.fromarray(np.stack([gray] * 3, -1)).resize((64, 64)).save(other / f"{name}.png")
    known = sorted((test / "chelsea").iterdir())[1]  # [0] is just beyond: 0.0022 > 0.0020

    code, results, _ = run_json(capsys, "predict", "--profile", profile, known,
                                other / "checkerboard.png", "--open-set")
    assert code == 0
    assert results[0]["label"] == "chelsea" and results[0]["unknown"] is False
    assert set(results[0]) == {"path", "label", "scores", "unknown", "class", "distance",
                               "threshold"}
    assert results[1]["label"] == "unknown" and results[1]["unknown"] is True
    assert results[1]["distance"] > results[1]["threshold"]
    assert set(results[1]["scores"]) == {"chelsea", "coffee"}
    code, out, _ = run(capsys, "predict", "--profile", profile, other / "checkerboard.png",
                       "--open-set")
    assert code == 0 and ": unknown (nearest " in out and " > " in out
    code, results, _ = run_json(capsys, "predict", "--profile", profile, known)
    assert set(results[0]) == {"path", "label", "scores"}  # without the option: as before

    code, result, _ = run_json(capsys, "eval", "--profile", profile, "--data", test,
                               "--open-set")
    assert code == 0 and result["n"] == 12
    assert result["open_set"]["unrelated"] == 3 and result["open_set"]["rejected"] >= 2
    assert result["open_set"]["unknown"] <= 2  # of 12 held-out crops of known classes
    assert all("unknown" in e for e in result["per_class"].values())
    code, out, _ = run(capsys, "eval", "--profile", profile, "--data", test, "--open-set")
    assert code == 0 and "open set: " in out and "of 3 files of other classes" in out
