"""How far edgetune's epoch graph is from the floor of a training step on onnxruntime.

Softmax head 1280->4, batch 32, SGD, one thread, 200 mini-batches per call. Side by
side, interleaved in one process:

- edgetune's epoch graph (`build_training_graphs`), as the runtime runs it;
- a hand-written Scan graph doing the same update in the fewest kernels we found
  (forward Gemm with the bias as its C, Softmax, Mul, Sub, one Gemm updating W in place,
  one Gemm with a ones row updating b; no loss values), checked to reach the same
  parameters;
- the same hand-written step under a Loop that Slices each mini-batch (the layout the
  epoch graph had before the Scan: every Slice copies the batch);
- a Scan that runs only the forward Gemm, and one that runs nothing but a ReduceSum
  per mini-batch: the cost of the loop itself.

    python bench/step_floor.py        # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from common import BENCHMARKS, cpu_model, write_section  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from edgetune.converter.heads import SoftmaxClassifier  # noqa: E402
from edgetune.converter.losses import SoftmaxCrossEntropy  # noqa: E402
from edgetune.converter.optimizers import SGD  # noqa: E402
from edgetune.converter.train_graph import build_training_graphs  # noqa: E402
from edgetune.runtime.trainer import GraphTrainer, make_session  # noqa: E402

F, C, B, LR = 1280, 4, 32, 0.01
HEADING = "## Training step against a hand-written floor"


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "floor", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _step_nodes(x: str) -> list:
    """One SGD step on mini-batch `x` [B, F]; W [C, F], b [C, 1]; targets ys = Y^T * s
    and row scales s [1, B] already carry lr / B (computed once per call)."""
    n = helper.make_node
    return [n("Gemm", ["W", x, "b"], ["z"], transB=1),  # [C, B]
            n("Softmax", ["z"], ["p"], axis=0),
            n("Mul", ["p", "s"], ["ps"]),
            n("Sub", ["ps", "ys"], ["d"]),
            n("Gemm", ["d", x, "W"], ["W2"], alpha=-1.0, beta=1.0),
            n("Gemm", ["d", "ones", "b"], ["b2"], alpha=-1.0, beta=1.0)]


def floor_scan(k: int) -> bytes:
    body = helper.make_graph(
        _step_nodes("x"), "step",
        [_vi("W", [C, F]), _vi("b", [C, 1]), _vi("x", [B, F]), _vi("ys", [C, B]),
         _vi("s", [1, B])],
        [_vi("W2", [C, F]), _vi("b2", [C, 1])],
        [helper.make_tensor("ones", TensorProto.FLOAT, [B, 1], [1.0] * B)])
    scan = helper.make_node("Scan", ["W0", "b0", "X", "YS", "S"], ["Wf", "bf"],
                            num_scan_inputs=3, body=body)
    return _model([scan], [_vi("W0", [C, F]), _vi("b0", [C, 1]), _vi("X", [k, B, F]),
                           _vi("YS", [k, C, B]), _vi("S", [k, 1, B])],
                  [_vi("Wf", [C, F]), _vi("bf", [C, 1])])


def floor_loop(k: int) -> bytes:
    n = helper.make_node
    i64 = TensorProto.INT64
    nodes = [n("Add", ["start", "Bv"], ["end"]),
             n("Slice", ["X", "start", "end", "axis0"], ["x"]),
             n("Gather", ["YS", "i"], ["ys"], axis=0),
             n("Gather", ["S", "i"], ["s"], axis=0),
             *_step_nodes("x"),
             n("Identity", ["cond"], ["cond2"])]
    body = helper.make_graph(
        nodes, "step",
        [_vi("i", [], i64), _vi("cond", [], TensorProto.BOOL), _vi("start", [1], i64),
         _vi("W", [C, F]), _vi("b", [C, 1])],
        [_vi("cond2", [], TensorProto.BOOL), _vi("end", [1], i64), _vi("W2", [C, F]),
         _vi("b2", [C, 1])],
        [helper.make_tensor("ones", TensorProto.FLOAT, [B, 1], [1.0] * B),
         helper.make_tensor("axis0", i64, [1], [0]), helper.make_tensor("Bv", i64, [1], [B])])
    loop = n("Loop", ["trips", "", "s0", "W0", "b0"], ["sf", "Wf", "bf"], body=body)
    return _model([loop], [_vi("W0", [C, F]), _vi("b0", [C, 1]), _vi("X", [k * B, F]),
                           _vi("YS", [k, C, B]), _vi("S", [k, 1, B]), _vi("trips", [], i64),
                           _vi("s0", [1], i64)],
                  [_vi("Wf", [C, F]), _vi("bf", [C, 1])])


def loop_only(k: int, forward: bool) -> bytes:
    n = helper.make_node
    if forward:
        work, out = n("Gemm", ["W", "x"], ["z"], transB=1), [C, B]
    else:
        work, out = n("ReduceSum", ["x"], ["z"], keepdims=0), []
    body = helper.make_graph([work, n("Identity", ["W"], ["W2"])], "step",
                             [_vi("W", [C, F]), _vi("x", [B, F])],
                             [_vi("W2", [C, F]), _vi("z", out)])
    scan = n("Scan", ["W0", "X"], ["Wf", "Z"], num_scan_inputs=1, body=body)
    return _model([scan], [_vi("W0", [C, F]), _vi("X", [k, B, F])],
                  [_vi("Wf", [C, F]), _vi("Z", [k, *out])])


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each fn, timed in turns so that drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="mini-batches per call")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(BENCHMARKS))
    args = parser.parse_args()
    k = args.batches
    rng = np.random.default_rng(0)
    X = rng.standard_normal((k, B, F)).astype(np.float32)
    y = rng.integers(0, C, (k, B))
    W0 = (rng.standard_normal((C, F)) * 0.01).astype(np.float32)
    b0 = np.zeros(C, np.float32)

    head, shapes = SoftmaxClassifier(C).build([F])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=LR), param_shapes=shapes)
    trainer = GraphTrainer.for_bundle(graphs.as_bundle({"head.weight": W0, "head.bias": b0}),
                                      lr=LR, threads=1)
    epoch = trainer._epoch
    feeds = {"features": X, "labels": y, "sample_weight": np.ones((k, B), np.float32),
             "lr": np.array(LR, np.float32), "step": np.array(1, np.int64),
             "head.weight": W0, "head.bias": b0}

    scale = np.full((k, 1, B), LR / B, np.float32)
    ys = (np.eye(C, dtype=np.float32)[y].transpose(0, 2, 1) * scale).astype(np.float32)
    floor_feeds = {"W0": W0, "b0": b0[:, None], "X": X, "YS": ys, "S": scale}
    sessions = {
        "edgetune epoch graph": (epoch, feeds),
        "hand-written floor, Scan": (make_session(floor_scan(k), 1), floor_feeds),
        "hand-written floor, Loop + Slice": (
            make_session(floor_loop(k), 1),
            {**floor_feeds, "X": X.reshape(k * B, F), "trips": np.array(k, np.int64),
             "s0": np.zeros(1, np.int64)}),
        "Scan with only the forward Gemm": (make_session(loop_only(k, True), 1),
                                            {"W0": W0, "X": X}),
        "Scan with only a ReduceSum": (make_session(loop_only(k, False), 1),
                                       {"W0": W0, "X": X}),
    }
    # The floor is a real training step: it reaches edgetune's parameters.
    ours = epoch.run(["head.weight.updated", "head.bias.updated"], feeds)
    theirs = sessions["hand-written floor, Scan"][0].run(["Wf", "bf"], floor_feeds)
    agree = max(float(np.abs(ours[0] - theirs[0]).max()),
                float(np.abs(ours[1] - theirs[1][:, 0]).max()))
    assert agree < 1e-5, f"the floor graph does not train like edgetune's ({agree:.1e})"

    med = interleaved({name: (lambda s=s, f=f: s.run(None, f))
                       for name, (s, f) in sessions.items()}, args.rounds)
    per_step = {name: v / k * 1e6 for name, v in med.items()}
    ours_us = per_step["edgetune epoch graph"]
    lines = [HEADING, "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}. "
             f"Reproduce: `python bench/step_floor.py`; softmax head {F}→{C}, batch {B}, SGD, "
             f"one thread, {k} mini-batches per call, median of {args.rounds} interleaved "
             f"calls.", "",
             "| graph | µs per step | edgetune ÷ this |", "|---|---:|---:|"]
    lines += [f"| {name} | {us:.1f} | {ours_us / us:.2f}x |" for name, us in per_step.items()]
    lines += ["", f"The hand-written floor reaches edgetune's parameters within {agree:.1e}. "
              "It is the same update in 6 kernels per step; edgetune's body runs 9 (the head "
              "adds its bias after a Transpose, and the bias update is a ReduceSum and a "
              "Sub), and emits each step's logits so the loss values are computed after "
              "the loop. What no graph avoids: the Scan's own cost per iteration and two "
              "GEMMs; each further kernel costs about 1 µs.", ""]
    write_section(Path(args.out), HEADING, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
