"""Choices by name (losses, heads, optimizers and their defaults) and what the manifest
says about the input and the class columns."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import tiny_base
from onnx import helper

from edgetune import defaults
from edgetune.autodiff import GraphBuilder
from edgetune.converter.convert import convert, resolve_head, resolve_optimizer
from edgetune.converter.heads import HEADS, MLP, LinearSVM, SoftmaxClassifier
from edgetune.converter.losses import (
    LOSSES,
    BinaryCrossEntropyWithLogits,
    MeanSquaredError,
    MultiClassHinge,
    SoftmaxCrossEntropy,
    resolve_loss,
)
from edgetune.converter.optimizers import SGD, Adam


def test_loss_names():
    assert set(LOSSES) >= {"cross-entropy", "hinge", "ovr-hinge", "mse", "bce"}
    assert isinstance(resolve_loss("cross-entropy"), SoftmaxCrossEntropy)
    assert isinstance(resolve_loss("softmax-cross-entropy"), SoftmaxCrossEntropy)
    assert isinstance(resolve_loss("cross_entropy"), SoftmaxCrossEntropy)
    assert isinstance(resolve_loss("hinge"), MultiClassHinge)
    assert isinstance(resolve_loss("mse"), MeanSquaredError)
    assert isinstance(resolve_loss("bce"), BinaryCrossEntropyWithLogits)
    loss = MultiClassHinge(margin=2.0)
    assert resolve_loss(loss) is loss and resolve_loss(None) is None
    with pytest.raises(ValueError, match="cross-entropy, hinge, ovr-hinge, mse, bce"):
        resolve_loss("focal")


def test_head_names():
    assert HEADS == {"softmax": SoftmaxClassifier, "svm": LinearSVM, "mlp": MLP}
    assert resolve_head("svm", 3) == LinearSVM(3)
    assert resolve_head("mlp:16", 3) == MLP(3, hidden=16)
    assert resolve_head(None, None) == SoftmaxClassifier(2)
    with pytest.raises(ValueError, match="softmax, mlp:HIDDEN, svm, HEAD.onnx"):
        resolve_head("forest", 3)
    for cls in HEADS.values():
        weight, bias = cls.output_params
        model, shapes = cls(3).build([5])
        assert shapes[weight] == ["classes", shapes[weight][1]] and shapes[bias] == ["classes"]


def test_optimizer_defaults():
    assert resolve_optimizer(None, None, None) == Adam(lr=defaults.LR)
    assert defaults.OPTIMIZER == "adam"
    assert resolve_optimizer(None, 0.05, None) == Adam(lr=0.05)
    # a head trains at the measured HEAD_LR; deeper training at the optimizer's own
    assert resolve_optimizer("sgd", None, None) == SGD(lr=defaults.HEAD_LR["sgd"])
    assert resolve_optimizer("sgd", None, None, "last:1") == SGD()
    assert resolve_optimizer("adam", None, None, "bias:1") == Adam()
    assert resolve_optimizer("sgd", 0.1, 0.01) == SGD(lr=0.1, weight_decay=0.01)
    # a head's own measured rates win over HEAD_LR for the optimizers it names
    assert resolve_optimizer("adam", None, None, "head", {"adam": 1e-3}) == Adam(lr=1e-3)
    assert resolve_optimizer("sgd", None, None, "head", {"adam": 1e-3}) == SGD(
        lr=defaults.HEAD_LR["sgd"])
    assert resolve_optimizer("adam", None, None, "last:1", {"adam": 1e-3}) == Adam()


def test_each_head_has_its_measured_defaults(tmp_path):
    """bench/head_accuracy.py: the svm head is the squared hinge with L2 0.03 under Adam
    at 1e-3, the mlp head Adam at 3e-3; what the user names wins; deeper training
    (last:K) gets no head L2."""
    base = tiny_base(tmp_path / "tiny.onnx")
    svm = convert(base, "svm").manifest
    assert svm["loss"] == MultiClassHinge(p=2).config()
    assert svm["optimizer"] == Adam(lr=1e-3).config() and svm["l2"] == 0.03
    assert convert(base, "svm", "sgd", l2=0.0, lr=0.2).manifest["l2"] == 0.0
    assert convert(base, "mlp:8").manifest["optimizer"] == Adam(lr=3e-3).config()
    assert convert(base, "mlp:8").manifest["l2"] == 0.0
    softmax = convert(base, "softmax").manifest
    assert softmax["optimizer"] == Adam(lr=defaults.HEAD_LR["adam"]).config()
    assert softmax["l2"] == 0.0


def test_convert_takes_a_loss_by_name_and_names_the_class_columns(tmp_path):
    base = tiny_base(tmp_path / "tiny.onnx")
    bundle = convert(base, SoftmaxClassifier(3), "adam", loss="hinge")
    manifest = bundle.manifest
    assert manifest["loss"]["name"] == "MultiClassHinge"
    assert manifest["optimizer"] == Adam(lr=defaults.HEAD_LR["adam"]).config()
    assert manifest["classes"] == {"dimension": "classes", "initial": 3,
                                   "weight": "head.weight", "bias": "head.bias"}
    params = {p["name"]: p for p in manifest["params"]}
    assert params["head.weight"]["shape"] == ["classes", 8]
    assert params["head.bias"]["shape"] == ["classes"]
    assert manifest["input"]["kind"] == "image"
    assert manifest["input"]["layout"] == "NHWC" and manifest["input"]["color"] == "RGB"

    mlp = convert(base, MLP(4, hidden=6), "sgd", loss="mse").manifest
    assert mlp["loss"]["name"] == "MeanSquaredError"
    assert (mlp["classes"]["weight"], mlp["classes"]["bias"]) == ("head.weight", "head.bias")
    assert {p["name"] for p in mlp["params"]} >= {"hidden.weight", "head.weight"}

    with pytest.raises(ValueError, match="cross-entropy, hinge, ovr-hinge, mse, bce"):
        convert(base, SoftmaxClassifier(3), "adam", loss="nope")


def test_class_columns_of_a_users_head(tmp_path):
    base = tiny_base(tmp_path / "tiny.onnx")
    b = GraphBuilder()
    x = b.input("emb", np.float32, ["N", 8])
    w = b.initializer("user.w", np.zeros((8, 3), np.float32))
    bias = b.initializer("user.b", np.zeros(3, np.float32))
    onnx.save(b.model({"scores": x @ w + bias}), tmp_path / "head.onnx")
    manifest = convert(base, str(tmp_path / "head.onnx"), "sgd", classes=3).manifest
    assert manifest["classes"]["weight"] == "user.w"
    assert manifest["classes"]["bias"] == "user.b"

    # A head whose last layer is not a product plus a constant: no class columns named.
    b = GraphBuilder()
    x = b.input("emb", np.float32, ["N", 8])
    w = b.initializer("user.w", np.zeros((8, 3), np.float32))
    onnx.save(b.model({"scores": b.Tanh(x @ w)}), tmp_path / "tanh.onnx")
    manifest = convert(base, str(tmp_path / "tanh.onnx"), "sgd", classes=3).manifest
    assert "weight" not in manifest["classes"] and "bias" not in manifest["classes"]


def test_a_tensor_input_is_kind_tensor(tmp_path):
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [6, 4],
                           rng.standard_normal(24).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["emb"])], "tensor_base",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("emb", onnx.TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "t.onnx")
    manifest = convert(tmp_path / "t.onnx", SoftmaxClassifier(2)).manifest
    assert manifest["input"] == {"kind": "tensor", "name": "x", "dtype": "float32",
                                 "shape": [None, 6], "layout": None, "color": None}
    assert manifest["features"]["shape"] == [4]
