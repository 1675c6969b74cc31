"""Fuse a head, a loss, its gradients and an optimizer into plain ONNX graphs.

- `train`: one step. Inputs features, labels, sample_weight, lr, step, the parameters
  and the optimizer state; outputs the loss, the new parameters and the new state.
- `train_epoch`: k mini-batches in one runtime call (an ONNX Scan over the step),
  because per-call overhead dominates small heads. features [k, n, ...], labels and
  sample_weight [k, n]; output `losses`, one per mini-batch.
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
from safetensors.numpy import save as save_safetensors

from edgetune.autodiff import GraphBuilder, Var, gradients
from edgetune.autodiff.builder import value_dims
from edgetune.bundle import Bundle
from edgetune.converter.heads import CLASSES
from edgetune.converter.losses import Loss
from edgetune.converter.optimizers import Optimizer

BATCH = "N"
BATCHES = "batches"  # mini-batches per epoch-graph call


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

    def manifest_sections(self) -> dict:
        """The manifest's `graphs` (train, train_epoch, infer), `params`, `state`,
        `init`, `loss`, `optimizer` and `l2` for these graphs (hashes filled on save)."""
        param_of = {f"{p.name}.{slot}": (p.name, slot) for p in self.params
                    for slot in self.optimizer.slots}
        return {
            "graphs": {role: {"file": f"{role}.onnx", "sha256": "0" * 64, **self.roles[role]}
                       for role in ("train", "train_epoch", "infer")},
            "params": [{"name": p.name, "shape": p.shape, "dtype": "float32",
                        "train_input": p.train_input, "train_output": p.train_output,
                        "infer_input": p.infer_input} for p in self.params],
            "state": [{"name": s.name, "param": param_of[s.name][0],
                       "slot": param_of[s.name][1], "shape": s.shape, "dtype": "float32",
                       "init": "zeros", "train_input": s.train_input,
                       "train_output": s.train_output} for s in self.state],
            "init": {"file": "params.safetensors", "sha256": "0" * 64},
            "loss": self.loss.config(),
            "optimizer": self.optimizer.config(),
            "l2": self.l2,
        }

    def files(self, params: Mapping[str, np.ndarray] | None = None) -> dict[str, bytes]:
        """The files of `manifest_sections()`: the three graphs and the initial values
        (or `params`, by parameter name)."""
        values = self.initial if params is None else {**self.initial, **params}
        return {**{f"{role}.onnx": getattr(self, role).SerializeToString()
                   for role in ("train", "train_epoch", "infer")},
                "params.safetensors": save_safetensors(
                    {k: np.ascontiguousarray(v, np.float32) for k, v in values.items()})}

    def as_bundle(self, params: Mapping[str, np.ndarray] | None = None) -> Bundle:
        """These graphs as an in-memory bundle without a base: what a runtime trainer
        (`GraphTrainer.for_bundle`) reads, so graphs are trained exactly as bundles are."""
        return Bundle({"features": {"shape": self.features_shape, "dtype": "float32"},
                       **self.manifest_sections()}, self.files(params))


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


class _StepBuilder:
    """Shared by the step graph and the epoch loop body: the head, loss and update."""

    def __init__(self, head_graph, features_input, params, loss, optimizer, l2):
        self.head_graph = head_graph
        self.features_input = features_input
        self.params = params
        self.loss = loss
        self.optimizer = optimizer
        self.l2 = l2

    def logits(self, b: GraphBuilder, features: Var, params: list[Var]) -> Var:
        names = [p.name for p in self.params]
        (logits,) = b.inline(self.head_graph, {self.features_input: features,
                                               **dict(zip(names, params, strict=True))})[:1]
        return logits

    def gradient_scale(self, sched) -> Var | None:
        return None if self.l2 else self.optimizer.gradient_scale(sched)

    def update(self, b: GraphBuilder, logits: Var, params, state, sched, *, targets=None,
               labels=None, sample_weight=None, need_loss: bool = True,
               scaled_targets: bool = False):
        """(loss or None, new params, new state) of one mini-batch: from the loss's
        `targets` when it has a closed form, else by differentiating the loss.
        scaled_targets: the targets already carry `gradient_scale` (loss not needed)."""
        scale = self.gradient_scale(sched)
        loss = None
        if targets is not None:
            seed = self.loss.logits_gradient(b, logits, targets)
            if scale is not None and not scaled_targets:
                seed = seed * scale
            grads = gradients(b, [logits], params, output_grads=[seed])
            if need_loss:
                loss = self.loss.batch_loss(b, logits, targets)
        else:
            scale = None
            loss = self.loss(b, logits, labels, sample_weight)
            grads = gradients(b, [loss], params)
        if self.l2:  # 0.5 * l2 * |p|^2 in the loss, l2 * p in the gradient
            if loss is not None:
                loss = loss + (0.5 * self.l2) * b.add_all([b.sum_all(p * p) for p in params])
            grads = [g + self.l2 * p for g, p in zip(grads, params)]
        new_params, new_state = self.optimizer.update(b, params, grads, state, sched,
                                                      prescaled=scale is not None)
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
    features_shape = (value_dims(features_vi) or [])[1:]
    initial = {n: numpy_helper.to_array(float_inits[n]) for n in names}
    shapes = {n: list((param_shapes or {}).get(n) or initial[n].shape) for n in names}
    params = [TensorSpec(n, shapes[n], n, f"{n}.updated", n) for n in names]
    state = [TensorSpec(f"{n}.{slot}", shapes[n], f"{n}.{slot}", f"{n}.{slot}.updated")
             for n in names for slot in optimizer.slots]
    step_builder = _StepBuilder(head_graph, features_vi.name, params, loss, optimizer, l2)

    train = _train_graph(step_builder, features_shape, params, state, optimizer)
    epoch = _epoch_graph(step_builder, features_shape, params, state, optimizer,
                         _static_classes(head))
    infer = _infer_graph(head_graph, features_vi.name, features_shape, params, loss)
    roles = {
        "train": {"inputs": {"features": "features", "labels": "labels",
                             "sample_weight": "sample_weight", "lr": "lr", "step": "step"},
                  "outputs": {"loss": "loss"}},
        "train_epoch": {"inputs": {"features": "features", "labels": "labels",
                                   "sample_weight": "sample_weight", "lr": "lr", "step": "step"},
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
    logits = step_builder.logits(b, features, p_vars)
    sched = optimizer.schedule(b, lr, step)
    targets = step_builder.loss.targets(b, labels, weights, b.shape_of(logits, 1, 2))
    loss, new_params, new_state = step_builder.update(
        b, logits, p_vars, s_vars, sched, targets=targets, labels=labels,
        sample_weight=weights)
    outputs, types = _param_outputs(params, state, new_params, new_state, optimizer)
    return b.model({"loss": loss, **outputs}, name="edgetune_train",
                   output_types={"loss": (np.float32, []), **types})


def _static_classes(head: onnx.ModelProto) -> int | None:
    dims = (value_dims(head.graph.output[0]) or []) if head.graph.output else []
    return dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None


def _class_count(b: GraphBuilder, params, p_vars, static: int | None) -> Var | None:
    """int64 [1]: the class count, from a parameter with a "classes" dimension or the
    head's static output shape; None when neither tells it."""
    for spec, var in zip(params, p_vars, strict=True):
        if CLASSES in spec.shape:
            axis = spec.shape.index(CLASSES)
            return b.shape_of(var, axis, axis + 1)
    return None if static is None else b.ints([static])


def _epoch_graph(step_builder: _StepBuilder, features_shape, params, state, optimizer,
                 static_classes: int | None):
    """k mini-batches in one call: an ONNX Scan over features [k, n, ...].

    Scan hands each iteration a view of the next mini-batch (a Loop with Slice copied
    it). What does not depend on the parameters runs once, outside the loop: the
    optimizer's per-step scalars, the loss's targets, and (without l2) the loss values,
    computed from the logits each step emits.
    """
    b = GraphBuilder()
    features = b.input("features", np.float32, [BATCHES, BATCH, *features_shape])
    labels = b.input("labels", np.int64, [BATCHES, BATCH])
    weights = b.input("sample_weight", np.float32, [BATCHES, BATCH])
    lr = b.input("lr", np.float32, [])
    first_step = b.input("step", np.int64, [])
    outer_p, outer_s = _declare_params(b, params, state, optimizer)
    batches = b.shape_of(labels, 0, 1)
    steps = first_step + b.Range(b.const(0, np.int64), b.Reshape(batches, b.ints([])),
                                 b.const(1, np.int64))
    sched = {k: b.Expand(v, batches) for k, v in optimizer.schedule(b, lr, steps).items()}
    classes = _class_count(b, params, outer_p, static_classes)
    targets = None if classes is None else step_builder.loss.targets(b, labels, weights,
                                                                     classes)
    hoist_loss = targets is not None and not step_builder.l2
    body_targets = targets
    scale = step_builder.gradient_scale(sched)
    if hoist_loss and scale is not None:
        scaled = step_builder.loss.scaled_targets(b, targets, b.Unsqueeze(scale, b.ints([1, 2])))
        body_targets = scaled or targets
    per_batch = {"features": features, **(body_targets or {"labels": labels,
                                                            "sample_weight": weights})}

    body_graph, scanned = _epoch_body(step_builder, features_shape, params, state, optimizer,
                                      per_batch, sched, targets, body_targets, hoist_loss)
    results = b.op("Scan", *outer_p, *[s for slots in outer_s for s in slots.values()],
                   *scanned, outputs=len(body_graph.output), body=body_graph,
                   num_scan_inputs=len(scanned))
    *final, emitted_all = results
    losses = step_builder.loss.batch_loss(b, emitted_all, targets) if hoist_loss else emitted_all
    graph_outputs = {"losses": losses}
    out_types = {"losses": (np.float32, [BATCHES])}
    for spec, value in zip(params + state, final, strict=True):
        graph_outputs[spec.train_output] = value
        out_types[spec.train_output] = (np.float32, spec.shape)
    return b.model(graph_outputs, name="edgetune_train_epoch", output_types=out_types)


def _epoch_body(step_builder: _StepBuilder, features_shape, params, state, optimizer,
                per_batch: dict, sched: dict, targets, body_targets, hoist_loss: bool):
    """The Scan body: one step on one mini-batch. Returns the body graph and the outer
    tensors to scan, in the order of its scan inputs."""
    prefix = "scan/"
    body = GraphBuilder(prefix=prefix)
    p_vars = [body.input(prefix + p.train_input, np.float32, p.shape) for p in params]
    s_flat = [body.input(prefix + s.train_input, np.float32, s.shape) for s in state]
    slots = iter(s_flat)
    s_vars = [{slot: next(slots) for slot in optimizer.slots} for _ in params]
    known = {"features": [BATCH, *features_shape], "labels": [BATCH], "sample_weight": [BATCH]}
    rows = {k: body.input(prefix + k, np.int64 if k == "labels" else np.float32, known.get(k))
            for k in per_batch}
    body_sched = {k: body.input(prefix + "sched." + k, np.float32, []) for k in sched}
    logits = step_builder.logits(body, rows["features"], p_vars)
    if targets is not None:
        loss, new_params, new_state = step_builder.update(
            body, logits, p_vars, s_vars, body_sched, targets={k: rows[k] for k in body_targets},
            need_loss=not hoist_loss, scaled_targets=body_targets is not targets)
    else:
        loss, new_params, new_state = step_builder.update(
            body, logits, p_vars, s_vars, body_sched, labels=rows["labels"],
            sample_weight=rows["sample_weight"])
    updated, updated_types = _param_outputs(params, state, new_params, new_state, optimizer)
    emitted = ("logits", logits, [BATCH, CLASSES]) if hoist_loss else ("loss", loss, [])
    # Scan matches outputs by position, so each leaves under its own name where it can:
    # an Identity to rename it would copy it every iteration.
    inputs = {i.name for i in body.inputs}
    outputs, types = {}, {}
    for key, var, value_type in [(k, v, updated_types[k]) for k, v in updated.items()] + [
            (emitted[0], emitted[1], (np.float32, emitted[2]))]:
        name = var.name if var.name not in inputs and var.name not in outputs else prefix + key
        outputs[name] = var
        types[name] = value_type
    body_graph = body.graph(outputs, name="epoch_body", output_types=types)

    # Each scan input costs a slice per iteration: pass only those the body reads
    # (plain SGD with its lr folded into the targets reads no scalar at all).
    read = {name for node in body_graph.node for name in node.input}
    scanned = [(prefix + k, v) for k, v in per_batch.items()]
    scanned += [(prefix + "sched." + k, v) for k, v in sched.items()]
    unread = {name for name, _ in scanned if name not in read}
    kept = [i for i in body_graph.input if i.name not in unread]
    del body_graph.input[:]
    body_graph.input.extend(kept)
    return body_graph, [v for name, v in scanned if name not in unread]


def _infer_graph(head_graph, features_name, features_shape, params, loss):
    b = GraphBuilder()
    features = b.input("features", np.float32, [BATCH, *features_shape])
    p_vars = {p.name: b.input(p.infer_input, np.float32, p.shape) for p in params}
    (logits,) = b.inline(head_graph, {features_name: features, **p_vars})[:1]
    return b.model({"logits": logits, "probabilities": loss.probabilities(b, logits)},
                   name="edgetune_infer")
