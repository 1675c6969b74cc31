"""Milliseconds per fine-tuning step of EfficientNet-Lite0's last block, side by side
with PyTorch eager in one process, one thread; and where edgetune's time goes.

The workload of bench/peers.py's last-block job: `convert(..., trainable="last:1")`
(the 1x1 `conv_head` 320->1280 with bias, ReLU6, global average pooling, a softmax head
1280->4), batch 32 of cached [320, 7, 7] activations of real photos, SGD (lr 0.01) and
Adam (lr 1e-3). PyTorch: `Conv2d` + `relu6` + mean + `Linear`, `F.cross_entropy`,
`zero_grad(set_to_none=True)`, `backward()`, `step()`. Rounds alternate which system
goes first; each timing is `--steps` steps; the result is the median and the best
timing per step over all rounds.

    flock /tmp/edgetune-heavy.lock .venv/bin/python bench/last_block.py
    .venv/bin/python bench/last_block.py --profile      # onnxruntime's per-node times
    .venv/bin/python bench/last_block.py --save DIR     # the graphs, to inspect
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, revision  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import photo_crops  # noqa: E402

from edgetune.converter.convert import convert  # noqa: E402
from edgetune.converter.heads import SoftmaxClassifier  # noqa: E402
from edgetune.converter.optimizers import SGD, Adam  # noqa: E402
from edgetune.runtime.trainer import GraphTrainer, initial_train_values, make_session  # noqa: E402

BATCH = 32
LR = {"sgd": 0.01, "adam": 1e-3}
NAMES = {"conv_w": "base/conv_head.weight", "conv_b": "base/conv_head.bias",
         "W": "head.weight", "b": "head.bias"}


def bundles(opts):
    out = {}
    for opt in opts:
        make = SGD if opt == "sgd" else Adam
        out[opt] = convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                           optimizer=make(lr=LR[opt]), trainable="last:1")
    return out


def activations(bundle):
    """96 rows of [320, 7, 7]: 80 photos' activations at the cut, then the first 16 again
    (three whole mini-batches used in turn, as bench/peers.py)."""
    images, labels = photo_crops(per_class=20)
    sess = make_session(bundle.graph("base"), 1)
    acts = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: images[i:i + 16]})[0]
                           for i in range(0, len(images), 16)]).astype(np.float32)
    return np.concatenate([acts, acts[:16]]), np.concatenate([labels, labels[:16]])


def initial(bundle):
    values = initial_train_values(bundle)
    # a small random head (not zeros): with W = 0 no gradient reaches conv_head
    values["head.weight"] = (np.random.default_rng(1).standard_normal((4, 1280))
                             * 0.01).astype(np.float32)
    return values


class EdgetuneSteps:
    def __init__(self, bundle, opt, per_call=None, train=None):
        specs = bundle.params + bundle.state
        self.trainer = GraphTrainer(train or bundle.graph("train"), initial(bundle), None,
                                    {s["train_input"]: s["train_output"] for s in specs},
                                    epoch=bundle.graph("train_epoch") if per_call else None,
                                    lr=LR[opt], threads=1)
        self.per_call = per_call

    def train(self, X, y, steps):
        if not self.per_call:
            for i in range(steps):
                s = (i * BATCH) % len(y)
                self.trainer.step(X[s:s + BATCH], y[s:s + BATCH])
            return
        k = self.per_call
        for done in range(0, steps, k):
            rows = min(k, steps - done) * BATCH
            s = (done * BATCH) % len(y)
            self.trainer.epoch(X[s:s + rows], y[s:s + rows], None, BATCH)

    def params(self):
        return {k: self.trainer.values[v] for k, v in NAMES.items()}


class TorchSteps:
    def __init__(self, bundle, opt):
        values = initial(bundle)
        w = torch.from_numpy(values[NAMES["conv_w"]])
        self.conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 1)
        self.head = torch.nn.Linear(1280, 4)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.from_numpy(values[NAMES["conv_b"]]))
            self.head.weight.copy_(torch.from_numpy(values[NAMES["W"]]))
            self.head.bias.copy_(torch.from_numpy(values[NAMES["b"]]))
        params = list(self.conv.parameters()) + list(self.head.parameters())
        self.opt = (torch.optim.SGD(params, lr=LR[opt]) if opt == "sgd" else
                    torch.optim.Adam(params, lr=LR[opt]))

    def train(self, X, y, steps):
        tx, ty = torch.from_numpy(X), torch.from_numpy(y)
        for i in range(steps):
            s = (i * BATCH) % len(y)
            self.opt.zero_grad(set_to_none=True)
            pooled = torch.nn.functional.relu6(self.conv(tx[s:s + BATCH])).mean(dim=(2, 3))
            loss = torch.nn.functional.cross_entropy(self.head(pooled), ty[s:s + BATCH])
            loss.backward()
            self.opt.step()

    def params(self):
        return {"conv_w": self.conv.weight, "conv_b": self.conv.bias, "W": self.head.weight,
                "b": self.head.bias}


def profile(bundle, opt, X, y, steps: int, train=None) -> list:
    """(op type, µs per step, count per step) of the single-step graph, by total time;
    and the heaviest nodes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "prof")
        from edgetune.runtime.trainer import DISABLED_OPTIMIZERS

        sess = ort.InferenceSession(train or bundle.graph("train"), options,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
        values = initial(bundle)
        for i in range(steps + 2):
            s = (i * BATCH) % len(y)
            sess.run(None, {"features": X[s:s + BATCH], "labels": y[s:s + BATCH],
                            "sample_weight": np.ones(BATCH, np.float32),
                            "lr": np.array(LR[opt], np.float32),
                            "step": np.array(i + 1, np.int64), **values})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[2]["ts"]  # two warm-up runs
    by_op, by_node = {}, {}
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < start or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        t, c = by_op.get(op, (0.0, 0))
        by_op[op] = (t + e["dur"], c + 1)
        key = (op, e["name"][:-12])
        by_node[key] = by_node.get(key, 0.0) + e["dur"]
        by_node.setdefault(("shapes", key), e["args"].get("input_type_shape"))
    total_run = sum(r["dur"] for r in runs[2:]) / steps
    rows = sorted(((op, t / steps, c // steps) for op, (t, c) in by_op.items()),
                  key=lambda r: -r[1])
    nodes = sorted(((k, v / steps) for k, v in by_node.items() if k[0] != "shapes"),
                   key=lambda r: -r[1])[:12]
    return total_run, rows, [(k, t, by_node[("shapes", k)]) for k, t in nodes]


def timed(systems: dict, X, y, steps: int, rounds: int) -> dict:
    times = {name: [] for name in systems}
    names = list(systems)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            trainer = systems[name]
            t0 = time.perf_counter()
            trainer.train(X, y, steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opt", default="sgd,adam", help="optimizers, comma-separated")
    parser.add_argument("--steps", type=int, default=9, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="onnxruntime's per-node times")
    parser.add_argument("--save", help="write each optimizer's bundle to DIR/last1-OPT.edgetune")
    parser.add_argument("--train", help="time this train.onnx (same inputs) instead of the "
                                        "bundle's single-step graph (one optimizer)")
    parser.add_argument("--also", action="append", default=[],
                        help="LABEL=PATH: also time this train.onnx ({opt} in PATH is the "
                             "optimizer), e.g. an earlier commit's graph")
    parser.add_argument("--no-epoch", action="store_true", help="skip the epoch graph")
    args = parser.parse_args()
    torch.set_num_threads(1)
    opts = args.opt.split(",")
    built = bundles(opts)
    X, y = activations(built[opts[0]])
    train = Path(args.train).read_bytes() if args.train else None
    print(machine("onnxruntime", "torch", "numpy"), revision())
    for opt in opts:
        bundle = built[opt]
        if args.save:
            bundle.save(Path(args.save) / f"last1-{opt}.edgetune", overwrite=True)
        if args.profile:
            run, rows, nodes = profile(bundle, opt, X, y, args.steps, train)
            print(f"\n{opt}: profiled model_run {run:.0f} µs per step; by op type "
                  f"(µs per step, kernels):")
            for op, t, c in rows:
                print(f"  {op:22s} {t:8.0f} {c:4d}")
            print("  heaviest nodes:")
            for (op, name), t, shapes in nodes:
                print(f"  {t:8.0f} {op} {name} {shapes}")
            continue
        systems = {"edgetune single-step": EdgetuneSteps(bundle, opt, train=train)}
        if not args.no_epoch and not train:
            systems["edgetune epoch (3 per call)"] = EdgetuneSteps(bundle, opt, per_call=3)
        others = dict(item.split("=", 1) for item in args.also)
        for label, path in others.items():
            systems[label] = EdgetuneSteps(bundle, opt,
                                           train=Path(path.format(opt=opt)).read_bytes())
        systems["PyTorch eager"] = TorchSteps(bundle, opt)
        for s in systems.values():  # warm up and cross-check after 30 steps
            s.train(X, y, 3)
        check = {name: (EdgetuneSteps(bundle, opt, train=train) if "single" in name else
                        EdgetuneSteps(bundle, opt, per_call=3) if "epoch" in name else
                        EdgetuneSteps(bundle, opt, train=Path(others[name].format(opt=opt))
                                      .read_bytes()) if name in others else
                        TorchSteps(bundle, opt)) for name in systems}
        final = {}
        for name, s in check.items():
            s.train(X, y, 30)
            final[name] = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v)
                           for k, v in s.params().items()}
        ref = final["edgetune single-step"]
        times = timed(systems, X, y, args.steps, args.rounds)
        eager = times["PyTorch eager"]
        print(f"\n{opt}: ms per step, median (best) over {args.rounds} rounds of "
              f"{args.steps} steps; ratio to PyTorch eager median (best)")
        for name, ts in times.items():
            diff = max(float(np.abs(final[name][k] - ref[k]).max()) for k in ref)
            print(f"  {name:28s} {statistics.median(ts) * 1e3:7.2f} ({min(ts) * 1e3:6.2f})  "
                  f"{statistics.median(ts) / statistics.median(eager):.2f}x "
                  f"({min(ts) / min(eager):.2f}x)  max|param - single-step| after 30: "
                  f"{diff:.1e}")


if __name__ == "__main__":
    main()
