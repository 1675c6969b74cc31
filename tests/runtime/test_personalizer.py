"""The personalization lifecycle through the public API, on real photos and the real
EfficientNet-Lite0 bundle: samples, instant answers, training, concurrency,
checkpoints, export, the CLI and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from edgetune.cli import main as cli
from edgetune.converter.convert import convert
from edgetune.errors import (
    BadInputError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
)
from edgetune.runtime.personalizer import Personalizer

NAMES = ["cat", "coffee", "astronaut", "rocket"]


@pytest.fixture(scope="module")
def bundle_path(edgetune_cache, tmp_path_factory):
    built = convert("efficientnet-lite0", "softmax", "adam", classes=2, lr=1e-3,
                    cache_dir=edgetune_cache)
    return built.save(tmp_path_factory.mktemp("bundle") / "default.edgetune")


@pytest.fixture
def person(bundle_path, tmp_path):
    p = Personalizer(bundle_path, profile=tmp_path / "profile", threads=1)
    yield p
    p.close()


def _named(labels):
    return [NAMES[i] for i in labels]


def _jpeg(image) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=92)
    return out.getvalue()


def test_samples_of_every_kind_persist_across_restarts(bundle_path, tmp_path, photos):
    images, labels = photos
    path = tmp_path / "mug.png"
    Image.fromarray(images[8]).save(path)
    p = Personalizer(bundle_path, profile=tmp_path / "me")
    p.add_sample(images[0], "cat")                       # HxWx3 uint8 array
    p.add_sample(Image.fromarray(images[1]), "cat")      # PIL image
    p.add_sample(path, "coffee")                          # a path
    p.add_sample(_jpeg(images[9]), "coffee")              # bytes
    ids = p.add_samples(list(images[16:20]), ["astronaut"] * 4)   # a batch
    assert p.counts() == {"cat": 2, "coffee": 2, "astronaut": 4}
    p.close()
    again = Personalizer(profile=tmp_path / "me")        # no bundle: the profile's copy
    assert again.counts() == {"cat": 2, "coffee": 2, "astronaut": 4}
    again.remove_sample(ids[0])
    again.rename_class("cat", "kitty")
    again.remove_class("coffee")
    assert again.counts() == {"kitty": 2, "astronaut": 3}
    again.close()
    assert Personalizer(profile=tmp_path / "me").counts() == {"kitty": 2, "astronaut": 3}


def test_prototypes_answer_from_the_first_sample_of_each_class(person, photos):
    images, labels = photos
    person.add_sample(images[0], "cat")
    assert person.predict(images[1]) == {"label": "cat", "source": "prototypes",
                                         "scores": {"cat": 1.0}}
    person.add_sample(images[8], "coffee")
    results = person.predict_many(list(images[:16]))
    assert all(r["source"] == "prototypes" for r in results)
    accuracy = np.mean([r["label"] == NAMES[y] for r, y in zip(results, labels[:16])])
    assert accuracy >= 0.9


def test_training_starts_from_the_class_means(person, photos):
    """Weight imprinting: before any update, the head already ranks like the prototypes."""
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    before = [r["label"] for r in person.predict_many(list(images))]
    history = person.fit(epochs=1)
    assert history[0]["loss"] < 0.5 * np.log(4)  # far below an uninformed head's ln(4)
    after = person.predict_many(list(images))
    assert all(r["source"] == "head" for r in after)
    assert [r["label"] for r in after] == before


def test_fit_reports_every_epoch_and_reaches_all_training_samples(person, photos):
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    seen = []
    history = person.fit(epochs=20, batch_size=8, callback=seen.append, early_stop=False)
    epochs = [r for r in history if "event" not in r]
    assert [r["epoch"] for r in epochs] == list(range(1, 21)) and seen == history
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert all(r["label"] == NAMES[y]
               for r, y in zip(person.predict_many(list(images)), labels))


@pytest.mark.parametrize("n,batch_size", [(1, None), (3, None), (5, 1), (7, 3)])
def test_any_number_of_samples_and_any_batch_size(person, photos, n, batch_size):
    images, labels = photos
    pick = [0, 8, 16, 24, 1, 9, 17][:n]
    person.add_samples([images[i] for i in pick], [NAMES[labels[i]] for i in pick])
    history = person.fit(epochs=3, batch_size=batch_size)
    assert all(np.isfinite(r["loss"]) for r in history if "loss" in r)
    assert person.predict(images[pick[0]])["label"] == NAMES[labels[pick[0]]]


def test_imbalanced_classes_are_weighted_equally(person, photos):
    images, labels = photos
    many = [i for i in range(len(labels)) if labels[i] in (0, 1)]
    person.add_samples([images[i] for i in many], _named(labels[many]))  # 8 cats, 8 coffees
    person.add_sample(images[16], "astronaut")                            # one astronaut
    person.fit(epochs=30, early_stop=False)
    result = person.predict(images[16])
    assert result["label"] == "astronaut" and result["scores"]["astronaut"] > 0.5


def test_training_stops_early_when_the_loss_plateaus(person, photos):
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    history = person.fit(epochs=500, patience=3, min_delta=0.05)
    assert history[-2]["event"] == "early_stop" and "converged" in history[-2]["message"]
    assert history[-2]["epoch"] < 500
    assert history[-1]["event"] == "kept" and history[-1]["improved"]


def test_a_diverging_learning_rate_rolls_back_and_says_so(person, photos):
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    person.fit(epochs=3)
    good = person.predict(images[0])
    with pytest.warns(RuntimeWarning, match="rolled back"):
        history = person.fit(epochs=5, lr=1e6, early_stop=False)
    rollbacks = [r for r in history if r.get("event") == "rollback"]
    assert rollbacks and "rolled back to the last good parameters" in rollbacks[0]["message"]
    assert rollbacks[-1]["lr"] < 1e6
    after = person.predict(images[0])
    assert all(np.isfinite(v) for v in after["scores"].values())
    assert after["label"] == good["label"]


def test_predictions_during_background_training_are_always_complete(person, photos):
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    feats = person.features(list(images[:4]))
    errors, results = [], []

    def reader():
        try:
            while person.is_training or len(results) < 50:
                for r in person.predict_features(feats):
                    results.append(r)
                    total = sum(r["scores"].values())
                    assert abs(total - 1.0) < 1e-4 and set(r["scores"]) == set(NAMES)
        except Exception as e:  # surfaced below
            errors.append(e)

    events = []
    person.start_training(epochs=40, callback=events.append, early_stop=False)
    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    assert person.wait_training(timeout=120)
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) >= 200 and results[-1]["source"] == "head"
    assert {r["source"] for r in results} <= {"prototypes", "head"}
    assert [e["epoch"] for e in events if "event" not in e]
    person.start_training(epochs=1000, early_stop=False)
    with pytest.raises(Exception, match="already running"):
        person.start_training(epochs=1)
    person.stop_training()
    assert not person.is_training


def test_a_class_added_after_training_is_predicted_at_once(person, photos):
    images, labels = photos
    first = [i for i in range(len(labels)) if labels[i] < 3]
    person.add_samples([images[i] for i in first], _named(labels[first]))
    person.fit(epochs=10)
    person.add_samples([images[24], images[25]], ["rocket", "rocket"])
    assert person.predict(images[26])["label"] == "rocket"
    person.fit(epochs=5)
    assert person.predict(images[27])["label"] == "rocket"


def test_checkpoints_survive_restarts_and_a_corrupt_one_falls_back(bundle_path, tmp_path,
                                                                   photos):
    images, labels = photos
    p = Personalizer(bundle_path, profile=tmp_path / "me")
    p.add_samples(list(images), _named(labels))
    p.fit(epochs=3, batch_size=8)    # fit() ends with a checkpoint: 3 epochs x 4 steps
    expected = p.predict(images[5])
    p.fit(epochs=2, batch_size=8)
    p.close()
    older, newest = sorted((tmp_path / "me" / "checkpoints").glob("ckpt-*.safetensors"))
    reopened = Personalizer(profile=tmp_path / "me")
    assert reopened.step == 5 * 4 and reopened.predict(images[5])["source"] == "head"
    reopened.close()
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged checkpoint"):
        fallback = Personalizer(profile=tmp_path / "me")
    assert fallback.step == 3 * 4
    np.testing.assert_allclose(list(fallback.predict(images[5])["scores"].values()),
                               list(expected["scores"].values()), rtol=1e-5)
    fallback.close()
    older.write_bytes(b"garbage")
    newest.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCheckpointError):
            Personalizer(profile=tmp_path / "me")


def test_a_checkpoint_from_another_bundle_is_refused(bundle_path, tmp_path, photos,
                                                     edgetune_cache):
    images, labels = photos
    p = Personalizer(bundle_path, profile=tmp_path / "me")
    p.add_samples(list(images[4:12]), _named(labels[4:12]))  # two classes: a fit can improve
    p.fit(epochs=1)
    p.close()
    other = convert("efficientnet-lite0", "softmax", "sgd", classes=2, cache_dir=edgetune_cache)
    other_path = other.save(tmp_path / "other.edgetune")
    with pytest.raises(Exception, match="another bundle"):
        Personalizer(other_path, profile=tmp_path / "me")
    q = Personalizer(other_path, profile=tmp_path / "fresh")
    q.close()
    ckpt = next((tmp_path / "me" / "checkpoints").glob("*.safetensors"))
    (tmp_path / "fresh" / "checkpoints").mkdir()
    (tmp_path / "fresh" / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
    with pytest.raises(IncompatibleCheckpointError, match="another bundle"):
        Personalizer(profile=tmp_path / "fresh")


def test_export_runs_with_onnxruntime_alone(person, photos, tmp_path):
    images, labels = photos
    person.add_samples(list(images), _named(labels))
    person.fit(epochs=5)
    path = person.export(tmp_path / "personal.onnx")
    probe = tmp_path / "image.npy"
    from edgetune.inputs.image import prepare

    np.save(probe, prepare(images[3], (224, 224))[None])
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r})\n"
        f"p = s.run(['probabilities'], {{'image': np.load({str(probe)!r})}})[0][0]\n"
        "meta = s.get_modelmeta().custom_metadata_map\n"
        "print(json.dumps({'p': p.tolist(), 'classes': json.loads(meta['edgetune.classes']),"
        " 'edgetune': any(m.startswith('edgetune') for m in sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    result = json.loads(out.stdout)
    assert result["classes"] == NAMES and not result["edgetune"]
    expected = person.predict(images[3])["scores"]
    np.testing.assert_allclose(result["p"], [expected[c] for c in NAMES], rtol=1e-4, atol=1e-6)
    import onnx

    onnx.checker.check_model(onnx.load(path), full_check=True)


def _image_folder(root, images, labels, fmt="JPEG"):
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.{fmt.lower()}", fmt)
    return root


def test_cli_train_eval_predict_export(bundle_path, tmp_path, photos, capsys):
    images, labels = photos
    data = _image_folder(tmp_path / "data", images[::2], labels[::2])
    (data / "cat" / "notes.txt").write_text("not an image")
    profile = str(tmp_path / "profile")
    with pytest.warns(UserWarning, match="notes.txt"):
        assert cli(["train", str(bundle_path), "--data", str(data), "--profile", profile,
                    "--epochs", "15", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["samples_added"] == 16 and trained["counts"] == dict.fromkeys(NAMES, 4)
    with pytest.warns(UserWarning):
        assert cli(["train", str(bundle_path), "--data", str(data), "--profile", profile,
                    "--epochs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples_added"] == 0  # already stored
    test = _image_folder(tmp_path / "test", images[1::2], labels[1::2])
    assert cli(["eval", "--profile", profile, "--data", str(test), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert {"accuracy", "n", "per_class"} <= set(evaluation) and evaluation["n"] == 16
    assert evaluation["accuracy"] >= 0.9
    one = sorted((test / "rocket").iterdir())[0]
    assert cli(["predict", "--profile", profile, str(one), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted[0]["path"] == str(one) and predicted[0]["label"] == "rocket"
    assert set(predicted[0]) == {"path", "label", "scores"}
    out = tmp_path / "personal.onnx"
    assert cli(["export", "--profile", profile, "-o", str(out)]) == 0
    assert out.stat().st_size > 1_000_000
    assert "wrote" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_and_loses_nothing(person, photos, tmp_path):
    images, labels = photos
    person.add_samples(list(images[:2]), ["cat", "cat"])
    before = person.counts()
    bad = [
        (images[0].astype(np.float32), "uint8"),
        (images[0][:, :, 0:2], "shape"),
        (np.zeros((12, 9, 3), np.uint8), "9x12; need at least 16x16"),
        (_jpeg(images[0])[:300], "truncated|not a readable image"),
        (b"", "empty|zero|no data"),
    ]
    for image, match in bad:
        with pytest.raises(BadInputError, match=match):
            person.add_sample(image, "cat")
    with pytest.raises(BadInputError):  # one bad image in a batch adds nothing
        person.add_samples([images[1], b"not an image"], ["cat", "cat"])
    for call in (lambda: person.remove_class("dog"), lambda: person.rename_class("dog", "x"),
                 lambda: person.add_sample(images[0], "")):
        with pytest.raises(BadInputError):
            call()
    assert person.counts() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="empty"):
        person.evaluate(empty)
    with pytest.raises(BadInputError, match="no samples"):
        Personalizer(person.bundle, profile=tmp_path / "new").fit(epochs=1)


def _read_idx(path):
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def test_fashion_mnist_heads_are_as_good_as_logistic_regression(bundle_path, tmp_path,
                                                                edgetune_cache):
    """10 classes x 20 samples: the head-only accuracy on 1000 test images is within 2
    points of scikit-learn's LogisticRegression on the same features (Adam at 1e-3);
    the svm and mlp heads at their defaults within 1 point."""
    from sklearn.linear_model import LogisticRegression

    root = "/usr/share/datasets/fashion-mnist"
    train_x, train_y = _read_idx(f"{root}/train-images-idx3-ubyte.gz"), _read_idx(
        f"{root}/train-labels-idx1-ubyte.gz")
    test_x, test_y = _read_idx(f"{root}/t10k-images-idx3-ubyte.gz")[:1000], _read_idx(
        f"{root}/t10k-labels-idx1-ubyte.gz")[:1000]
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(np.flatnonzero(train_y == c), 20, replace=False)
                           for c in range(10)])
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
             "bag", "boot"]
    p = Personalizer(bundle_path, profile=tmp_path / "fashion")
    p.add_samples(list(train_x[pick]), [names[c] for c in train_y[pick]])
    p.fit(epochs=100)
    test_features = p.features(list(test_x))
    ours = np.mean([r["label"] == names[y] for r, y in
                    zip(p.predict_features(test_features), test_y)])
    X, y = p.store.features_and_labels()
    reference = LogisticRegression(max_iter=2000).fit(X, y)
    order = [p.classes().index(n) for n in names]
    theirs = np.mean(np.asarray(order)[reference.predict(test_features)] == test_y)
    print(f"fashion-mnist 20/class: edgetune head {ours:.3f}, LogisticRegression {theirs:.3f}")
    assert ours >= theirs - 0.02
    # Every head at convert()'s defaults (issue 12; bench/head_accuracy.py), on the same
    # features: the svm head (squared hinge, L2, Adam 1e-3) and the mlp head.
    for head in ("svm", "mlp:128"):
        bundle = convert("efficientnet-lite0", head, classes=2, cache_dir=edgetune_cache)
        with Personalizer(bundle.save(tmp_path / f"{head[:3]}.edgetune"),
                          profile=tmp_path / head[:3], threads=1) as q:
            q.add_features(X, [p.classes()[c] for c in y])
            q.fit()
            acc = np.mean([r["label"] == names[t] for r, t in
                           zip(q.predict_features(test_features), test_y)])
        print(f"fashion-mnist 20/class: {head} head {acc:.3f}")
        assert acc >= theirs - 0.01, (head, acc, theirs)
    p.close()
