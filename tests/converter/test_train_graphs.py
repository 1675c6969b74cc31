"""Fused training graphs on stock onnxruntime: they train, the epoch Scan equals
repeated single steps, one graph serves any class count, and every graph checks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import shuffled_epochs, trainer_for

from edgetune.autodiff import GraphBuilder
from edgetune.converter.heads import MLP, LinearSVM, SoftmaxClassifier
from edgetune.converter.losses import SoftmaxCrossEntropy
from edgetune.converter.optimizers import SGD, Adam, AdamW, Momentum
from edgetune.converter.train_graph import build_training_graphs
from edgetune.runtime.trainer import GraphTrainer


def conv_block_head(classes: int, channels: int = 4, width: int = 16):
    """Depthwise conv + BatchNorm + ReLU6 + pointwise conv + pooling + linear."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("features", np.float32, ["N", channels, 8, 8])

    def param(name, *shape, scale=0.3):
        return b.initializer(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    h = b.Conv(x, param("dw.weight", channels, 1, 3, 3), param("dw.bias", channels),
               group=channels, pads=[1, 1, 1, 1])
    h = b.BatchNormalization(h, b.initializer("bn.scale", np.ones(channels, np.float32)),
                             b.initializer("bn.bias", np.zeros(channels, np.float32)),
                             b.initializer("bn.mean", np.full(channels, 0.1, np.float32)),
                             b.initializer("bn.var", np.full(channels, 0.5, np.float32)))
    h = b.Clip(h, b.const(0.0), b.const(6.0))
    h = b.Conv(h, param("pw.weight", width, channels, 1, 1), param("pw.bias", width))
    h = b.Relu(h)
    h = b.MaxPool(h, kernel_shape=[2, 2], strides=[2, 2])
    h = b.Flatten(b.AveragePool(h, kernel_shape=[2, 2], strides=[2, 2]), axis=1)
    logits = b.Gemm(h, param("fc.weight", width * 4, classes, scale=0.1),
                    param("fc.bias", classes, scale=0))
    trainable = ["dw.weight", "dw.bias", "bn.scale", "bn.bias", "pw.weight", "pw.bias",
                 "fc.weight", "fc.bias"]
    return b.model({"logits": logits}), trainable


def image_features(digits, channels=4):
    """Digits as [N, C, 8, 8] maps: the real image through a fixed random 1x1 projection."""
    x, y = digits
    images = x.reshape(-1, 1, 8, 8)
    scale = np.linspace(0.5, 2.0, channels, dtype=np.float32).reshape(1, -1, 1, 1)
    return (images * scale - 0.3).astype(np.float32), y


def _check(model: onnx.ModelProto):
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    assert model.ir_version <= 10
    assert {o.domain for o in model.opset_import} == {""}
    assert all(n.domain == "" for n in model.graph.node)


def _accuracy(graphs, trainer, x, y):
    session = ort.InferenceSession(graphs.infer.SerializeToString())
    feeds = {"features": x, **{p.infer_input: trainer.values[p.train_input]
                               for p in graphs.params}}
    return float((session.run(["probabilities"], feeds)[0].argmax(1) == y).mean())


def test_mlp_head_trains_on_real_digits(digits):
    x, y = digits
    head, shapes = MLP(classes=10, hidden=64).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), Adam(lr=3e-3),
                                   param_shapes=shapes)
    trainer = trainer_for(graphs, lr=3e-3)
    epoch_losses = shuffled_epochs(trainer, x, y, epochs=15, batch_size=32)
    assert all(b < a for a, b in zip(epoch_losses[:5], epoch_losses[1:6]))
    assert epoch_losses[-1] < 0.2 * epoch_losses[0]
    assert _accuracy(graphs, trainer, x, y) > 0.97


def test_conv_block_trains_and_updates_every_parameter(digits):
    x, y = image_features(digits)
    head, trainable = conv_block_head(10)
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), Adam(lr=0.02),
                                   trainable=trainable)
    for model in (graphs.train, graphs.train_epoch, graphs.infer):
        _check(model)
    trainer = trainer_for(graphs, lr=0.02)
    losses = shuffled_epochs(trainer, x, y, epochs=8, batch_size=32)
    assert losses[-1] < 0.5 * losses[0], losses
    assert _accuracy(graphs, trainer, x, y) > 0.7
    for p in graphs.params:
        assert not np.allclose(trainer.values[p.train_input], graphs.initial[p.name]), p.name
    # frozen statistics stay constants of the graph
    assert {"bn.mean", "bn.var"} <= {t.name.rsplit("/", 1)[-1]
                                     for t in graphs.train.graph.initializer}


# Each kind takes another path through the epoch graph: targets and loss values
# outside the loop (mlp, conv with a static class count), plain SGD's lr folded into
# the targets (sgd), the loss inside the loop (l2), no closed form (hinge, weighted).
@pytest.mark.parametrize("kind", ["mlp", "conv", "sgd", "l2", "hinge", "weighted"])
def test_epoch_graph_equals_repeated_single_steps(digits, kind):
    x, y = digits
    if kind == "mlp":
        head, shapes = MLP(classes=10, hidden=16).build([64])
        graphs = build_training_graphs(head, SoftmaxCrossEntropy(label_smoothing=0.1),
                                       AdamW(lr=1e-2), param_shapes=shapes)
    elif kind in ("sgd", "l2"):
        head, shapes = SoftmaxClassifier(classes=10).build([64])
        graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=1e-2),
                                       param_shapes=shapes, l2=1e-2 if kind == "l2" else 0.0)
    elif kind == "hinge":
        head, shapes = LinearSVM(classes=10).build([64])
        graphs = build_training_graphs(head, LinearSVM().default_loss(),
                                       Momentum(lr=1e-2, nesterov=True), param_shapes=shapes)
    elif kind == "weighted":
        head, shapes = SoftmaxClassifier(classes=10).build([64])
        graphs = build_training_graphs(head, SoftmaxCrossEntropy(class_weights=[1.0, 2.0] * 5),
                                       Adam(lr=1e-2, clip_norm=0.5), param_shapes=shapes)
    else:
        x, y = image_features(digits)
        head, trainable = conv_block_head(10)
        graphs = build_training_graphs(head, SoftmaxCrossEntropy(), Adam(lr=1e-2),
                                       trainable=trainable)
    x, y = x[:100], y[:100]  # 7 batches of 16: the last one has 4 rows
    weights = np.where(np.arange(100) % 7 == 0, 0.0, 1.0).astype(np.float32)
    looped, stepped = trainer_for(graphs, lr=1e-2), trainer_for(graphs, lr=1e-2)
    for _ in range(2):
        losses = looped.epoch(x, y, weights, batch_size=16)
        expected = [stepped.step(x[i:i + 16], y[i:i + 16], weights[i:i + 16])
                    for i in range(0, 100, 16)]
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert looped.step_count == stepped.step_count == 14
    for name in looped.values:
        np.testing.assert_allclose(looped.values[name], stepped.values[name], rtol=1e-5,
                                   atol=1e-7, err_msg=name)


def test_one_graph_serves_any_number_of_classes(digits):
    x, y = digits
    head, shapes = SoftmaxClassifier(classes=3).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=0.5), param_shapes=shapes)
    assert graphs.params[0].shape == ["classes", 64]
    for classes in (2, 5, 10):
        keep = y < classes
        init = {"head.weight": np.zeros((classes, 64), np.float32),
                "head.bias": np.zeros(classes, np.float32)}
        trainer = trainer_for(graphs, lr=0.5, params=init)
        losses = [trainer.epoch(x[keep], y[keep], batch_size=64).mean() for _ in range(5)]
        assert losses[-1] < losses[0]
        assert trainer.values["head.weight"].shape == (classes, 64)
        assert _accuracy(graphs, trainer, x[keep], y[keep]) > 0.9


@pytest.mark.parametrize("head_cls", [SoftmaxClassifier, LinearSVM, MLP])
@pytest.mark.parametrize("optimizer", [SGD(), Momentum(nesterov=True), Adam(clip_norm=1.0),
                                       AdamW()], ids=lambda o: type(o).__name__)
def test_every_graph_passes_the_checker_and_loads(head_cls, optimizer):
    head = head_cls(classes=4)
    model, shapes = head.build([32])
    graphs = build_training_graphs(model, head.default_loss(), optimizer, l2=1e-4,
                                   param_shapes=shapes)
    for m in (graphs.train, graphs.train_epoch, graphs.infer):
        _check(m)
        ort.InferenceSession(m.SerializeToString())
    # The step graph has one state input per (parameter, slot) and their outputs.
    names = [i.name for i in graphs.train.graph.input]
    assert names[:5] == ["features", "labels", "sample_weight", "lr", "step"]
    assert len(names) == 5 + len(graphs.params) * (1 + len(optimizer.slots))


def test_frozen_parameters_stay_constants(digits):
    head, shapes = MLP(classes=10, hidden=16, residual=False).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=0.1),
                                   trainable=["head.weight", "head.bias"], param_shapes=shapes)
    assert [p.name for p in graphs.params] == ["head.weight", "head.bias"]
    ops = [n.op_type for n in graphs.train.graph.node]
    # Backward through the frozen hidden layer is pruned: one Gemm for the forward
    # hidden layer, one forward and two backward for the head.
    assert ops.count("Gemm") == 3, ops


def test_unknown_trainable_name_lists_candidates():
    head, _ = MLP(classes=3, hidden=4).build([8])
    with pytest.raises(ValueError, match="hidden.weight"):
        build_training_graphs(head, SoftmaxCrossEntropy(), SGD(), trainable=["nope"])


def test_an_older_epoch_graph_is_left_for_single_steps():
    """Bundles from before the Scan layout have a flat epoch graph with a batch_size
    input: the trainer does not feed it the new layout, it steps through `train`."""
    head, shapes = SoftmaxClassifier(classes=10).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=0.1),
                                   param_shapes=shapes)
    b = GraphBuilder()
    b.input("batch_size", np.int64, [])
    older = b.model({"losses": b.Identity(b.input("lr", np.float32, []))})
    trainer = trainer_for(graphs, lr=0.1)
    legacy = GraphTrainer(graphs.train.SerializeToString(), trainer.values, None,
                          {p.train_input: p.train_output for p in graphs.params},
                          epoch=older.SerializeToString(), lr=0.1)
    assert trainer.has_epoch_graph and not legacy.has_epoch_graph
