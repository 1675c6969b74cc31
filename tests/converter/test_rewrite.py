"""The channel-major rewrite of a pointwise-conv head keeps every value: outputs,
gradients and trained parameters match the convolution form."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import trainer_for

from edgetune.autodiff import GraphBuilder
from edgetune.converter.losses import SoftmaxCrossEntropy
from edgetune.converter.optimizers import SGD, Adam
from edgetune.converter.rewrite import pointwise_head_as_gemm
from edgetune.converter.train_graph import build_training_graphs

TRAINED = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]


def tail_and_head(flatten: bool = True, stride: int = 1):
    """[N, 8, 4, 4] -> Conv 1x1 (8 -> 6) -> ReLU6 -> GlobalAveragePool -> linear 6 -> 3."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("features", np.float32, ["N", 8, 4, 4])

    def param(name, *shape, scale=0.5):
        return b.initializer(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    h = b.Conv(x, param("conv.weight", 6, 8, 1, 1), param("conv.bias", 6, scale=1.0),
               strides=[stride, stride])
    h = b.Clip(h, b.const(0.0), b.const(6.0))
    h = b.GlobalAveragePool(h)
    h = b.Flatten(h, axis=1) if flatten else b.Reshape(h, b.ints([-1, 6]))
    logits = b.Gemm(h, param("fc.weight", 3, 6), param("fc.bias", 3), transB=1)
    return b.model({"logits": logits})


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": x})[0]


@pytest.mark.parametrize("flatten", [True, False], ids=["flatten", "pool-layout"])
def test_the_rewrite_gives_the_same_outputs_without_a_convolution(flatten):
    model = tail_and_head(flatten)
    rewritten = pointwise_head_as_gemm(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Conv" not in ops and ops.count("Gemm") == 2, ops
    # the bias rides in the weight GEMM (a column of the weight against a row of ones)
    conv_gemm = next(n for n in rewritten.graph.node if n.op_type == "Gemm")
    assert len(conv_gemm.input) == 2 and "Pad" in ops and "Concat" in ops, ops
    x = (np.random.default_rng(1).standard_normal((5, 8, 4, 4)) * 3).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_a_strided_convolution_is_left_alone():
    model = tail_and_head(stride=2)
    assert pointwise_head_as_gemm(model) is model


@pytest.mark.parametrize("optimizer", [SGD(lr=0.05), Adam(lr=1e-2)], ids=["sgd", "adam"])
def test_training_the_rewritten_graph_matches_the_convolution(optimizer):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((48, 8, 4, 4)) * 3).astype(np.float32)
    y = rng.integers(0, 3, 48)
    finals = []
    for model in (tail_and_head(), pointwise_head_as_gemm(tail_and_head())):
        graphs = build_training_graphs(model, SoftmaxCrossEntropy(), optimizer,
                                       trainable=TRAINED)
        trainer = trainer_for(graphs, lr=optimizer.lr)
        for _ in range(3):
            trainer.epoch(x, y, batch_size=16)
        finals.append({p.name: trainer.values[p.train_input] for p in graphs.params})
    # the bias gradient is the last column of the weight gradient's GEMM, not a sum
    # over the [out, batch x pixels] output gradient
    producer = {o: n for n in graphs.train.graph.node for o in n.output}
    splits = [n for n in graphs.train.graph.node if n.op_type == "Split"]
    assert any(producer[n.input[0]].op_type == "Gemm" for n in splits), splits
    for name in TRAINED:
        assert not np.allclose(finals[0][name], tail_and_head_initial(name)), name
        np.testing.assert_allclose(finals[1][name], finals[0][name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def tail_and_head_initial(name: str) -> np.ndarray:
    from onnx import numpy_helper

    inits = {t.name: t for t in tail_and_head().graph.initializer}
    return numpy_helper.to_array(inits[name])
