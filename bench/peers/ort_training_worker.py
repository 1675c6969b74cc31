"""ONNX Runtime on-device training peer worker (onnxruntime-training 1.19.2, its last release).

Runs in bench/peers/.venvs/ortt (onnxruntime-training + onnx + numpy):

    .venvs/ortt/bin/python ort_training_worker.py JOB.json

Tasks (job["task"]):
- build: training artifacts for each head with `onnxruntime.training.artifacts.
  generate_artifacts` from an ONNX model of the same head (Gemm(x, W, b, transB=1),
  W [classes, features]): CrossEntropyLoss, SGD or AdamW (eps 1e-8, weight decay 0:
  Adam), which writes training_model.onnx, eval_model.onnx, optimizer_model.onnx and a
  checkpoint.
- head, personalize, base: measurements with `onnxruntime.training.api` (CheckpointState,
  Module, Optimizer: per step one `module(x, y)` call for forward + backward, one
  `optimizer.step()`, one `module.lazy_reset_grad()`) and, for the base, the stock
  `onnxruntime.InferenceSession` of the same package on edgetune's base.onnx.

`import onnxruntime.training` runs the package's __init__, which imports torch (for its
amp and optim helpers that wrap PyTorch training). Neither the artifacts generator nor the
on-device api needs torch, so `training_package()` registers the package without running
that __init__ and imports only `artifacts` / `api`: the footprint of this peer does not
include torch.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # personalization time counts from here, imports included

import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import _job  # noqa: E402


def training_package():
    """onnxruntime.training without its torch-importing __init__."""
    import onnxruntime

    if "onnxruntime.training" not in sys.modules:
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
        sys.modules["onnxruntime.training"] = pkg
    return sys.modules["onnxruntime.training"]


# --------------------------------------------------------------------------- build


def head_model(onnx, np, W0, b0):
    from onnx import TensorProto, helper, numpy_helper

    classes, features = W0.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(np.asarray(W0, np.float32), "W"),
         numpy_helper.from_array(np.asarray(b0, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build(job: dict) -> dict:
    import numpy as np
    import onnx

    training_package()
    from onnxruntime.training import artifacts, onnxblock

    out = Path(job["out"])
    report = {}
    for cfg in job["heads"]:
        t = time.perf_counter()
        model = head_model(onnx, np, np.load(cfg["W0"]), np.load(cfg["b0"]))
        optimizer = (artifacts.OptimType.SGD if cfg["optimizer"] == "sgd" else
                     onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0))
        folder = out / cfg["name"]
        folder.mkdir(parents=True, exist_ok=True)
        artifacts.generate_artifacts(model, requires_grad=["W", "b"],
                                     loss=artifacts.LossType.CrossEntropyLoss,
                                     optimizer=optimizer, artifact_directory=folder)
        if cfg["optimizer"] == "adam":
            torch_mode(onnx, folder / "optimizer_model.onnx")
        report[cfg["name"]] = time.perf_counter() - t
    return report


def torch_mode(onnx, path: Path) -> None:
    """onnxblock's AdamW writes `adam_mode=1` (the Hugging Face variant: eps added to
    sqrt(v) before v's bias correction), which moves a parameter up to 6e-5 further than
    torch.optim.Adam in one step where gradients are tiny. `adam_mode=0` is PyTorch's
    algorithm, the one every other system here runs; with weight decay 0 it is Adam."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = 0
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- device side


class Trainer:
    def __init__(self, folder: str, lr: float, batch: int, threads: int):
        import onnxruntime as ort

        training_package()
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        self.module = Module(str(folder / "training_model.onnx"), self.state,
                             str(folder / "eval_model.onnx"), session_options=options)
        self.optimizer = Optimizer(str(folder / "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(lr)
        self.module.train()
        self.batch = batch

    def step_rows(self, x, y):
        loss = self.module(x, y)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return loss

    def train(self, X, y, steps):
        B, module, optimizer = self.batch, self.module, self.optimizer
        for i in _job.cycle(len(y), B, steps):
            module(X[i:i + B], y[i:i + B])
            optimizer.step()
            module.lazy_reset_grad()

    def params(self):
        return {"W": self.state.parameters["W"].data, "b": self.state.parameters["b"].data}


def head(job: dict) -> dict:
    import numpy as np

    def variants(cfg):
        return {"training api": lambda: Trainer(cfg["artifacts"], cfg["lr"], job["batch"],
                                                job["threads"])}

    return _job.train_task(job, variants, np)


def session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def base(job: dict) -> dict:
    import numpy as np

    images = np.load(job["images"])
    results = {}
    for precision, path in job["models"].items():
        sess = session(path, job["threads"])
        name = sess.get_inputs()[0].name
        for batch in job["batches"]:
            chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
            feats = np.concatenate([sess.run(None, {name: c})[0] for c in chunks])
            np.save(Path(job["out"]) / f"ortt.{precision}.b{batch}.npy", feats)
            results[f"{precision}|{batch}"] = _job.timed(
                lambda chunks=chunks, sess=sess, name=name: [sess.run(None, {name: c})
                                                                for c in chunks],
                len(images), job["repeats"])
    return {"base": results}


def personalize(job: dict) -> dict:
    import numpy as np
    import onnxruntime  # noqa: F401  (the import is part of the measured pipeline)

    training_package()
    from onnxruntime.training import api  # noqa: F401

    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}  # the high-water mark at each phase's end
    t = time.perf_counter()
    images, labels = np.load(job["images"]), np.load(job["labels"])
    sess = session(job["base_onnx"], job["threads"])
    trainer = Trainer(job["artifacts"], job["lr"], job["batch"], job["threads"])
    phases["model load"] = time.perf_counter() - t
    mem["model load"] = _job.peak_mib()
    t = time.perf_counter()
    name, base_batch = sess.get_inputs()[0].name, job["base_batch"]
    feats = np.concatenate([sess.run(None, {name: images[i:i + base_batch]})[0]
                            for i in range(0, len(images), base_batch)])
    phases["features"] = time.perf_counter() - t
    mem["features"] = _job.peak_mib()
    t = time.perf_counter()
    losses = _job.personalize_loop(len(labels), job["epochs"], job["batch"],
                                   lambda rows: trainer.step_rows(feats[rows], labels[rows]), np)
    phases["training"] = time.perf_counter() - t
    mem["training"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu = _job.cpu_seconds()
    peak = _job.peak_mib()
    np.save(Path(job["out"]) / "ortt.personalize.features.npy", feats)
    W, b = trainer.params().values()
    accuracy = float(((feats @ W.T + b).argmax(1) == labels).mean())
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "final_loss": float(losses[-1][-1]), "train_accuracy": accuracy}


TASKS = {"build": build, "train": head, "base": base, "personalize": personalize}

if __name__ == "__main__":
    job = _job.load_job()
    _job.emit(TASKS[job["task"]](job))
