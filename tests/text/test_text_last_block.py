"""`trainable="last:1"` on minilm-fp32: the base caches the input of the encoder's last
transformer block with the mask as one more column; the training graph runs that block
(rebuilt with static shapes), pooling, normalization and the head. Checked against
PyTorch running the model's own BertLayer (transformers) on real quotations: the cached
activations, the features, the loss and the gradient of every trained tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import text_data

from edgetune.bundle import Bundle
from edgetune.inputs import preparer_for
from edgetune.runtime.trainer import GraphTrainer, make_session

pytestmark = pytest.mark.skipif(text_data.skip_reason() is not None,
                                reason=str(text_data.skip_reason()))
LR = 10.0  # SGD: the update is LR x the gradient, large enough to read it back exactly


@pytest.fixture(scope="module")
def last_block_bundle(tmp_path_factory):
    import edgetune as et

    path = tmp_path_factory.mktemp("last1") / "m.edgetune"
    et.convert(base="minilm-fp32", head="softmax", classes=len(text_data.TOPICS),
               trainable="last:1", optimizer="sgd", lr=LR).save(path)
    return Bundle.load(path)


def test_cut_layout_and_what_trains(last_block_bundle):
    m = last_block_bundle.manifest
    assert m["features"]["shape"] == [128, 385] and m["features"]["layout"] == "tokens+mask"
    assert m["trainable"]["mode"] == "last" and m["trainable"]["blocks"] == 1
    trained = [p["name"] for p in m["params"]]
    assert "base/encoder.layer.5.attention.self.query.weight" in trained
    assert "base/encoder.layer.5.output.LayerNorm.weight" in trained
    assert not any("layer.4" in n for n in trained)
    import edgetune as et

    with pytest.raises(ValueError, match="needs base 'minilm-fp32'"):
        et.convert(base="minilm", head="softmax", classes=2, trainable="last:1")
    with pytest.raises(ValueError, match="last 1 to 5 transformer blocks"):
        et.convert(base="minilm-fp32", head="softmax", classes=2, trainable="last:6")


def test_one_step_matches_torch_bert_layer(last_block_bundle):
    import torch
    from transformers import AutoModel

    from edgetune.converter.text import model_folder

    bundle = last_block_bundle
    train, _ = text_data.split(seed=5)
    pairs = train[::5] + [(" ".join(["The court adjourned."] * 40), "law")]  # one truncated
    texts = [t for t, _ in pairs]
    labels = np.array([text_data.TOPICS.index(y) for _, y in pairs], np.int64)
    preparer = preparer_for(bundle.manifest["input"], files=bundle)
    rows = preparer.batch(texts)
    base_in, base_out = bundle.io("base")
    features = make_session(bundle.graph("base"), threads=2).run(
        [base_out["features"]], preparer.feeds(rows, base_in))[0]

    # torch: the model's own encoder up to block 5, then BertLayer 5
    model = AutoModel.from_pretrained(str(model_folder()), local_files_only=True,
                                      attn_implementation="eager").eval()
    ids, mask = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                       output_hidden_states=True).hidden_states[5]
    np.testing.assert_allclose(features[..., :384], hidden.numpy(), atol=2e-4)
    np.testing.assert_array_equal(features[..., 384], rows[:, 1])

    rng = np.random.default_rng(5)
    initial = bundle.initial_values()
    initial["head.weight"] = rng.normal(0, 0.5, initial["head.weight"].shape).astype(np.float32)
    layer = model.encoder.layer[5]
    params = {n: torch.nn.Parameter(t.detach().clone()) for n, t in layer.named_parameters()}
    weight = torch.tensor(initial["head.weight"], requires_grad=True)
    bias = torch.tensor(initial["head.bias"], requires_grad=True)
    extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    out = torch.func.functional_call(layer, params, (hidden, extended))
    out = out[0] if isinstance(out, tuple) else out
    m = mask[..., None].float()
    pooled = torch.nn.functional.normalize((out * m).sum(1) / m.sum(1), dim=1)
    loss = torch.nn.functional.cross_entropy(pooled @ weight.T + bias, torch.from_numpy(labels))
    loss.backward()

    # edgetune: one SGD step of the bundle's train graph; gradient = (before - after) / LR
    trainer = GraphTrainer(
        bundle.graph("train"), {p["train_input"]: initial[p["name"]] for p in bundle.params},
        {}, {p["train_input"]: p["train_output"] for p in bundle.params}, lr=LR, threads=2)
    ours = trainer.step(features, labels)
    assert abs(ours - loss.item()) < 1e-4, (ours, loss.item())
    checked = 0
    for p in bundle.params:
        grad = (initial[p["name"]] - trainer.values[p["train_input"]]) / LR
        name = p["name"].removeprefix("base/encoder.layer.5.")
        if name.startswith("head."):
            expected = (weight if name == "head.weight" else bias).grad.numpy()
        else:
            expected = params[name].grad.numpy()
            expected = expected.T if expected.ndim == 2 else expected  # MatMul stores W^T
        scale = np.abs(expected).max()
        assert scale > 0, name
        np.testing.assert_allclose(grad, expected, atol=2e-3 * scale, err_msg=name)
        checked += 1
    assert checked == len(bundle.params) == 12


def test_personalize_with_the_last_block(tmp_path):
    """The Personalizer on a last:1 bundle: prototypes (the mean of each text's token
    activations, prototypes.comparable) answer before training, fit() trains the block
    with the head, both classify held-out quotations well above chance (0.2)."""
    import edgetune as et
    from edgetune.runtime.personalizer import Personalizer

    bundle = tmp_path / "adam.edgetune"  # the defaults: Adam
    et.convert(base="minilm-fp32", head="softmax", classes=len(text_data.TOPICS),
               trainable="last:1").save(bundle)
    train, heldout = text_data.split(seed=3)
    heldout = heldout[::4]
    with Personalizer(bundle, tmp_path / "profile", threads=2) as p:
        p.add_samples([x for x, _ in train], [y for _, y in train])
        before = p.predict_many([x for x, _ in heldout], open_set=True)
        assert before[0]["source"] == "prototypes" and "distance" in before[0]
        first = p.predict_many([x for x, _ in heldout])
        start = p.bundle.initial_values()
        records = p.fit(epochs=10, lr=5e-3)
        after = p.predict_many([x for x, _ in heldout])
        query = "base/encoder.layer.5.attention.self.query.weight"
        moved = np.abs(p._values[query] - start[query]).max()
        model = p.export(tmp_path / "personal.onnx")  # token ids in, the trained block inside
        rows = p.preparer.batch([x for x, _ in heldout[:6]])
        session = make_session(model.read_bytes(), threads=2)
        exported = session.run(["probabilities"],
                               p.preparer.feeds(rows, p.bundle.io("base")[0]))[0]
    classes = json.loads(session.get_modelmeta().custom_metadata_map["edgetune.classes"])
    np.testing.assert_allclose(exported, [[r["scores"][c] for c in classes]
                                          for r in after[:6]], atol=1e-4)
    accuracy = [float(np.mean([a["label"] == y for a, (_, y) in zip(r, heldout)]))
                for r in (first, after)]
    print(f"last:1 prototypes {accuracy[0]:.3f}, after 10 epochs {accuracy[1]:.3f}, "
          f"the query weight moved {moved:.2e}")
    assert records[-1]["improved"]
    assert moved > 1e-3  # the block itself trained
    assert accuracy[0] >= 0.5 and accuracy[1] >= 0.5, accuracy
