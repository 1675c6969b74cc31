"""Fuse a head, a loss, its gradients and an optimizer into plain ONNX graphs.

- `train`: one step. Inputs features, labels, sample_weight, lr, step, the parameters
  and the optimizer state; outputs the loss, the new parameters and the new state.
- `train_epoch`: a whole epoch of mini-batches in one runtime call (an ONNX Loop over
  the step), because per-call overhead dominates small heads. Extra input
  `batch_size`; output `losses`, one per mini-batch.
- `infer`: features and parameters -> logits and probabilities.

    graphs = build_training_graphs(head_model, SoftmaxCrossEntropy(), SGD(lr=0.1))
    onnx.save(graphs.train, "train.onnx")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.autodiff import GraphBuilder, Var, gradients
from edgetune.build.losses import Loss
from edgetune.build.optimizers import Optimizer

BATCH = "N"


@dataclass
class TensorSpec:
    """A parameter or optimizer slot and the tensor names that carry it in each graph."""

    name: str
    shape: list
    train_input: str
    train_output: str
    infer_input: str | None = None
    dtype: str = "float32"


@dataclass
class TrainingGraphs:
    train: onnx.ModelProto
    train_epoch: onnx.ModelProto
    infer: onnx.ModelProto
    params: list[TensorSpec]
    state: list[TensorSpec]
    initial: dict[str, np.ndarray]  # parameter name -> initial value
    features_shape: list  # one sample's features
    loss: Loss
    optimizer: Optimizer
    l2: float = 0.0
    roles: dict = field(default_factory=dict)  # graph -> {"inputs": {...}, "outputs": {...}}

    def trainer(self, lr: float | None = None, threads: int | None = None,
                params: Mapping[str, np.ndarray] | None = None):
        """A runtime GraphTrainer for these graphs: the initial parameters (or `params`,
        by parameter name) and zero optimizer state."""
        from edgetune.runtime.trainer import GraphTrainer

        source = self.initial if params is None else params
        values = {p.train_input: np.asarray(source[p.name], np.float32) for p in self.params}
        shapes = {p.name: values[p.train_input].shape for p in self.params}
        # State specs are named "<param>.<slot>" and shaped like their parameter.
        values.update({s.train_input: np.zeros(shapes[s.name.rsplit(".", 1)[0]], np.float32)
                       for s in self.state})
        return GraphTrainer(self.train.SerializeToString(), values, None,
                            {s.train_input: s.train_output for s in self.params + self.state},
                            epoch=self.train_epoch.SerializeToString(),
                            lr=self.optimizer.lr if lr is None else lr, threads=threads)


def _frozen_head(head: onnx.ModelProto, trainable: Sequence[str]):
    graph = onnx.GraphProto()
    graph.CopyFrom(head.graph)
    keep = [t for t in graph.initializer if t.name not in trainable]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    init_names = {t.name for t in head.graph.initializer}
    data_inputs = [i for i in head.graph.input if i.name not in init_names]
    if len(data_inputs) != 1:
        raise ValueError(f"a head graph needs exactly one input (the features); it has "
                         f"{[i.name for i in data_inputs]}")
    return graph, data_inputs[0]


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


class _StepBuilder:
    """Shared by the step graph and the epoch loop body: the head, loss and update."""

    def __init__(self, head_graph, features_input, params, loss, optimizer, l2):
        self.head_graph = head_graph
        self.features_input = features_input
        self.params = params
        self.loss = loss
        self.optimizer = optimizer
        self.l2 = l2

    def emit(self, b: GraphBuilder, features, labels, sample_weight, lr, step, params, state):
        (logits,) = b.inline(self.head_graph, {self.features_input: features,
                                               **dict(zip([p.name for p in self.params],
                                                          params, strict=True))})[:1]
        shortcut = self.loss.with_logits_gradient(b, logits, labels, sample_weight)
        if shortcut is not None:
            loss, logits_grad = shortcut
            grads = gradients(b, [logits], params, output_grads=[logits_grad])
        else:
            loss = self.loss(b, logits, labels, sample_weight)
            grads = gradients(b, [loss], params)
        if self.l2:  # 0.5 * l2 * |p|^2 in the loss, l2 * p in the gradient
            loss = loss + (0.5 * self.l2) * b.add_all([b.sum_all(p * p) for p in params])
            grads = [g + self.l2 * p for g, p in zip(grads, params)]
        new_params, new_state = self.optimizer.update(b, params, grads, state, lr, step)
        return loss, new_params, new_state


def build_training_graphs(head: onnx.ModelProto, loss: Loss, optimizer: Optimizer,
                          trainable: Sequence[str] | None = None, l2: float = 0.0,
                          param_shapes: Mapping[str, list] | None = None) -> TrainingGraphs:
    """Build train, train_epoch and infer graphs for a head graph.

    head: one input (features, batch first), first output the logits; its float
    initializers are the parameters. trainable: which of them to train (default all);
    the others stay frozen constants. param_shapes: declared shapes with symbolic dims,
    e.g. {"W": [1280, "classes"]}, so one graph serves any number of classes.
    """
    float_inits = {t.name: t for t in head.graph.initializer
                   if t.data_type == onnx.TensorProto.FLOAT}
    names = list(float_inits) if trainable is None else list(trainable)
    unknown = [n for n in names if n not in float_inits]
    if unknown:
        raise ValueError(f"trainable tensors {unknown} are not float initializers of the head; "
                         f"candidates: {sorted(float_inits)}")
    head_graph, features_vi = _frozen_head(head, names)
    features_shape = _dims(features_vi)[1:]
    initial = {n: numpy_helper.to_array(float_inits[n]) for n in names}
    shapes = {n: list((param_shapes or {}).get(n) or initial[n].shape) for n in names}
    params = [TensorSpec(n, shapes[n], n, f"{n}.updated", n) for n in names]
    state = [TensorSpec(f"{n}.{slot}", shapes[n], f"{n}.{slot}", f"{n}.{slot}.updated")
             for n in names for slot in optimizer.slots]
    step_builder = _StepBuilder(head_graph, features_vi.name, params, loss, optimizer, l2)

    train = _train_graph(step_builder, features_shape, params, state, optimizer)
    epoch = _epoch_graph(train, features_shape, params, state)
    infer = _infer_graph(head_graph, features_vi.name, features_shape, params, loss)
    roles = {
        "train": {"inputs": {"features": "features", "labels": "labels",
                             "sample_weight": "sample_weight", "lr": "lr", "step": "step"},
                  "outputs": {"loss": "loss"}},
        "train_epoch": {"inputs": {"features": "features", "labels": "labels",
                                   "sample_weight": "sample_weight", "lr": "lr", "step": "step",
                                   "batch_size": "batch_size"},
                        "outputs": {"losses": "losses"}},
        "infer": {"inputs": {"features": "features"},
                  "outputs": {"logits": "logits", "probabilities": "probabilities"}},
    }
    return TrainingGraphs(train, epoch, infer, params, state, initial, features_shape, loss,
                          optimizer, l2, roles)


def _declare_params(b: GraphBuilder, params, state, optimizer):
    """Graph inputs for the parameters and, per parameter, {slot: input}."""
    p_vars = [b.input(p.train_input, np.float32, p.shape) for p in params]
    slots = iter(state)
    s_vars = []
    for _ in params:
        specs = [next(slots) for _ in optimizer.slots]
        s_vars.append({slot: b.input(spec.train_input, np.float32, spec.shape)
                       for slot, spec in zip(optimizer.slots, specs, strict=True)})
    return p_vars, s_vars


def _param_outputs(params, state, new_params, new_state, optimizer):
    """Outputs in a fixed order, all parameters then all slots, with their types."""
    values = list(new_params) + [slots[slot] for slots in new_state for slot in optimizer.slots]
    outputs, types = {}, {}
    for spec, value in zip(params + state, values, strict=True):
        outputs[spec.train_output] = value
        types[spec.train_output] = (np.float32, spec.shape)
    return outputs, types


def _train_graph(step_builder: _StepBuilder, features_shape, params, state, optimizer):
    b = GraphBuilder()
    features = b.input("features", np.float32, [BATCH, *features_shape])
    labels = b.input("labels", np.int64, [BATCH])
    weights = b.input("sample_weight", np.float32, [BATCH])
    lr = b.input("lr", np.float32, [])
    step = b.input("step", np.int64, [])
    p_vars, s_vars = _declare_params(b, params, state, optimizer)
    loss, new_params, new_state = step_builder.emit(b, features, labels, weights, lr, step,
                                                    p_vars, s_vars)
    outputs, types = _param_outputs(params, state, new_params, new_state, optimizer)
    return b.model({"loss": loss, **outputs}, name="edgetune_train",
                   output_types={"loss": (np.float32, []), **types})


def _epoch_graph(train: onnx.ModelProto, features_shape, params, state):
    """An ONNX Loop that runs the step graph over consecutive mini-batches."""
    prefix = "loop/"
    body = GraphBuilder(prefix=prefix)
    iteration = body.input(prefix + "iteration", np.int64, [])
    cond = body.input(prefix + "cond", np.bool_, [])
    step = body.input(prefix + "step", np.int64, [])
    start = body.input(prefix + "start", np.int64, [1])  # first row of this mini-batch
    carried = [body.input(prefix + s.train_input, np.float32, s.shape) for s in params + state]
    end = start + body.var("batch_size_1d")

    def rows(name: str) -> Var:
        return body.Slice(body.var(name), start, end, body.ints([0]))

    step_inputs = {"features": rows("features"), "labels": rows("labels"),
                   "sample_weight": rows("sample_weight"), "lr": body.var("lr"), "step": step}
    step_inputs.update({s.train_input: v for s, v in zip(params + state, carried, strict=True)})
    loss, *updated = body.inline(train.graph, step_inputs, prefix=prefix + "step/")
    del iteration  # the mini-batch offset is carried instead: one Add per iteration
    next_step = step + body.const(1, np.int64)
    outputs = {prefix + "cond_out": body.Identity(cond), prefix + "step_out": next_step,
               prefix + "start_out": end}
    types = {prefix + "cond_out": (np.bool_, []), prefix + "step_out": (np.int64, []),
             prefix + "start_out": (np.int64, [1])}
    for spec, value in zip(params + state, updated, strict=True):
        outputs[prefix + spec.train_output] = value
        types[prefix + spec.train_output] = (np.float32, spec.shape)
    outputs[prefix + "loss"] = loss
    types[prefix + "loss"] = (np.float32, [])
    body_graph = body.graph(outputs, name="epoch_body", output_types=types)

    b = GraphBuilder()
    b.input("features", np.float32, [BATCH, *features_shape])
    b.input("labels", np.int64, [BATCH])
    b.input("sample_weight", np.float32, [BATCH])
    batch_size = b.input("batch_size", np.int64, [])
    b.input("lr", np.float32, [])
    first_step = b.input("step", np.int64, [])
    outer = [b.input(s.train_input, np.float32, s.shape) for s in params + state]
    n = b.Reshape(b.shape_of(b.var("features"), 0, 1), b.ints([]))
    one = b.const(1, np.int64)
    trips = (n + batch_size - one) / batch_size
    b.Reshape(batch_size, b.ints([1]), names=["batch_size_1d"])
    results = b.op("Loop", trips, b.const(True, np.bool_), first_step,
                   b.const(np.zeros(1, np.int64)), *outer, outputs=3 + len(outer),
                   body=body_graph)
    _, _, *final, losses = results
    graph_outputs = {"losses": losses}
    out_types = {"losses": (np.float32, ["batches"])}
    for spec, value in zip(params + state, final, strict=True):
        graph_outputs[spec.train_output] = value
        out_types[spec.train_output] = (np.float32, spec.shape)
    return b.model(graph_outputs, name="edgetune_train_epoch", output_types=out_types)


def _infer_graph(head_graph, features_name, features_shape, params, loss):
    b = GraphBuilder()
    features = b.input("features", np.float32, [BATCH, *features_shape])
    p_vars = {p.name: b.input(p.infer_input, np.float32, p.shape) for p in params}
    (logits,) = b.inline(head_graph, {features_name: features, **p_vars})[:1]
    return b.model({"logits": logits, "probabilities": loss.probabilities(b, logits)},
                   name="edgetune_infer")
