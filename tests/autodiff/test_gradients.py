"""Every gradient rule against PyTorch autograd, from one table of cases.

Each case is one ONNX node with random inputs; the batch dimension "N" is symbolic in
the graph and each graph runs with batch sizes 1 and 3. The gradient graph (float32,
stock onnxruntime) must match torch float64 autograd within 1e-5 relative.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from edgetune.autodiff import RULES, GraphBuilder, UnsupportedOpError, gradients
from edgetune.autodiff.traversal import infer_forward_shapes


@dataclass
class In:
    """A differentiable float input; 'N' in the shape is the symbolic batch."""

    shape: tuple
    positive: bool = False


@dataclass
class Const:
    """A constant (initializer) input, not differentiated."""

    value: object
    dtype: type = np.float32


@dataclass
class Case:
    id: str
    op: str
    inputs: list
    torch_fn: object
    attrs: dict = field(default_factory=dict)


def gemm(alpha=1.0, beta=1.0, ta=0, tb=0):
    return lambda a, b, c: alpha * (a.T if ta else a) @ (b.T if tb else b) + beta * c


def bn(eps=1e-5):
    return lambda x, s, b, m, v: F.batch_norm(x, m, v, s, b, training=False, eps=eps)


MEAN3, VAR3 = [0.1, -0.2, 0.3], [0.5, 1.5, 2.0]
X4 = ("N", 3, 8, 8)

CASES = [
    # broadcasting arithmetic
    Case("add-same", "Add", [In(("N", 4)), In(("N", 4))], torch.add),
    Case("add-row", "Add", [In(("N", 4)), In((4,))], torch.add),
    Case("add-scalar", "Add", [In(("N", 4)), In(())], torch.add),
    Case("add-both-ways", "Add", [In(("N", 1, 3)), In((5, 1))], torch.add),
    Case("add-channel", "Add", [In(X4), In((1, 3, 1, 1))], torch.add),
    Case("sub-col", "Sub", [In(("N", 1)), In(("N", 4))], torch.sub),
    Case("sub-row", "Sub", [In(("N", 4)), In((1, 4))], torch.sub),
    Case("mul-same", "Mul", [In(("N", 3)), In(("N", 3))], torch.mul),
    Case("mul-rank3", "Mul", [In(("N", 2, 3)), In((3,))], torch.mul),
    Case("mul-outer", "Mul", [In(("N", 3, 1)), In((1, 4))], torch.mul),
    Case("div-row", "Div", [In(("N", 3)), In((3,), positive=True)], torch.div),
    Case("div-scalar-num", "Div", [In(()), In(("N", 3), positive=True)], torch.div),
    Case("sum3", "Sum", [In(("N", 3)), In((3,)), In(("N", 1))], lambda a, b, c: a + b + c),
    Case("neg", "Neg", [In(("N", 5))], torch.neg),
    Case("pow2", "Pow", [In(("N", 4)), Const(2.0)], lambda x, p: x**2),
    Case("pow3", "Pow", [In(("N", 4)), Const(3.0)], lambda x, p: x**3),
    Case("pow-half", "Pow", [In(("N", 4), positive=True), Const(0.5)], lambda x, p: x**0.5),
    Case("where", "Where", [Const([True, False, True], np.bool_), In(("N", 3)), In((3,))],
         lambda c, a, b: torch.where(c.bool(), a, b)),
    # elementwise functions
    Case("abs", "Abs", [In(("N", 5))], torch.abs),
    Case("exp", "Exp", [In(("N", 5))], torch.exp),
    Case("log", "Log", [In(("N", 5), positive=True)], torch.log),
    Case("sqrt", "Sqrt", [In(("N", 5), positive=True)], torch.sqrt),
    Case("reciprocal", "Reciprocal", [In(("N", 5), positive=True)], torch.reciprocal),
    Case("erf", "Erf", [In(("N", 5))], torch.erf),
    Case("tanh", "Tanh", [In(("N", 5))], torch.tanh),
    Case("sigmoid", "Sigmoid", [In(("N", 5))], torch.sigmoid),
    Case("relu", "Relu", [In(X4)], torch.relu),
    Case("leaky-relu", "LeakyRelu", [In(("N", 7))], lambda x: F.leaky_relu(x, 0.1),
         {"alpha": 0.1}),
    Case("relu6", "Clip", [In(("N", 9)), Const(0.0), Const(6.0)],
         lambda x, lo, hi: torch.clamp(x, 0, 6)),
    Case("clip-both", "Clip", [In(("N", 9)), Const(-0.5), Const(1.0)],
         lambda x, lo, hi: torch.clamp(x, -0.5, 1.0)),
    Case("clip-min", "Clip", [In(("N", 9)), Const(-0.3)], lambda x, lo: torch.clamp(x, min=-0.3)),
    Case("hard-sigmoid", "HardSigmoid", [In(("N", 9))],
         lambda x: torch.clamp(0.2 * x + 0.5, 0, 1)),
    Case("hard-sigmoid-torch", "HardSigmoid", [In(("N", 9))], F.hardsigmoid,
         {"alpha": 1 / 6, "beta": 0.5}),
    Case("hard-swish", "HardSwish", [In(("N", 9))], F.hardswish),
    Case("softmax", "Softmax", [In(("N", 6))], lambda x: torch.softmax(x, -1)),
    Case("softmax-axis1", "Softmax", [In(("N", 4, 3))], lambda x: torch.softmax(x, 1),
         {"axis": 1}),
    Case("log-softmax", "LogSoftmax", [In(("N", 6))], lambda x: torch.log_softmax(x, -1)),
    Case("cast", "Cast", [In(("N", 4))], lambda x: x, {"to": onnx.TensorProto.FLOAT}),
    # linear algebra
    Case("gemm", "Gemm", [In(("N", 5)), In((5, 3)), In((3,))], gemm()),
    Case("gemm-tb", "Gemm", [In(("N", 5)), In((3, 5)), In((1, 3))], gemm(tb=1), {"transB": 1}),
    Case("gemm-ta", "Gemm", [In((5, "N")), In((5, 3)), In((3,))], gemm(ta=1), {"transA": 1}),
    Case("gemm-ta-tb-ab", "Gemm", [In((5, "N")), In((3, 5)), In(("N", 3))],
         gemm(0.5, 2.0, 1, 1), {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}),
    Case("matmul", "MatMul", [In(("N", 5)), In((5, 3))], torch.matmul),
    Case("matmul-batched-shared", "MatMul", [In(("N", 2, 5)), In((5, 3))], torch.matmul),
    Case("matmul-batched", "MatMul", [In(("N", 2, 5)), In(("N", 5, 3))], torch.matmul),
    Case("matmul-broadcast", "MatMul", [In((2, 1, 4, 5)), In(("N", 5, 1))], torch.matmul),
    # convolution
    Case("conv-pad", "Conv", [In(X4), In((4, 3, 3, 3)), In((4,))],
         lambda x, w, b: F.conv2d(x, w, b, padding=1), {"pads": [1, 1, 1, 1]}),
    Case("conv-stride2", "Conv", [In(X4), In((4, 3, 3, 3))],
         lambda x, w: F.conv2d(x, w, stride=2, padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("conv-stride2-odd", "Conv", [In(("N", 3, 7, 7)), In((2, 3, 3, 3)), In((2,))],
         lambda x, w, b: F.conv2d(x, w, b, stride=2), {"strides": [2, 2]}),
    Case("conv-dilation", "Conv", [In(X4), In((2, 3, 3, 3))],
         lambda x, w: F.conv2d(x, w, dilation=2, padding=2),
         {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    Case("conv-depthwise", "Conv", [In(X4), In((3, 1, 3, 3)), In((3,))],
         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=3),
         {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("conv-groups", "Conv", [In(("N", 4, 6, 6)), In((6, 2, 3, 3))],
         lambda x, w: F.conv2d(x, w, padding=1, groups=2), {"group": 2, "pads": [1, 1, 1, 1]}),
    Case("conv-asym-pad", "Conv", [In(X4), In((2, 3, 3, 2))],
         lambda x, w: F.conv2d(F.pad(x, (0, 1, 1, 0)), w),
         {"pads": [1, 0, 0, 1]}),
    Case("conv-same-upper", "Conv", [In(X4), In((2, 3, 3, 3))],
         lambda x, w: F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2),
         {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    Case("conv-pointwise", "Conv", [In(X4), In((5, 3, 1, 1)), In((5,))],
         lambda x, w, b: F.conv2d(x, w, b)),
    Case("conv1d", "Conv", [In(("N", 3, 10)), In((2, 3, 3))],
         lambda x, w: F.conv1d(x, w, stride=2), {"strides": [2]}),
    # pooling
    Case("global-avg-pool", "GlobalAveragePool", [In(("N", 3, 5, 5))],
         lambda x: x.mean((2, 3), keepdim=True)),
    Case("avg-pool", "AveragePool", [In(X4)], lambda x: F.avg_pool2d(x, 2, 2),
         {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Case("avg-pool-pad-exclude", "AveragePool", [In(X4)],
         lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    Case("avg-pool-pad-include", "AveragePool", [In(("N", 3, 7, 7))],
         lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
          "count_include_pad": 1}),
    Case("max-pool", "MaxPool", [In(X4)], lambda x: F.max_pool2d(x, 2, 2),
         {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Case("max-pool-overlap", "MaxPool", [In(("N", 3, 7, 7))],
         lambda x: F.max_pool2d(x, 3, 2, 1),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # normalization
    Case("batch-norm", "BatchNormalization",
         [In(X4), In((3,)), In((3,)), Const(MEAN3), Const(VAR3)], bn(1e-3), {"epsilon": 1e-3}),
    Case("batch-norm-2d", "BatchNormalization",
         [In(("N", 3)), In((3,)), In((3,)), Const(MEAN3), Const(VAR3)], bn()),
    Case("layer-norm", "LayerNormalization", [In(("N", 4, 6)), In((6,)), In((6,))],
         lambda x, s, b: F.layer_norm(x, (6,), s, b)),
    Case("layer-norm-axis1", "LayerNormalization", [In(("N", 4, 6)), In((4, 6)), In((4, 6))],
         lambda x, s, b: F.layer_norm(x, (4, 6), s, b, eps=1e-3),
         {"axis": 1, "epsilon": 1e-3}),
    # reductions
    Case("reduce-mean", "ReduceMean", [In(("N", 4, 5))], lambda x: x.mean(1),
         {"axes": [1], "keepdims": 0}),
    Case("reduce-mean-keep", "ReduceMean", [In(("N", 4, 5))], lambda x: x.mean((1, 2), True),
         {"axes": [1, 2]}),
    Case("reduce-mean-all", "ReduceMean", [In(("N", 4))], lambda x: x.mean(), {"keepdims": 0}),
    Case("reduce-sum", "ReduceSum", [In(("N", 4, 5)), Const([1], np.int64)],
         lambda x, a: x.sum(1, keepdim=True)),
    Case("reduce-sum-neg", "ReduceSum", [In(("N", 4, 5)), Const([-1], np.int64)],
         lambda x, a: x.sum(-1), {"keepdims": 0}),
    Case("reduce-sum-all", "ReduceSum", [In(("N", 4))], lambda x: x.sum(), {"keepdims": 0}),
    # data movement
    Case("identity", "Identity", [In(("N", 4))], lambda x: x),
    Case("dropout", "Dropout", [In(("N", 4))], lambda x: x, {"seed": 0}),
    Case("flatten", "Flatten", [In(("N", 2, 3, 4))], lambda x: x.flatten(1)),
    Case("flatten-axis2", "Flatten", [In(("N", 2, 3, 4))], lambda x: x.reshape(-1, 12),
         {"axis": 2}),
    Case("reshape", "Reshape", [In(("N", 2, 6)), Const([0, 3, 4], np.int64)],
         lambda x, s: x.reshape(x.shape[0], 3, 4)),
    Case("transpose", "Transpose", [In(("N", 2, 3))], lambda x: x.permute(0, 2, 1),
         {"perm": [0, 2, 1]}),
    Case("transpose-default", "Transpose", [In(("N", 2, 3))], lambda x: x.permute(2, 1, 0)),
    Case("squeeze", "Squeeze", [In(("N", 1, 4)), Const([1], np.int64)],
         lambda x, a: x.squeeze(1)),
    Case("unsqueeze", "Unsqueeze", [In(("N", 4)), Const([1, -1], np.int64)],
         lambda x, a: x[:, None, :, None]),
    Case("concat", "Concat", [In(("N", 2)), In(("N", 3)), In(("N", 1))],
         lambda *t: torch.cat(t, 1), {"axis": 1}),
    Case("concat-batch", "Concat", [In(("N", 2)), In((4, 2))], lambda *t: torch.cat(t, 0),
         {"axis": 0}),
    Case("slice", "Slice", [In(("N", 6, 5)), Const([1, 0], np.int64), Const([5, 4], np.int64),
                            Const([1, 2], np.int64), Const([2, 1], np.int64)],
         lambda x, *a: x[:, 1:5:2, 0:4]),
    Case("slice-negative-step", "Slice",
         [In(("N", 6)), Const([-1], np.int64), Const([-7], np.int64), Const([1], np.int64),
          Const([-2], np.int64)],
         lambda x, *a: x.flip(1)[:, ::2]),
]


def _materialize(shape, batch):
    return tuple(batch if d == "N" else d for d in shape)


def build_gradient_graph(case: Case):
    b = GraphBuilder()
    args, wrt = [], []
    for i, spec in enumerate(case.inputs):
        if isinstance(spec, In):
            v = b.input(f"in{i}", np.float32, list(spec.shape))
            wrt.append(v)
        else:
            v = b.const(np.asarray(spec.value, dtype=spec.dtype))
        args.append(v)
    y = b.op(case.op, *args, **case.attrs)
    _, y_shape = infer_forward_shapes(b, [y])[y.name]
    gy = b.input("gy", np.float32, y_shape)
    grads = gradients(b, [y], wrt, output_grads=[gy])
    model = b.model({"y": y, **{f"grad{i}": g for i, g in enumerate(grads)}})
    onnx.checker.check_model(model, full_check=True)
    return model, [v.name for v in wrt]


def _random_inputs(case: Case, batch: int, rng):
    arrays = []
    for spec in case.inputs:
        if isinstance(spec, In):
            a = rng.standard_normal(_materialize(spec.shape, batch))
            arrays.append(np.abs(a) + 0.5 if spec.positive else a)
        else:
            arrays.append(np.asarray(spec.value, dtype=spec.dtype))
    return arrays


def _relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-6))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_matches_torch_autograd(case: Case):
    model, names = build_gradient_graph(case)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    for batch in (1, 3):
        arrays = _random_inputs(case, batch, rng)
        tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=isinstance(s, In))
                   if isinstance(s, In) else a for a, s in zip(arrays, case.inputs)]
        torch_args = [t if isinstance(t, torch.Tensor) else torch.tensor(
            t, dtype=torch.float64 if t.dtype == np.float32 else None) for t in tensors]
        y = case.torch_fn(*torch_args)
        gy = rng.standard_normal(tuple(y.shape))
        y.backward(torch.tensor(gy))
        feeds = {n: a.astype(np.float32) for n, a in
                 zip(names, [a for a, s in zip(arrays, case.inputs) if isinstance(s, In)])}
        feeds["gy"] = gy.astype(np.float32)
        y_ort, *grads = session.run(None, feeds)
        assert _relative_error(y_ort, y.detach().numpy()) < 1e-5, "forward differs"
        expected = [t.grad.numpy() for t in tensors if isinstance(t, torch.Tensor)]
        for i, (got, want) in enumerate(zip(grads, expected)):
            assert got.shape == want.shape, f"input {i}: shape {got.shape} != {want.shape}"
            err = _relative_error(got, want)
            assert err < 1e-5, f"batch {batch}, input {i}: relative error {err:.2e}"


def test_the_table_covers_every_rule():
    covered = {c.op for c in CASES}
    assert covered == set(RULES), f"rules without a case: {set(RULES) - covered}"


def test_unsupported_op_names_the_op_and_node():
    b = GraphBuilder()
    x = b.input("x", np.float32, ["N", 3])
    y = b.op("Sin", x)
    with pytest.raises(UnsupportedOpError, match=r"Sin.*n_Sin"):
        gradients(b, [b.ReduceSum(y, keepdims=0)], [x])


def test_frozen_inputs_cost_nothing():
    """Training only a bias leaves no weight or input gradient in the graph."""
    b = GraphBuilder()
    x = b.input("x", np.float32, ["N", 3, 8, 8])
    w = b.initializer("w", np.ones((4, 3, 3, 3), np.float32))
    bias = b.input("bias", np.float32, [4])
    y = b.Relu(b.Conv(x, w, bias, pads=[1, 1, 1, 1]))
    loss = b.ReduceSum(y, keepdims=0)
    (g,) = gradients(b, [loss], [bias])
    ops = [n.op_type for n in b.model({"g": g}).graph.node]
    assert ops.count("Conv") == 1 and "ConvTranspose" not in ops, ops


def test_an_untrainable_target_is_an_error():
    b = GraphBuilder()
    x = b.input("x", np.float32, ["N", 3])
    unused = b.input("unused", np.float32, [3])
    with pytest.raises(ValueError, match="unused"):
        gradients(b, [b.ReduceSum(x, keepdims=0)], [unused])


@pytest.mark.parametrize("act", ["relu6", "relu"])
def test_activation_before_pooling_broadcasts_instead_of_expanding(act):
    """ReLU6 / ReLU then global average pooling (EfficientNet's last block): the pooling
    gradient reaches the activation's rule un-expanded, and still matches torch."""
    b = GraphBuilder()
    x = b.input("x", np.float32, ["N", 3, 4, 4])
    h = b.Clip(x, b.const(0.0), b.const(6.0)) if act == "relu6" else b.Relu(x)
    y = b.GlobalAveragePool(h)
    gy = b.input("gy", np.float32, ["N", 3, 1, 1])
    (gx,) = gradients(b, [y], [x], output_grads=[gy])
    model = b.model({"gx": gx})
    assert "Expand" not in [n.op_type for n in model.graph.node]
    rng = np.random.default_rng(5)
    xv = (rng.standard_normal((2, 3, 4, 4)) * 4 + 2).astype(np.float32)
    xv[0, 0, 0, :2] = [0.0, 6.0]  # exactly on the bounds: torch passes the gradient there
    gyv = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": xv, "gy": gyv})
    xt = torch.tensor(xv, dtype=torch.float64, requires_grad=True)
    ht = torch.clamp(xt, 0.0, 6.0) if act == "relu6" else torch.relu(xt)
    ht.mean(dim=(2, 3), keepdim=True).backward(torch.tensor(gyv, dtype=torch.float64))
    # clamp passes the gradient on its bounds, as our rule does; relu stops it at 0
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_gemm_reads_a_transposed_operand_and_subtracts_in_place():
    """Gemm(Transpose(A), B) becomes Gemm(A, B, transA=1); p - Gemm(A, B) becomes one
    Gemm with C = p. Both give numpy's values."""
    b = GraphBuilder()
    a = b.input("a", np.float32, [5, 3])
    w = b.input("w", np.float32, [5, 4])
    p = b.input("p", np.float32, [3, 4])
    out = b.minus(p, b.Gemm(b.Transpose(a, perm=[1, 0]), w, alpha=0.5))
    model = b.model({"out": out})
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gemm") == 1 and "Transpose" not in ops and "Sub" not in ops, ops
    rng = np.random.default_rng(6)
    av, wv, pv = (rng.standard_normal(s).astype(np.float32) for s in ([5, 3], [5, 4], [3, 4]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"a": av, "w": wv, "p": pv})
    np.testing.assert_allclose(got, pv - 0.5 * av.T @ wv, rtol=1e-5, atol=1e-6)
