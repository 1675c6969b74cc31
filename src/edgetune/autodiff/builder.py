"""A small ONNX graph builder whose values support Python operators.

Gradient rules, losses and optimizers all emit nodes through it, so each reads like
its formula: ``g * (1 - y * y)`` for Tanh emits Mul, Sub and Mul nodes.

    b = GraphBuilder()
    x = b.input("x", np.float32, ["N", 4])
    y = b.Tanh(x)
    model = b.model({"y": y})
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# onnx 1.23 writes IR 14 by default; IR 8 is the lowest that allows opset 17 and
# keeps older runtimes (onnxruntime-node, mobile builds) able to load our graphs.
IR_VERSION = 8

Dim = int | str | None


def value_dims(value: onnx.ValueInfoProto | onnx.TypeProto, *,
               symbolic: bool = True) -> list[Dim] | None:
    """The dims of a tensor's ValueInfo (or TypeProto): ``dim_value``, else ``dim_param``
    (``None`` instead with ``symbolic=False``), else ``None``. ``None`` for the whole
    list when the shape (rank) is unknown.

    >>> value_dims(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]))
    ['N', 3]
    """
    type_proto = value.type if isinstance(value, onnx.ValueInfoProto) else value
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else
            ((d.dim_param or None) if symbolic else None) for d in tensor_type.shape.dim]


def _dtype_of(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Var:
    """A named tensor in a GraphBuilder; arithmetic on it emits ONNX nodes."""

    __slots__ = ("b", "name")
    __array_priority__ = 1000  # make `np.float32(2) * var` defer to Var

    def __init__(self, builder: GraphBuilder, name: str):
        self.b = builder
        self.name = name

    def __repr__(self) -> str:
        return f"Var({self.name!r})"

    def _lift(self, other) -> Var:
        return other if isinstance(other, Var) else self.b.const(other)

    def __add__(self, o):
        return self.b.Add(self, self._lift(o))

    def __radd__(self, o):
        return self.b.Add(self._lift(o), self)

    def __sub__(self, o):
        return self.b.Sub(self, self._lift(o))

    def __rsub__(self, o):
        return self.b.Sub(self._lift(o), self)

    def __mul__(self, o):
        return self.b.Mul(self, self._lift(o))

    def __rmul__(self, o):
        return self.b.Mul(self._lift(o), self)

    def __truediv__(self, o):
        return self.b.Div(self, self._lift(o))

    def __rtruediv__(self, o):
        return self.b.Div(self._lift(o), self)

    def __neg__(self):
        return self.b.Neg(self)

    def __matmul__(self, o):
        return self.b.MatMul(self, o)

    def __gt__(self, o):
        return self.b.Greater(self, self._lift(o))

    def __lt__(self, o):
        return self.b.Less(self, self._lift(o))


class GraphBuilder:
    """Accumulates nodes, inputs and initializers; `model()` makes a checked ModelProto.

    Unknown attribute names are ONNX operators: ``b.Transpose(x, perm=[1, 0])`` emits a
    Transpose node and returns its output Var (a tuple when ``outputs=k > 1``).
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._counter = itertools.count()
        self._const_cache: dict[tuple, Var] = {}
        self._used_names: set[str] = set()
        self._producers: dict[str, onnx.NodeProto] = {}  # output name -> node
        self.scalar_rank = 0  # see scalars_of_rank
        # Types known without inference (e.g. a gradient has its parameter's type):
        # name -> (numpy dtype, dims).
        self.types: dict[str, tuple] = {}

    # -- naming ---------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            name = f"{self.prefix}{hint}_{next(self._counter)}"
            if name not in self._used_names:
                self._used_names.add(name)
                return name

    def reserve(self, name: str) -> str:
        if name in self._used_names:
            raise ValueError(f"tensor name {name!r} is used twice in one graph")
        self._used_names.add(name)
        return name

    def var(self, name: str) -> Var:
        return Var(self, name)

    # -- graph inputs and constants ------------------------------------------------
    def input(self, name: str, dtype, shape: Sequence[Dim] | None) -> Var:
        self.reserve(name)
        self.inputs.append(helper.make_tensor_value_info(name, _dtype_of(dtype), shape))
        return Var(self, name)

    def initializer(self, name: str, value: np.ndarray) -> Var:
        self.reserve(name)
        self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return Var(self, name)

    def const(self, value, dtype=np.float32) -> Var:
        """A constant tensor; Python scalars become float32 scalars unless told."""
        arr = np.asarray(value, dtype=dtype if not isinstance(value, np.ndarray) else None)
        if arr.ndim == 0 and self.scalar_rank and arr.dtype.kind == "f":
            arr = arr.reshape([1] * self.scalar_rank)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers[name] = numpy_helper.from_array(arr, name)
            self._const_cache[key] = Var(self, name)
        return self._const_cache[key]

    @contextlib.contextmanager
    def scalars_of_rank(self, rank: int):
        """Within: float scalar constants are shaped [1] * rank. onnxruntime multiplies a
        rank-0 scalar into a tensor with trailing unit dims (a 1x1 conv weight
        [O, I, 1, 1]) ~40x more slowly than a [1, 1, 1, 1] one."""
        saved, self.scalar_rank = self.scalar_rank, rank
        try:
            yield
        finally:
            self.scalar_rank = saved

    def ints(self, values: Iterable[int]) -> Var:
        """A 1-D int64 constant (shapes, axes, starts)."""
        return self.const(np.asarray(list(values), dtype=np.int64))

    # -- nodes ----------------------------------------------------------------------
    def op(self, op_type: str, *inputs, outputs: int = 1, names: Sequence[str] | None = None,
           **attrs):
        in_names = ["" if v is None else (v.name if isinstance(v, Var) else self.const(v).name)
                    for v in inputs]
        while in_names and in_names[-1] == "":
            in_names.pop()
        if names is None:
            out_names = [self.fresh(op_type) for _ in range(outputs)]
        else:
            out_names = [self.reserve(n) for n in names]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if op_type == "Gemm":
            self._fold_transposes(in_names, attrs)
        self._append(helper.make_node(op_type, in_names, out_names,
                                      name=self.fresh(f"n_{op_type}"), **attrs))
        out = tuple(Var(self, n) for n in out_names)
        return out[0] if len(out) == 1 else out

    def inline(self, graph: onnx.GraphProto, inputs: Mapping[str, Var],
               prefix: str | None = None) -> list[Var]:
        """Copy a graph's nodes in, reading `inputs` for its inputs; returns its outputs.

        Internal tensor names get `prefix` (default: a fresh one, so that one graph can
        be inlined many times; "" keeps the names); its initializers become this
        builder's.
        """
        prefix = self.fresh("inl") + "/" if prefix is None else prefix
        rename = {name: v.name for name, v in inputs.items()}
        rename[""] = ""
        for t in graph.initializer:
            if t.name not in rename:
                copy = onnx.TensorProto()
                copy.CopyFrom(t)
                copy.name = self.reserve(prefix + t.name)
                self.initializers[copy.name] = copy
                rename[t.name] = copy.name
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):
                raise ValueError(f"cannot inline node {node.name!r}: it has a subgraph")
            for name in node.input:
                if name not in rename:
                    raise ValueError(f"graph input {name!r} of node {node.name!r} is not given")
            if node.op_type == "Identity":  # an alias, not a copy made every step
                rename[node.output[0]] = rename[node.input[0]]
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = self.fresh(prefix + (node.name or node.op_type))
            del new.input[:]
            new.input.extend(rename[n] for n in node.input)
            del new.output[:]
            for out in node.output:
                rename[out] = self.reserve(prefix + out) if out else ""
                new.output.append(rename[out])
            self._append(new)
        return [Var(self, rename[o.name]) for o in graph.output]

    def _append(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)
        self._producers.update((o, node) for o in node.output if o)

    def producer(self, v: Var) -> onnx.NodeProto | None:
        """The node of this builder that computes v (None for inputs and constants)."""
        return self._producers.get(v.name)

    def _fold_transposes(self, in_names: list[str], attrs: dict) -> None:
        """Gemm(Transpose(A), B) reads A with transA flipped: one kernel fewer per use
        (gradients of transposed products produce this shape often)."""
        for i, flag in ((0, "transA"), (1, "transB")):
            node = self._producers.get(in_names[i])
            if node is not None and node.op_type == "Transpose" and all(
                    list(a.ints) == [1, 0] for a in node.attribute if a.name == "perm"):
                in_names[i] = node.input[0]
                attrs[flag] = 1 - int(attrs.get(flag, 0))

    def minus(self, p: Var, g: Var) -> Var:
        """p - g, for g shaped like p. When g is a plain product Gemm(A, B), this is
        Gemm(A, B, p, alpha=-alpha, beta=1): the optimizer update costs no extra kernel."""
        node = self.producer(g)
        if node is None or node.op_type != "Gemm" or len(node.input) > 2:
            return p - g
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs["alpha"] = -float(attrs.get("alpha", 1.0))
        attrs["beta"] = 1.0
        return self.op("Gemm", self.var(node.input[0]), self.var(node.input[1]), p, **attrs)

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    # -- frequently used compositions ------------------------------------------------
    def shape_of(self, x: Var, start: int | None = None, end: int | None = None) -> Var:
        return self.op("Shape", x, start=start, end=end)

    def reduce_sum(self, x: Var, axes: Sequence[int], keepdims: bool = False) -> Var:
        if not axes:
            return x
        return self.ReduceSum(x, self.ints(axes), keepdims=int(keepdims))

    def sum_all(self, x: Var) -> Var:
        return self.ReduceSum(x, keepdims=0)

    def as_float(self, x: Var) -> Var:
        return self.Cast(x, to=TensorProto.FLOAT)

    def add_all(self, values: Sequence[Var]) -> Var:
        return values[0] if len(values) == 1 else self.Sum(*values)

    # -- output ---------------------------------------------------------------------
    def graph(self, outputs: Mapping[str, Var], name: str = "edgetune",
              output_types: Mapping[str, tuple] | None = None) -> onnx.GraphProto:
        """A GraphProto with the given outputs, renamed, and unused nodes removed.

        An output is renamed by renaming the tensor where it is made; an Identity (which
        onnxruntime may run as a copy every call) only where that cannot be done."""
        nodes = list(self.nodes)
        renames = self._output_renames(outputs)
        if renames:
            nodes = [_renamed(node, renames) for node in nodes]
        out_infos = []
        for out_name, var in outputs.items():
            if var.name != out_name and renames.get(var.name) != out_name:
                nodes.append(helper.make_node("Identity", [renames.get(var.name, var.name)],
                                              [out_name], name=self.fresh("n_out")))
            dtype, shape = (output_types or {}).get(out_name) or self.types.get(var.name,
                                                                              (None, None))
            if dtype is None:
                out_infos.append(helper.make_empty_tensor_value_info(out_name))
            else:
                out_infos.append(helper.make_tensor_value_info(out_name, _dtype_of(dtype), shape))
        nodes = prune(nodes, list(outputs))
        used = {n for node in nodes for n in node.input} | set(outputs)
        used |= {n for node in nodes for n in subgraph_references(node)}
        inits = [t for name, t in self.initializers.items() if name in used]
        return helper.make_graph(nodes, name, self.inputs, out_infos, inits)

    def _output_renames(self, outputs: Mapping[str, Var]) -> dict[str, str]:
        """tensor -> output name, for outputs made by a node of this graph under another
        name that nothing else here uses, once each."""
        taken = {v.name for v in outputs.values()}
        taken |= {i.name for i in self.inputs} | set(self.initializers)
        taken |= {o for node in self.nodes for o in node.output}
        outer = {n for node in self.nodes for n in subgraph_references(node)}
        sources = [v.name for v in outputs.values()]
        renames = {}
        for out_name, var in outputs.items():
            if (var.name != out_name and var.name in self._producers and out_name not in taken
                    and sources.count(var.name) == 1 and var.name not in outer):
                renames[var.name] = out_name
        return renames

    def model(self, outputs: Mapping[str, Var], name: str = "edgetune",
              **kwargs) -> onnx.ModelProto:
        return make_model(self.graph(outputs, name, **kwargs))


def _renamed(node: onnx.NodeProto, renames: Mapping[str, str]) -> onnx.NodeProto:
    if not any(n in renames for n in list(node.input) + list(node.output)):
        return node
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[:] = [renames.get(n, n) for n in node.input]
    new.output[:] = [renames.get(n, n) for n in node.output]
    return new


def make_model(graph: onnx.GraphProto, infer: bool = True) -> onnx.ModelProto:
    """Wrap a graph at our opset and IR version, with output types filled by inference."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgetune")
    model.ir_version = IR_VERSION
    if infer:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        # Fill in the output types that inference found, keep the rest as is.
        known = list(inferred.graph.value_info) + list(inferred.graph.output)
        types = {v.name: v.type for v in known}
        for out in model.graph.output:
            if not out.type.HasField("tensor_type") and out.name in types:
                out.type.CopyFrom(types[out.name])
    return model


def subgraph_references(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (Loop, If, Scan bodies) read from the enclosing scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        for g in list(attr.g and [attr.g] or []) + list(attr.graphs):
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                defined |= set(n.output)
            for n in g.node:
                refs |= {i for i in n.input if i and i not in defined}
                refs |= subgraph_references(n) - defined
            refs |= {o.name for o in g.output if o.name not in defined}
    return refs


def prune(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """Drop nodes that no output depends on; this is what makes frozen inputs free."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_references(node))
    return keep[::-1]
