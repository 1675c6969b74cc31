"""The CLI flow the end-to-end tests of each input kind share: train a profile on a
class folder, predict files (--json), export the standalone model."""

from __future__ import annotations

import json

import onnxruntime as ort

from edgetune.cli import main


def cli(capsys, *argv) -> str:
    """`edgetune ARGV`'s stdout; it must exit 0."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def train_predict_export(tmp_path, capsys, bundle, data, files):
    """(predict's answers for `files`, in their order; an onnxruntime session of the
    exported model) after `train BUNDLE --data DATA` into tmp_path/profile."""
    profile = tmp_path / "profile"
    cli(capsys, "train", bundle, "--data", data, "--profile", profile, "--json")
    predicted = json.loads(cli(capsys, "predict", "--profile", profile, *files, "--json"))
    assert [r["path"] for r in predicted] == [str(f) for f in files]
    model = tmp_path / "personal.onnx"
    cli(capsys, "export", "--profile", profile, "-o", model)
    return predicted, ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def probabilities(session, feeds) -> object:
    """The exported model's probabilities (its first output if none is so named)."""
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return outputs.get("probabilities", next(iter(outputs.values())))
