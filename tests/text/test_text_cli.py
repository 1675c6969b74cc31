"""The CLI on labelled texts (Debian fortunes topics, text_data): train and eval from a
CSV or JSONL file (bad rows listed, --strict refuses them), predict --text and from
stdin, and the export with its tokenizer run by plain onnxruntime + tokenizers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import text_data

from edgetune.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from cli_helpers import EXE, run  # noqa: E402  (the CLI tests' in-process runner)

pytestmark = pytest.mark.skipif(text_data.skip_reason() is not None,
                                reason=str(text_data.skip_reason()))

MIN_ACCURACY = 0.6  # measured 0.78-0.82 (test_text_end_to_end); chance 0.2


def write_csv(path: Path, pairs, extra=()) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate([*pairs, *extra]):
            writer.writerow([i, text, label])
    return path


@pytest.fixture(scope="module")
def split():
    return text_data.split(seed=2)


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    """A profile trained from a CSV whose first row (line 2) has no text."""
    train, _ = split
    root = tmp_path_factory.mktemp("text-cli")
    data = write_csv(root / "train.csv", [("   ", "food")] + train)
    profile = root / "profile"
    code = main(["train", str(text_data.text_bundle()), "--data", str(data), "--profile",
                 str(profile), "--json"])
    assert code == 0
    return profile, data


def test_train_from_csv_lists_the_empty_row_and_a_rerun_adds_nothing(trained, split,
                                                                        capsys):
    profile, data = trained
    code, out, err = run(capsys, "train", text_data.text_bundle(), "--data", data,
                         "--profile", profile, "--epochs", "1", "--json")
    result = json.loads(out)
    assert result["samples_added"] == 0
    assert result["samples_skipped"] == len(split[0])
    assert result["counts"] == {t: text_data.PER_CLASS for t in text_data.TOPICS}
    assert [e["path"] for e in result["errors"]] == [f"{data}:2"]
    assert "skipped 1 row that cannot be read" in err and f"{data}:2: no text" in err


def test_train_from_jsonl_lists_bad_lines_and_strict_refuses(split, tmp_path, capsys):
    train, _ = split
    lines = [json.dumps({"text": t, "label": y}) for t, y in train]
    lines.insert(2, "{not json")
    lines.insert(6, json.dumps({"text": "no label here"}))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    profile = tmp_path / "profile"

    code, out, err = run(capsys, "train", text_data.text_bundle(), "--data", data,
                         "--profile", profile, "--strict", "--json")
    assert code == 1 and "2 of 42 rows cannot be read" in json.loads(out)["error"]

    code, out, err = run(capsys, "train", text_data.text_bundle(), "--data", data,
                         "--profile", profile, "--epochs", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["samples_added"] == len(train)
    assert [e["path"] for e in result["errors"]] == [f"{data}:3", f"{data}:7"]
    assert f"{data}:3: not a JSON object" in err and f"{data}:7: no label" in err


def test_csv_errors_name_the_file_and_column(tmp_path, capsys):
    data = tmp_path / "texts.csv"
    data.write_text("sentence,label\nhello there,greeting\n", encoding="utf-8")
    code, out, err = run(capsys, "train", text_data.text_bundle(), "--data", data,
                         "--profile", tmp_path / "p")
    assert code == 1
    assert f"{data} has no text column (its header: sentence, label)" in err

    from edgetune.cli.tabular import list_data
    from edgetune.errors import BadInputError
    from edgetune.inputs import preparer_for

    with pytest.raises(BadInputError, match="file of labelled texts is for text bundles"):
        list_data(preparer_for({"kind": "image"}), data)


def test_eval_from_csv(trained, split, tmp_path, capsys):
    profile, _ = trained
    _, heldout = split
    data = write_csv(tmp_path / "test.csv", heldout[::4])
    code, out, err = run(capsys, "eval", "--profile", profile, "--data", data, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == len(heldout[::4])
    assert result["accuracy"] >= MIN_ACCURACY
    assert set(result["per_class"]) == set(text_data.TOPICS)
    # the same texts as JSONL: the same answer
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                             for t, y in heldout[::4]), encoding="utf-8")
    code, out, err = run(capsys, "eval", "--profile", profile, "--data", jsonl, "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == result["accuracy"]
    assert json.loads(out)["n"] == result["n"]
    print(f"eval accuracy from CSV: {result['accuracy']:.3f} of {result['n']}")


def test_predict_text_and_stdin(trained, capsys):
    profile, _ = trained
    texts = ["The compiler crashed again and the debugger is no help.",
             "The jury found the defendant guilty and the judge set the sentence.",
             "The pitcher threw a fastball and the batter hit a home run."]
    code, out, err = run(capsys, "predict", "--profile", profile, "--text", texts[0],
                         "--text", texts[1], "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert [a["text"] for a in answers] == texts[:2]
    assert [a["label"] for a in answers] == ["computers", "law"]
    assert set(answers[0]["scores"]) == set(text_data.TOPICS)

    code, out, err = run(capsys, "predict", "--profile", profile, "--text", texts[2])
    assert code == 0 and out.strip().startswith(texts[2][:40]) and ": sports (" in out

    done = subprocess.run([str(EXE), "predict", "--profile", str(profile), "-", "--json"],
                          input="\n".join(texts) + "\n\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    piped = json.loads(done.stdout)
    assert [a["text"] for a in piped] == texts
    assert [a["label"] for a in piped] == ["computers", "law", "sports"]
    for a, b in zip(piped, answers):
        np.testing.assert_allclose([a["scores"][c] for c in text_data.TOPICS],
                                   [b["scores"][c] for c in text_data.TOPICS], atol=1e-5)

    code, out, err = run(capsys, "predict", "--profile", profile, "--open-set", "--text",
                         texts[0], "--json")
    assert code == 0, err
    assert {"text", "label", "scores", "unknown", "distance"} <= set(json.loads(out)[0])


def test_export_writes_the_tokenizer_and_plain_onnxruntime_reproduces_predict(
        trained, split, tmp_path, capsys):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    profile, _ = trained
    texts = [t for t, _ in split[1][::20]]
    model = tmp_path / "personal.onnx"
    code, out, err = run(capsys, "export", "--profile", profile, "-o", model, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokenizer"] == str(tmp_path / "personal.tokenizer.json")

    # what the README shows: tokenizers + onnxruntime, no edgetune
    tokenizer = Tokenizer.from_file(str(tmp_path / "personal.tokenizer.json"))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], np.int64)
    mask = np.array([e.attention_mask for e in encodings], np.int64)
    probabilities = session.run(["probabilities"],
                                {"input_ids": ids, "attention_mask": mask})[0]
    classes = json.loads(session.get_modelmeta().custom_metadata_map["edgetune.classes"])

    code, out, err = run(capsys, "predict", "--profile", profile, "--json",
                         *[a for t in texts for a in ("--text", t)])
    assert code == 0, err
    for row, answer in zip(probabilities, json.loads(out)):
        assert classes[int(np.argmax(row))] == answer["label"]
        np.testing.assert_allclose(row, [answer["scores"][c] for c in classes], atol=1e-4)


def test_convert_max_length_reaches_manifest_tokenizer_and_predict(split, tmp_path, capsys):
    """--max-length N: the base takes [n, N], the manifest and the tokenizer say N, the
    preparer pads to N, and a longer text is answered with "truncated": true."""
    from edgetune.bundle import Bundle
    from edgetune.inputs import preparer_for

    bundle_dir = tmp_path / "short.edgetune"
    code, out, err = run(capsys, "convert", "--base", "minilm", "--classes", "5",
                         "--max-length", "32", "-o", bundle_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["int8_base"] is None  # int8 by default is for image bases
    bundle = Bundle.load(bundle_dir)
    spec = bundle.manifest["input"]
    assert spec["max_length"] == 32 and spec["shape"] == [None, 32]
    assert json.loads(bundle.file("tokenizer.json"))["padding"]["strategy"] == {"Fixed": 32}
    preparer = preparer_for(spec, files=bundle)
    assert preparer.prepare("a short text").shape == (2, 32)

    train, heldout = split
    data = write_csv(tmp_path / "train.csv", train)
    profile = tmp_path / "profile"
    code, out, err = run(capsys, "train", bundle_dir, "--data", data, "--profile", profile,
                         "--epochs", "5", "--json")
    assert code == 0, err
    long = max((t for t, _ in heldout), key=len)  # 400 characters: more than 32 tokens
    with pytest.warns(UserWarning, match="has more than 32 tokens; only the first 32 are used"):
        code, out, err = run(capsys, "predict", "--profile", profile, "--text", long,
                             "--text", "Who won the match?", "--json")
    assert code == 0, err
    assert [a["truncated"] for a in json.loads(out)] == [True, False]

    code, out, err = run(capsys, "convert", "--base", "minilm", "--max-length", "4", "-o",
                         tmp_path / "bad.edgetune")
    assert code == 2 and "4 tokens is outside 8..512" in err
    code, out, err = run(capsys, "convert", "--base", "efficientnet-lite0", "--max-length",
                         "64", "-o", tmp_path / "bad.edgetune")
    assert code == 1 and "max_length is for text bases" in err
