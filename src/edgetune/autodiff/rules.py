"""The gradient rules: one table, one row per ONNX operator.

Each rule takes a RuleContext `c` (inputs `c.x`, output `c.y`, output gradient `c.gy`,
attributes, static shapes) and returns one gradient per input, None where there is
none. Short rules are lambdas in the table; the longer ones (convolutions, pooling,
normalizations) are functions just above it. Rules may return gradients for inputs
nobody trains; the final graph prunes them.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from edgetune.autodiff.builder import Var
from edgetune.autodiff.context import RuleContext

FLOAT = TensorProto.FLOAT


def _axis(c: RuleContext, default: int, v: Var | None = None) -> int:
    axis = c.attr("axis", default)
    return axis + c.rank(v or c.x[0]) if axis < 0 else axis


def _reshape_like(c: RuleContext, g: Var, like: Var) -> Var:
    return c.b.Reshape(g, c.b.shape_of(like))


def _swap_last(c: RuleContext, v: Var, rank: int) -> Var:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return c.b.Transpose(v, perm=perm)


def _flat_index(c: RuleContext, x: Var) -> Var:
    """int64 tensor shaped like x holding each element's flat index."""
    b = c.b
    n = b.Size(x)
    return b.Reshape(b.Range(b.const(0, np.int64), n, b.const(1, np.int64)), b.shape_of(x))


def _scatter_flat(c: RuleContext, x: Var, index: Var, g: Var, reduction: str) -> Var:
    """Gradient shaped like x: zeros with g added at the flat positions `index`."""
    b = c.b
    zeros = b.Expand(b.const(0.0), b.Reshape(b.Size(x), b.ints([1])))
    flat = b.ScatterElements(zeros, b.Reshape(index, b.ints([-1])), b.Reshape(g, b.ints([-1])),
                             axis=0, reduction=reduction)
    return _reshape_like(c, flat, x)


def _per_channel(c: RuleContext, v: Var, rank: int) -> Var:
    """A [C] vector shaped to broadcast against an [N, C, ...] tensor."""
    return c.b.Unsqueeze(v, c.b.ints(range(1, rank - 1))) if rank > 2 else v


def _reduced_grad(c: RuleContext, axes: Var | list | None) -> Var:
    """Broadcast a reduction's output gradient back over the reduced axes."""
    g = c.gy
    if not c.attr("keepdims", 1) and axes is not None:
        g = c.b.Unsqueeze(g, axes if isinstance(axes, Var) else c.b.ints(axes))
    return c.b.Expand(g, c.b.shape_of(c.x[0]))


def _reduction_count(c: RuleContext) -> Var:
    b = c.b
    return b.as_float(b.Size(c.x[0])) / b.as_float(b.Size(c.y))


# -- linear algebra -------------------------------------------------------------------
def matmul_grad(c: RuleContext):
    a, w = c.x
    ra, rw = c.rank(a), c.rank(w)
    if ra < 2 or rw < 2:
        raise c.error("1-D MatMul operands are not supported; reshape them to 2-D")
    y_shape = c.shape(c.y)
    ga = c.unbroadcast(c.gy @ _swap_last(c, w, rw), 0, y_shape[:-2] + c.shape(a)[-2:])
    gw = c.unbroadcast(_swap_last(c, a, ra) @ c.gy, 1, y_shape[:-2] + c.shape(w)[-2:])
    return ga, gw


def gemm_grad(c: RuleContext):
    a, w = c.x[0], c.x[1]
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    ta, tw = c.attr("transA", 0), c.attr("transB", 0)
    g, b = c.gy, c.b
    # d(A'B') wrt the stored A and B, for each transpose combination.
    if not ta:
        ga = b.Gemm(g, w, alpha=alpha, transB=0 if tw else 1)
    else:
        ga = b.Gemm(w, g, alpha=alpha, transA=tw, transB=1)
    if not tw:
        gw = b.Gemm(a, g, alpha=alpha, transA=0 if ta else 1)
    else:
        gw = b.Gemm(g, a, alpha=alpha, transA=1, transB=ta)
    gc = c.unbroadcast(g * beta if beta != 1.0 else g, 2) if len(c.x) > 2 and c.x[2] else None
    return ga, gw, gc


# -- convolution and pooling ----------------------------------------------------------
def _conv_geometry(c: RuleContext, kernel: list[int]):
    """strides, dilations, begin/end pads and the spatial sizes of input and output."""
    x_shape = c.static_dims(c.x[0], "the gradient of a convolution or pooling")
    y_shape = c.static_dims(c.y, "the gradient of a convolution or pooling")
    in_size, out_size = x_shape[2:], y_shape[2:]
    n = len(in_size)
    strides = c.attr("strides", [1] * n)
    dilations = c.attr("dilations", [1] * n)
    pads = c.attr("pads", [0] * 2 * n)
    auto_pad = c.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * n
        for d in range(n):
            total = max((out_size[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1
                        - in_size[d], 0)
            small, large = total // 2, total - total // 2
            pads[d], pads[d + n] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * 2 * n
    # What ConvTranspose must add at the end to give back the input's exact size.
    output_padding = [
        in_size[d] - ((out_size[d] - 1) * strides[d] - pads[d] - pads[d + n]
                      + dilations[d] * (kernel[d] - 1) + 1)
        for d in range(n)
    ]
    if any(p < 0 for p in output_padding):
        raise c.error("ceil_mode windows past the input edge are not supported")
    return strides, dilations, pads, in_size, out_size, output_padding


def conv_grad(c: RuleContext):
    b = c.b
    x, w = c.x[0], c.x[1]
    w_shape = c.shape(w)
    if w_shape is None or not all(isinstance(d, int) for d in w_shape):
        raise c.error("the weight needs a static shape")
    kernel = w_shape[2:]
    group = c.attr("group", 1)
    strides, dilations, pads, in_size, out_size, out_pad = _conv_geometry(c, kernel)
    n = len(kernel)
    g = c.gy

    gx = None
    if c.needs(0):
        gx = b.ConvTranspose(g, w, strides=strides, pads=pads, dilations=dilations,
                             group=group, output_padding=out_pad)

    gw = None
    pointwise = (all(k == 1 for k in kernel) and all(s == 1 for s in strides)
                 and not any(pads) and group == 1)
    if c.needs(1) and pointwise:
        # A 1x1 convolution is a product over batch and pixels: dW = gy' x' with gy'
        # [O, N*P] and x' [N*P, I]. One GEMM; the general form below would run as O
        # matrix-vector products (93 of 125 ms of a step on EfficientNet's conv_head).
        gs = b.Reshape(b.Transpose(g, perm=[1, 0] + [2 + d for d in range(n)]),
                       b.ints([w_shape[0], -1]))
        xs = b.Reshape(b.Transpose(x, perm=[0] + [2 + d for d in range(n)] + [1]),
                       b.ints([-1, w_shape[1]]))
        gw = b.Reshape(b.MatMul(gs, xs), b.ints(w_shape))
    elif c.needs(1):
        # dW[g, o, i, k] = sum_n sum_p gy[n, g*O+o, p] * x[n, g*I+i, p*stride + k*dilation]:
        # a convolution of x (channels = groups x batch) with gy as the kernel, in which
        # strides and dilations trade places.
        c_out, c_in_group = w_shape[0], w_shape[1]
        out_group = c_out // group
        xs = b.Reshape(x, b.ints([0, group, c_in_group] + in_size))
        xs = b.Transpose(xs, perm=[2, 1, 0] + [3 + d for d in range(n)])
        xs = b.Reshape(xs, b.ints([c_in_group, -1] + in_size))
        gs = b.Reshape(g, b.ints([0, group, out_group] + out_size))
        gs = b.Transpose(gs, perm=[1, 2, 0] + [3 + d for d in range(n)])
        gs = b.Reshape(gs, b.ints([c_out, -1] + out_size))
        full = b.Conv(xs, gs, strides=dilations, dilations=strides, pads=pads, group=group)
        full = b.Slice(full, b.ints([0] * n), b.ints(kernel), b.ints(range(2, 2 + n)))
        gw = b.Transpose(full, perm=[1, 0] + [2 + d for d in range(n)])

    gbias = None
    if len(c.x) > 2 and c.x[2] is not None:
        gbias = b.reduce_sum(g, [0] + list(range(2, 2 + n)))
    return gx, gw, gbias


def average_pool_grad(c: RuleContext):
    b = c.b
    kernel = c.attr("kernel_shape")
    strides, _, pads, in_size, out_size, out_pad = _conv_geometry(c, kernel)
    n = len(kernel)
    if c.attr("count_include_pad", 0) or not any(pads):
        scaled = c.gy / float(np.prod(kernel))
    else:
        # Each output averaged only the in-bounds elements of its window.
        counts = np.ones(out_size, dtype=np.float32)
        for d in range(n):
            starts = np.arange(out_size[d]) * strides[d] - pads[d]
            per_dim = np.minimum(starts + kernel[d], in_size[d]) - np.maximum(starts, 0)
            counts *= per_dim.reshape([-1 if e == d else 1 for e in range(n)])
        scaled = c.gy / b.const(counts)
    ones = b.const(np.ones([1, 1] + list(kernel), dtype=np.float32))
    flat = b.Reshape(scaled, b.ints([-1, 1] + out_size))
    gx = b.ConvTranspose(flat, ones, strides=strides, pads=pads, output_padding=out_pad)
    return (_reshape_like(c, gx, c.x[0]),)


def global_average_pool_grad(c: RuleContext):
    # Divide the small tensor, then broadcast it; the count is shaped [1, 1, 1, 1], as
    # onnxruntime divides [N, C, 1, 1] by a rank-0 scalar tens of times more slowly.
    count = c.b.Reshape(_reduction_count(c), c.b.ints([1] * c.rank(c.x[0])))
    return (c.b.Expand(c.gy / count, c.b.shape_of(c.x[0])),)


def max_pool_grad(c: RuleContext):
    b = c.b
    if len(c.ys) > 1 and c.node.output[1]:
        indices = c.ys[1]
    else:
        attrs = {k: c.attr(k) for k in ("kernel_shape", "strides", "pads", "dilations",
                                        "auto_pad", "ceil_mode")}
        _, indices = b.MaxPool(c.x[0], outputs=2, **attrs)
    return (_scatter_flat(c, c.x[0], indices, c.gy, "add"),)


# -- normalization --------------------------------------------------------------------
def batch_norm_grad(c: RuleContext):
    if c.attr("training_mode", 0):
        raise c.error("training_mode=1 is not supported; the step uses frozen statistics")
    b = c.b
    x, scale, _, mean, var = c.x[:5]
    rank = c.rank(x)
    inv_std = 1.0 / b.Sqrt(var + c.attr("epsilon", 1e-5))
    gx = c.gy * _per_channel(c, scale * inv_std, rank)
    x_hat = (x - _per_channel(c, mean, rank)) * _per_channel(c, inv_std, rank)
    axes = [0] + list(range(2, rank))
    return gx, b.reduce_sum(c.gy * x_hat, axes), b.reduce_sum(c.gy, axes), None, None


def layer_norm_grad(c: RuleContext):
    b = c.b
    x, scale = c.x[0], c.x[1]
    rank = c.rank(x)
    axis = _axis(c, -1)
    norm_axes = list(range(axis, rank))
    mean = b.ReduceMean(x, axes=norm_axes, keepdims=1)
    centered = x - mean
    inv_std = 1.0 / b.Sqrt(b.ReduceMean(centered * centered, axes=norm_axes, keepdims=1)
                           + c.attr("epsilon", 1e-5))
    x_hat = centered * inv_std
    g_hat = c.gy * scale
    gx = inv_std * (g_hat - b.ReduceMean(g_hat, axes=norm_axes, keepdims=1)
                    - x_hat * b.ReduceMean(g_hat * x_hat, axes=norm_axes, keepdims=1))
    lead = list(range(axis))
    gscale = c.unbroadcast(b.reduce_sum(c.gy * x_hat, lead), 1, c.shape(x)[axis:])
    gbias = None
    if len(c.x) > 2 and c.x[2] is not None:
        gbias = c.unbroadcast(b.reduce_sum(c.gy, lead), 2, c.shape(x)[axis:])
    return gx, gscale, gbias


# -- shapes ---------------------------------------------------------------------------
def transpose_grad(c: RuleContext):
    perm = c.attr("perm") or list(reversed(range(c.rank(c.x[0]))))
    return (c.b.Transpose(c.gy, perm=[int(i) for i in np.argsort(perm)]),)


def concat_grad(c: RuleContext):
    b = c.b
    axis = _axis(c, 0)
    static = [(c.shape(x) or [None] * (axis + 1))[axis] for x in c.x]
    if all(isinstance(d, int) for d in static):
        sizes = b.ints(static)
    else:
        sizes = b.Concat(*[b.shape_of(x, axis, axis + 1) for x in c.x], axis=0)
    parts = b.Split(c.gy, sizes, axis=axis, outputs=len(c.x))
    return parts if isinstance(parts, tuple) else (parts,)


def slice_grad(c: RuleContext):
    # Slice the flat indices the same way, then scatter the gradient back to them:
    # one rule for any starts, ends, axes and (negative) steps.
    index = c.b.Slice(_flat_index(c, c.x[0]), *c.x[1:])
    return (_scatter_flat(c, c.x[0], index, c.gy, "none"),)


def _unexpanded(c: RuleContext, g: Var) -> Var:
    """g before an Expand to this node's shape, when it was made by one: an elementwise
    rule whose other operand has the full shape broadcasts it for free (for ReLU6 after
    global average pooling: no 2-million-element Expand)."""
    node = c.b.producer(g)
    if node is None or node.op_type != "Expand":
        return g
    shape = c.b.producer(c.b.var(node.input[1]))
    same = {c.y.name, c.x[0].name}
    if shape is not None and shape.op_type == "Shape" and shape.input[0] in same and not any(
            a.name in ("start", "end") for a in shape.attribute):
        return c.b.var(node.input[0])
    return g


def clip_grad(c: RuleContext):
    # Inside [min, max] (bounds included) exactly where clip(x) == x: one comparison, and
    # a float mask times the gradient runs faster than Where.
    inside = c.b.Cast(c.b.Equal(c.x[0], c.y), to=FLOAT)
    return (inside * _unexpanded(c, c.gy),)


def hard_sigmoid_grad(c: RuleContext):
    b = c.b
    alpha, beta = c.attr("alpha", 0.2), c.attr("beta", 0.5)
    v = c.x[0] * alpha + beta
    return (b.Where(b.And(v > 0.0, v < 1.0), c.gy * alpha, 0.0),)


def hard_swish_grad(c: RuleContext):
    b, x, g = c.b, c.x[0], c.gy
    inner = b.Where(b.LessOrEqual(x, b.const(3.0)), g * (x / 3.0 + 0.5), g)
    return (b.Where(x < -3.0, 0.0, inner),)


def pow_grad(c: RuleContext):
    x, p = c.x
    gx = c.unbroadcast(c.gy * p * c.b.Pow(x, p - 1.0), 0)
    gp = c.unbroadcast(c.gy * c.y * c.b.Log(x), 1) if c.needs(1) else None
    return gx, gp


def softmax_grad(c: RuleContext):
    axis = c.b.ints([_axis(c, -1)])
    return (c.y * (c.gy - c.b.ReduceSum(c.gy * c.y, axis, keepdims=1)),)


def log_softmax_grad(c: RuleContext):
    axis = c.b.ints([_axis(c, -1)])
    return (c.gy - c.b.Exp(c.y) * c.b.ReduceSum(c.gy, axis, keepdims=1),)


def reduce_sum_grad(c: RuleContext):
    axes = c.x[1] if len(c.x) > 1 and c.x[1] is not None else None
    if axes is None and c.attr("noop_with_empty_axes", 0):
        return (c.gy, None)
    return (_reduced_grad(c, axes), None)


def reduce_mean_grad(c: RuleContext):
    return (_reduced_grad(c, c.attr("axes")) / _reduction_count(c),)


TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

# op type -> rule(c) -> one gradient per input (None: no gradient flows there)
RULES = {
    # elementwise arithmetic (numpy broadcasting)
    "Add": lambda c: (c.unbroadcast(c.gy, 0), c.unbroadcast(c.gy, 1)),
    "Sub": lambda c: (c.unbroadcast(c.gy, 0), c.unbroadcast(-c.gy, 1)),
    "Mul": lambda c: (c.unbroadcast(c.gy * c.x[1], 0), c.unbroadcast(c.gy * c.x[0], 1)),
    "Div": lambda c: (c.unbroadcast(c.gy / c.x[1], 0), c.unbroadcast(-c.gy * c.y / c.x[1], 1)),
    "Sum": lambda c: tuple(c.unbroadcast(c.gy, i) for i in range(len(c.x))),
    "Neg": lambda c: (-c.gy,),
    "Pow": pow_grad,
    "Where": lambda c: (None, c.unbroadcast(c.b.Where(c.x[0], c.gy, 0.0), 1),
                        c.unbroadcast(c.b.Where(c.x[0], 0.0, c.gy), 2)),
    # elementwise functions
    "Abs": lambda c: (c.gy * c.b.Sign(c.x[0]),),
    "Exp": lambda c: (c.gy * c.y,),
    "Log": lambda c: (c.gy / c.x[0],),
    "Sqrt": lambda c: (c.gy * 0.5 / c.y,),
    "Reciprocal": lambda c: (-c.gy * c.y * c.y,),
    "Erf": lambda c: (c.gy * TWO_OVER_SQRT_PI * c.b.Exp(-(c.x[0] * c.x[0])),),
    "Tanh": lambda c: (c.gy * (1.0 - c.y * c.y),),
    "Sigmoid": lambda c: (c.gy * c.y * (1.0 - c.y),),
    "Relu": lambda c: (c.b.Where(c.x[0] > 0.0, _unexpanded(c, c.gy), 0.0),),
    "LeakyRelu": lambda c: (c.b.Where(c.x[0] > 0.0, c.gy, c.gy * c.attr("alpha", 0.01)),),
    "Clip": clip_grad,
    "HardSigmoid": hard_sigmoid_grad,
    "HardSwish": hard_swish_grad,
    "Softmax": softmax_grad,
    "LogSoftmax": log_softmax_grad,
    # linear algebra, convolution, pooling, normalization
    "MatMul": matmul_grad,
    "Gemm": gemm_grad,
    "Conv": conv_grad,
    "AveragePool": average_pool_grad,
    "MaxPool": max_pool_grad,
    "GlobalAveragePool": global_average_pool_grad,
    "BatchNormalization": batch_norm_grad,
    "LayerNormalization": layer_norm_grad,
    # reductions
    "ReduceSum": reduce_sum_grad,
    "ReduceMean": reduce_mean_grad,
    # data movement: the gradient goes back to the input's layout
    "Identity": lambda c: (c.gy,),
    "Dropout": lambda c: (c.gy, None, None),  # the step runs Dropout in inference mode
    "Cast": lambda c: (c.b.Cast(c.gy, to=c.dtype(c.x[0])),),
    "Flatten": lambda c: (_reshape_like(c, c.gy, c.x[0]),),
    "Reshape": lambda c: (_reshape_like(c, c.gy, c.x[0]), None),
    "Squeeze": lambda c: (_reshape_like(c, c.gy, c.x[0]), None),
    "Unsqueeze": lambda c: (_reshape_like(c, c.gy, c.x[0]), None),
    "Transpose": transpose_grad,
    "Concat": concat_grad,
    "Slice": slice_grad,
}
