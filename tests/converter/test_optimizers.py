"""Each optimizer and loss against PyTorch: same init, same data, same steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import trainer_for

from edgetune.converter.heads import MLP, SoftmaxClassifier
from edgetune.converter.losses import (
    BinaryCrossEntropyWithLogits,
    MeanSquaredError,
    MultiClassHinge,
    OneVsRestHinge,
    SoftmaxCrossEntropy,
)
from edgetune.converter.optimizers import SGD, Adam, AdamW, Momentum
from edgetune.converter.train_graph import build_training_graphs

OPTIMIZERS = [
    ("sgd", SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    ("sgd-wd", SGD(lr=0.1, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01)),
    ("momentum", Momentum(lr=0.05, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("nesterov", Momentum(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("adam", Adam(lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    ("adam-l2", Adam(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01),
     lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ("adamw", AdamW(lr=1e-2, weight_decay=0.05),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05)),
    ("sgd-clip", SGD(lr=0.5, clip_norm=0.5), lambda p: torch.optim.SGD(p, lr=0.5)),
    # eps 1e-6: clipping shrinks the near-zero gradients of pixels that are almost always
    # 0 in digits (0.06% of samples), where m / (sqrt(v) + 1e-8) amplifies float32 noise.
    ("adam-clip", Adam(lr=1e-2, eps=1e-6, clip_norm=0.1),
     lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-6)),
]


def _torch_mlp(params, x):
    h = torch.relu(x @ params["hidden.weight"].T + params["hidden.bias"])
    return h @ params["head.weight"].T + params["head.bias"]


def _batches(n, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, batch, replace=False) for _ in range(steps)]


@pytest.mark.parametrize("name,ours,theirs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_matches_torch_for_50_steps(digits, name, ours, theirs):
    x, y = digits
    head, shapes = MLP(classes=10, hidden=32, seed=1, residual=False).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), ours, param_shapes=shapes)
    trainer = trainer_for(graphs, lr=ours.lr)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in graphs.initial.items()}
    opt = theirs(list(tparams.values()))
    for idx in _batches(len(x), 16, 50):
        loss = trainer.step(x[idx], y[idx])
        opt.zero_grad()
        tloss = F.cross_entropy(_torch_mlp(tparams, torch.tensor(x[idx])), torch.tensor(y[idx]))
        tloss.backward()
        if ours.clip_norm:
            torch.nn.utils.clip_grad_norm_(list(tparams.values()), ours.clip_norm)
        opt.step()
        assert abs(loss - tloss.item()) <= 1e-5 * max(1.0, abs(tloss.item()))
    for p in graphs.params:
        got, want = trainer.values[p.train_input], tparams[p.name].detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=p.name)


def _torch_rows_ce(logits, labels, class_weights=None, smoothing=0.0):
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=smoothing,
                           reduction="none")


CLASS_WEIGHTS = [1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 0.7, 1.0, 3.0, 1.0]
LOSSES = [
    ("ce", SoftmaxCrossEntropy(), lambda z, t: F.cross_entropy(z, t)),
    ("ce-smooth", SoftmaxCrossEntropy(label_smoothing=0.1),
     lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)),
    ("ce-class-weights", SoftmaxCrossEntropy(class_weights=CLASS_WEIGHTS),
     lambda z, t: F.cross_entropy(z, t, weight=torch.tensor(CLASS_WEIGHTS))),
    ("ce-weights-smooth", SoftmaxCrossEntropy(class_weights=CLASS_WEIGHTS, label_smoothing=0.2),
     lambda z, t: F.cross_entropy(z, t, weight=torch.tensor(CLASS_WEIGHTS), label_smoothing=0.2)),
    ("hinge", MultiClassHinge(), lambda z, t: F.multi_margin_loss(z, t)),
    ("hinge-margin", MultiClassHinge(margin=0.5), lambda z, t: F.multi_margin_loss(z, t,
                                                                                   margin=0.5)),
    ("hinge-squared", MultiClassHinge(p=2), lambda z, t: F.multi_margin_loss(z, t, p=2)),
    # LinearSVC's loss: each class a binary SVM with targets +1 / -1
    ("ovr-hinge", OneVsRestHinge(),
     lambda z, t: (F.relu(1 - (2 * F.one_hot(t, 10) - 1) * z) ** 2).sum(1).mean()),
    ("ovr-hinge-p1", OneVsRestHinge(margin=0.5, p=1),
     lambda z, t: F.relu(0.5 - (2 * F.one_hot(t, 10) - 1) * z).sum(1).mean()),
    ("mse", MeanSquaredError(), lambda z, t: F.mse_loss(z, F.one_hot(t, 10).float())),
    ("bce", BinaryCrossEntropyWithLogits(),
     lambda z, t: F.binary_cross_entropy_with_logits(z, F.one_hot(t, 10).float())),
]


@pytest.mark.parametrize("name,loss,torch_loss", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_and_its_gradient_match_torch(digits, name, loss, torch_loss):
    """One SGD step with lr=1 moves the parameters by exactly minus the gradient."""
    x, y = digits[0][:48], digits[1][:48]
    head, shapes = SoftmaxClassifier(classes=10).build([64])
    init = {"head.weight": np.random.default_rng(3).standard_normal((10, 64)).astype(np.float32)
            * 0.3, "head.bias": np.linspace(-1, 1, 10).astype(np.float32)}
    graphs = build_training_graphs(head, loss, SGD(lr=1.0), param_shapes=shapes)
    trainer = trainer_for(graphs, lr=1.0, params=init)
    value = trainer.step(x, y)
    w = torch.tensor(init["head.weight"], requires_grad=True)
    b = torch.tensor(init["head.bias"], requires_grad=True)
    expected = torch_loss(torch.tensor(x) @ w.T + b, torch.tensor(y))
    expected.backward()
    assert value == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(init["head.weight"] - trainer.values["head.weight"],
                               w.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(init["head.bias"] - trainer.values["head.bias"],
                               b.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(class_weights=CLASS_WEIGHTS,
                                                      label_smoothing=0.1), MultiClassHinge(),
                                  OneVsRestHinge(),
                                  MeanSquaredError(), BinaryCrossEntropyWithLogits()],
                         ids=lambda loss: type(loss).__name__)
def test_zero_sample_weight_masks_a_row(digits, loss):
    """Rows with weight 0 change neither the loss nor the update; others are weighted."""
    x, y = digits[0][:20], digits[1][:20]
    head, shapes = SoftmaxClassifier(classes=10).build([64])
    graphs = build_training_graphs(head, loss, SGD(lr=0.5), param_shapes=shapes)
    weights = np.ones(20, np.float32)
    weights[::3] = 0.0
    masked, subset = trainer_for(graphs, lr=0.5), trainer_for(graphs, lr=0.5)
    for _ in range(3):
        assert masked.step(x, y, weights) == pytest.approx(subset.step(x[weights > 0],
                                                                       y[weights > 0]), rel=1e-5)
    np.testing.assert_allclose(masked.values["head.weight"], subset.values["head.weight"],
                               rtol=1e-5, atol=1e-7)


def test_sample_weights_match_a_weighted_torch_mean(digits):
    x, y = digits[0][:30], digits[1][:30]
    weights = np.random.default_rng(0).uniform(0, 2, 30).astype(np.float32)
    head, shapes = SoftmaxClassifier(classes=10).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(label_smoothing=0.05), SGD(lr=1.0),
                                   param_shapes=shapes)
    init = {"head.weight": np.full((10, 64), 0.01, np.float32),
            "head.bias": np.arange(10, dtype=np.float32) / 10}
    value = trainer_for(graphs, lr=1.0, params=init).step(x, y, weights)
    logits = torch.tensor(x) @ torch.tensor(init["head.weight"]).T + torch.tensor(
        init["head.bias"])
    rows = _torch_rows_ce(logits, torch.tensor(y), smoothing=0.05)
    expected = (rows * torch.tensor(weights)).sum() / weights.sum()
    assert value == pytest.approx(expected.item(), rel=1e-5)


def test_l2_regularization_matches_torch_weight_decay(digits):
    x, y = digits
    head, shapes = MLP(classes=10, hidden=16, residual=False).build([64])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=0.1), l2=0.01,
                                   param_shapes=shapes)
    trainer = trainer_for(graphs, lr=0.1)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in graphs.initial.items()}
    opt = torch.optim.SGD(list(tparams.values()), lr=0.1, weight_decay=0.01)
    for idx in _batches(len(x), 32, 20):
        trainer.step(x[idx], y[idx])
        opt.zero_grad()
        F.cross_entropy(_torch_mlp(tparams, torch.tensor(x[idx])), torch.tensor(y[idx])).backward()
        opt.step()
    for name, value in tparams.items():
        np.testing.assert_allclose(trainer.values[name], value.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
