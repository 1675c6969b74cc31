"""Concurrency: 10,000 predictions from 4 threads while training runs in the background,
a class is added and checkpoints are saved: no exception, and every answer is the
infer graph's exact output for ONE parameter set the Personalizer published (never a
mix of two), as is every checkpoint saved meanwhile.

Internal access (`_publish`, `_snapshot`, `_infer`) is deliberate: it is how the test
knows every parameter set that readers could have seen."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import photo_crops, tiny_base

from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Adam
from edgetune.runtime.checkpoint import load_checkpoint
from edgetune.runtime.personalizer import Personalizer

SIZE = 16
THREADS = 4
CALLS = 10_000  # predict calls in all, each on a batch of 3 images
NAMES = ["cat", "coffee", "rocket", "horse"]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return convert(tiny_base(root / "tiny.onnx", size=SIZE), SoftmaxClassifier(2),
                   Adam(lr=0.01)).save(root / "t.edgetune")


def test_predictions_during_training_each_come_from_one_published_parameter_set(
        bundle_path, tmp_path):
    images, labels = photo_crops(per_class=6, size=SIZE,
                                 classes=("chelsea", "coffee", "rocket", "horse"))
    first = labels < 3
    p = Personalizer(bundle_path, profile=tmp_path / "p", threads=1, min_image_size=SIZE)
    p.add_samples(list(images[first]), [NAMES[y] for y in labels[first]])
    p.fit(epochs=1)  # from now on the head answers

    published = [p._snapshot]
    publish = p._publish

    def recording_publish():
        publish()
        published.append(p._snapshot)

    p._publish = recording_publish

    probe = list(images[[0, 6, 12]])
    probe_features = p.features(probe)
    answers: list[list[dict]] = []
    saved: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 2)

    def reader(index: int):
        try:
            start.wait()
            for call in range(CALLS // THREADS):
                if call % 4 == index % 4:  # a quarter through the base model as well
                    answers.append(p.predict_many(probe))
                else:
                    answers.append(p.predict_features(probe_features))
        except BaseException as e:  # noqa: B036 - surfaced below
            errors.append(e)

    def writer():
        """Adds a fourth class mid-way and saves checkpoints while training runs."""
        try:
            start.wait()
            while len(answers) < CALLS // 3:
                time.sleep(0.005)
            p.add_samples(list(images[~first]), [NAMES[3]] * int((~first).sum()))
            while len(answers) < CALLS * 9 // 10:
                saved.append(load_checkpoint(p.save())[0])
                time.sleep(0.02)
        except BaseException as e:  # noqa: B036
            errors.append(e)

    events: list[dict] = []
    p.start_training(epochs=1_000_000, batch_size=4, early_stop=False, callback=events.append)
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(THREADS)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join(300)
    p.stop_training(timeout=60)
    assert not errors, errors
    assert p.last_error is None and not p.is_training
    assert len(answers) == CALLS

    # The infer graph's output for every published parameter set, keyed by its bytes.
    infer_in, infer_out = p._infer_io
    outputs: dict[tuple, int] = {}
    for i, snap in enumerate(published):
        probs = p._sessions.infer().run([infer_out["probabilities"]],
                             {infer_in["features"]: probe_features, **snap.params})[0]
        outputs.setdefault((snap.classes, probs.astype(np.float32).tobytes()), i)

    # The check can tell a mix apart: weights of one set with the bias of the next match
    # no published set.
    weight, bias = (s["infer_input"] for s in p.bundle.params)
    mixes = 0
    for a, b in zip(published[-40:-1], published[-39:]):
        if a.classes == b.classes and not np.array_equal(a.params[bias], b.params[bias]):
            mixed = p._sessions.infer().run([infer_out["probabilities"]], {
                infer_in["features"]: probe_features, weight: a.params[weight],
                bias: b.params[bias]})[0]
            assert (a.classes, mixed.astype(np.float32).tobytes()) not in outputs
            mixes += 1
    assert mixes > 0

    used = set()
    for answer in answers:
        classes = tuple(answer[0]["scores"])
        assert all(tuple(r["scores"]) == classes for r in answer)
        scores = np.array([[r["scores"][c] for c in classes] for r in answer], np.float32)
        key = (classes, scores.tobytes())
        assert key in outputs, "an answer matches no published parameter set"
        used.add(outputs[key])
        assert [r["label"] for r in answer] == [classes[i] for i in scores.argmax(axis=1)]
    # Training really ran under the readers, and the new class reached them.
    assert len(used) >= 10, f"answers came from only {len(used)} parameter sets"
    widths = {len(answer[0]["scores"]) for answer in answers}
    assert widths == {3, 4}
    assert sum(1 for e in events if "loss" in e) >= 10

    # Each checkpoint saved during training holds one published parameter set.
    names = {s["train_input"]: s["infer_input"] for s in p.bundle.params}
    assert saved
    for tensors in saved:
        assert any(all(np.array_equal(tensors[t], snap.params[i]) for t, i in names.items())
                   for snap in published), "a checkpoint mixes two parameter sets"
    print(f"{len(answers)} predict calls ({3 * len(answers)} predictions) from {THREADS} "
          f"threads: {len(published)} parameter sets published, {len(used)} seen by readers, "
          f"{sum(1 for e in events if 'loss' in e)} epochs, {len(saved)} checkpoints saved")
    p.close()
