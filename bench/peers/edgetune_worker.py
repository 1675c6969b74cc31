"""edgetune worker: the same jobs as the peers' workers, with edgetune's runtime.

Runs in the project's virtual environment and imports only `edgetune.runtime` (numpy,
onnxruntime, Pillow, safetensors), as a device would:

    .venv/bin/python bench/peers/edgetune_worker.py JOB.json

Tasks (job["task"]):
- train: `GraphTrainer` on the graphs the driver built (`build_training_graphs` for
  the head, `convert(..., trainable="last:1")` for the last block): the single-step
  graph (one onnxruntime call per mini-batch) and the epoch graph (one call runs k
  mini-batches through an ONNX Scan).
- personalize: `Personalizer(bundle, profile, precision=...)`, `add_samples` (base graph,
  SQLite store), `fit(epochs, batch_size=32, early_stop=False)` (epoch graph, checkpoint
  at the end); the bundle trains the head or (last:1) the last block too.
- first_answer: a new profile, one sample per class (`add_samples`), the first
  `predict` (prototypes: nearest class mean, cosine), from the process start.
- reopen: a personalized profile opened again (`Personalizer(profile=..., read_only=True)`,
  as `edgetune predict` does) and its first `predict`.
- base: images per second of base.onnx / base.int8.onnx (`make_session`, as the
  Personalizer opens them).
- gemm: GFLOP/s of a large float32 matrix product (numpy's matmul; onnxruntime's MatMul),
  this machine's practical peak at the job's thread count.
- profile: where the time of a training step goes (onnxruntime's profiler, and a graph
  with the same inputs and outputs but no computation); an analysis, not a device task,
  so it may import onnx.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # personalization time counts from here, imports included

import sys  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import _job  # noqa: E402


class Trainer:
    """`GraphTrainer.step` per mini-batch, or `GraphTrainer.epoch` per k mini-batches."""

    def __init__(self, np, cfg: dict, batch: int, threads: int, per_call: int | None):
        from edgetune.runtime.trainer import GraphTrainer

        params = {name: np.load(path) for name, path in cfg["params"].items()}
        state = {name: np.zeros_like(params[param]) for name, param in cfg["state"].items()}
        self.trainer = GraphTrainer(cfg["train_onnx"], params, state, cfg["io"],
                                    epoch=cfg["epoch_onnx"] if per_call else None,
                                    lr=cfg["lr"], threads=threads)
        self.names, self.batch, self.per_call = cfg["names"], batch, per_call

    def train(self, X, y, steps):
        B, trainer = self.batch, self.trainer
        if not self.per_call:
            for i in _job.cycle(len(y), B, steps):
                trainer.step(X[i:i + B], y[i:i + B])
            return
        k = self.per_call
        for done in range(0, steps, k):
            rows = min(k, steps - done) * B
            start = (done * B) % len(y)
            trainer.epoch(X[start:start + rows], y[start:start + rows], None, B)

    def params(self):
        return {short: self.trainer.values[name] for short, name in self.names.items()}


def train(job: dict) -> dict:
    import numpy as np

    def variants(cfg):
        out = {"single-step graph": lambda: Trainer(np, cfg, job["batch"], job["threads"], None)}
        for k in cfg["epoch_batches"]:
            out[f"epoch graph, {k} batches per call"] = (
                lambda k=k: Trainer(np, cfg, job["batch"], job["threads"], k))
        return out

    return _job.train_task(job, variants, np)


def base(job: dict) -> dict:
    import numpy as np

    from edgetune.runtime.trainer import make_session

    images = np.load(job["images"])
    results = {}
    for precision, path in job["models"].items():
        sess = make_session(path, job["threads"])
        name = sess.get_inputs()[0].name
        for batch in job["batches"]:
            chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
            feats = np.concatenate([sess.run(None, {name: c})[0] for c in chunks])
            np.save(Path(job["out"]) / f"edgetune.{precision}.b{batch}.npy", feats)
            results[f"{precision}|{batch}"] = _job.timed(
                lambda chunks=chunks, sess=sess, name=name: [sess.run(None, {name: c})
                                                                for c in chunks],
                len(images), job["repeats"])
    return {"base": results}


def personalize(job: dict) -> dict:
    import numpy as np

    from edgetune.runtime import personalizer
    from edgetune.runtime.personalizer import Personalizer

    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}  # the high-water mark at each phase's end
    personalizer.BASE_BATCH = job["base_batch"]
    t = time.perf_counter()
    images, labels = np.load(job["images"]), np.load(job["labels"])
    names = [f"c{i}" for i in labels]
    profile = Path(job["out"]) / f"profile-{time.time_ns()}"
    p = Personalizer(job["bundle"], profile, threads=job["threads"], seed=0,
                     precision=job.get("precision"))
    p._sessions.base()  # made lazily by the first add_samples; counted as model load
    phases["model load"] = time.perf_counter() - t
    mem["model load"] = _job.peak_mib()
    t = time.perf_counter()
    p.add_samples(list(images), names)
    phases["features"] = time.perf_counter() - t
    mem["features"] = _job.peak_mib()
    t = time.perf_counter()
    records = p.fit(epochs=job["epochs"], batch_size=job["batch"], early_stop=False)
    phases["training"] = time.perf_counter() - t
    mem["training"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu = _job.cpu_seconds()
    peak = _job.peak_mib()
    X, _ = p.store.features_and_labels()
    np.save(Path(job["out"]) / "edgetune.personalize.features.npy", X)
    accuracy = float(np.mean([r["label"] == t for r, t in zip(p.predict_features(X), names)]))
    p.close()
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "final_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
            "train_accuracy": accuracy}


def _photos(job: dict):
    """The samples (one per class) and the query, as HxWx3 uint8 arrays (read from a
    memory-mapped .npy: only these rows)."""
    import numpy as np

    images = np.load(job["images"], mmap_mode="r")
    return [np.array(images[i]) for i in job["samples"]], np.array(images[job["query"]])


def first_answer(job: dict) -> dict:
    """Process start -> new profile -> one sample per class -> the first prediction.
    job["cold"]: with an empty cache folder, as the first run on a machine."""
    import os

    if job.get("cold"):
        os.environ["EDGETUNE_CACHE"] = str(Path(job["out"]) / f"cache-{time.time_ns()}")
    from edgetune.runtime.personalizer import Personalizer

    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}  # the high-water mark at each phase's end
    samples, query = _photos(job)
    t = time.perf_counter()
    p = Personalizer(job["bundle"], Path(job["out"]) / f"first-{time.time_ns()}",
                     threads=job["threads"], precision=job["precision"])
    phases["open"] = time.perf_counter() - t
    mem["open"] = _job.peak_mib()
    t = time.perf_counter()
    p.add_samples(samples, [f"c{i}" for i in range(len(samples))])
    phases["samples"] = time.perf_counter() - t
    mem["samples"] = _job.peak_mib()
    t = time.perf_counter()
    answer = p.predict(query)
    phases["answer"] = time.perf_counter() - t
    mem["answer"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu, peak = _job.cpu_seconds(), _job.peak_mib()
    p.close()
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "answer": answer["label"], "source": answer["source"]}


def reopen(job: dict) -> dict:
    """A personalized profile opened again in a new process, and its first prediction;
    "after imports" counts from the end of `import edgetune.runtime.personalizer`."""
    from edgetune.runtime.personalizer import Personalizer

    imported = time.perf_counter()
    phases = {"import": imported - T0}
    _, query = _photos({**job, "samples": []})
    t = time.perf_counter()
    with Personalizer(profile=job["profile"], read_only=True, threads=job["threads"]) as p:
        phases["open"] = time.perf_counter() - t
        t = time.perf_counter()
        answer = p.predict(query)
        done = time.perf_counter()
        phases["answer"] = done - t
        # reading the query photo from the .npy is the test's, not the device's, work
        phases["after imports"] = phases["open"] + phases["answer"]
    cpu, peak = _job.cpu_seconds(), _job.peak_mib()
    return {"total": done - T0, "cpu": cpu, "phases": phases, "peak_mib": peak,
            "answer": answer["label"], "source": answer["source"]}


def gemm(job: dict) -> dict:
    """Seconds per n x n float32 matrix product: numpy's matmul (its BLAS, threads from
    OPENBLAS_NUM_THREADS, which the driver sets) and onnxruntime's MatMul (MLAS, the
    kernels that run the base) at job["threads"]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edgetune.runtime.trainer import make_session

    results = {}
    rng = np.random.default_rng(0)
    for n in job["sizes"]:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        results[f"numpy|{n}"] = _job.timed(lambda a=a, b=b: a @ b, 1, job["repeats"])
        spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ABC"]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                                  spec[:2], spec[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        sess = make_session(model.SerializeToString(), job["threads"])
        results[f"onnxruntime|{n}"] = _job.timed(
            lambda a=a, b=b, sess=sess: sess.run(None, {"A": a, "B": b}), 1, job["repeats"])
    return {"gemm": results}


def _profile_session(path: str, threads: int, prefix: str):
    import onnxruntime as ort

    from edgetune.runtime.trainer import DISABLED_OPTIMIZERS

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def _summarize(profile_file: str, steps_per_run: int) -> dict:
    """Per training step, medians over the profiled runs (the first, which allocates, is
    dropped): time inside onnxruntime's run, the sum of its kernels (a Scan's body nodes
    counted, the Scan node itself not, as it contains them), and the heaviest nodes."""
    import bisect
    import collections
    import json
    import statistics

    events = json.loads(Path(profile_file).read_text())
    runs = sorted((e["ts"], e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[1:]
    nodes = sorted((e["ts"], e["dur"], e["args"].get("op_name"), e["name"][:-len("_kernel_time")],
                    [list(d.values())[0] for d in e["args"].get("input_type_shape", [])])
                   for e in events if e.get("cat") == "Node"
                   and e.get("name", "").endswith("_kernel_time")
                   and e["args"].get("op_name") not in ("Loop", "Scan"))
    starts = [n[0] for n in nodes]
    kernel, counts = [], []
    per_node: dict = collections.defaultdict(list)
    shapes = {}
    for ts, dur in runs:
        inside = nodes[bisect.bisect_left(starts, ts):bisect.bisect_right(starts, ts + dur)]
        kernel.append(sum(n[1] for n in inside))
        counts.append(len(inside))
        run_nodes: dict = collections.defaultdict(float)
        for n in inside:
            run_nodes[(n[2], n[3])] += n[1]
            shapes[(n[2], n[3])] = n[4]
        for key, value in run_nodes.items():
            per_node[key].append(value)
    node_us = {k: statistics.median(v) / steps_per_run for k, v in per_node.items()}
    per_op: dict = collections.defaultdict(float)
    for (op, _), v in node_us.items():
        per_op[op] += v
    kinds: dict = collections.defaultdict(float)  # convolutions by their weight's shape
    for (op, node), v in node_us.items():
        w = shapes[(op, node)][1] if len(shapes[(op, node)]) > 1 else []
        if "Conv" in op and len(w) == 4:
            kinds["depthwise" if w[1] == 1 and w[2] > 1 else
                  "1x1" if w[2] == w[3] == 1 else f"{w[2]}x{w[3]}"] += v
    top = sorted(node_us.items(), key=lambda kv: -kv[1])[:8]
    return {
        "runs": len(runs),
        "model_run_us": statistics.median(d for _, d in runs) / steps_per_run,
        "kernel_us": statistics.median(kernel) / steps_per_run,
        "kernels_per_step": statistics.median(counts) / steps_per_run,
        "ops": {op: v for op, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]},
        "conv_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "top_nodes": [{"op": k[0], "node": k[1], "us": v, "inputs": shapes[k]}
                      for k, v in top],
    }


def _passthrough(cfg: dict, threads: int):
    """A graph with the train graph's inputs and outputs and nothing in between (each
    output an Identity of its input): what one run costs before any computation."""
    import onnx
    from onnx import helper

    from edgetune.runtime.trainer import make_session

    train = onnx.load(cfg["train_onnx"])
    loss = train.graph.output[0].name
    nodes = [helper.make_node("Identity", ["lr"], [loss])]
    nodes += [helper.make_node("Identity", [i], [o]) for i, o in cfg["io"].items()]
    used = {"lr", *cfg["io"]}
    graph = helper.make_graph(nodes, "passthrough",
                              [i for i in train.graph.input if i.name in used],
                              list(train.graph.output))
    model = helper.make_model(graph, opset_imports=list(train.opset_import))
    model.ir_version = train.ir_version
    return make_session(model.SerializeToString(), threads)


def profile(job: dict) -> dict:
    """Where edgetune's time goes (onnxruntime's `enable_profiling`), per training step:
    the Python step (`GraphTrainer.step`), a bare `session.run` with ready feeds, the
    session's own `model_run` time, and the sum of its kernels, with the top nodes."""
    import numpy as np

    from edgetune.runtime.trainer import GraphTrainer

    out = {}
    B, threads = job["batch"], job["threads"]
    # The first config is measured twice and its first pass dropped: right after the
    # process starts the same step times ~25% slower (warm-up of the process, not of a
    # session).
    for n, cfg in enumerate(job["configs"][:1] + job["configs"]):
        X, y = np.load(cfg["X"]), np.load(cfg["y"])
        runs = job["runs"] if "last" not in cfg["name"] else job["ft_runs"]
        params = {name: np.load(path) for name, path in cfg["params"].items()}
        state = {name: np.zeros_like(params[param]) for name, param in cfg["state"].items()}
        feeds = {"features": X[:B], "labels": y[:B], "sample_weight": np.ones(B, np.float32),
                 "lr": np.array(cfg["lr"], np.float32), "step": np.array(1, np.int64),
                 **params, **state}
        trainer = GraphTrainer(cfg["train_onnx"], params, state, cfg["io"], lr=cfg["lr"],
                               threads=threads)
        x, labels, sess = X[:B], y[:B], trainer._train

        def steps(trainer=trainer, x=x, labels=labels, runs=runs):
            for _ in range(runs):
                trainer.step(x, labels)

        def bare_runs(sess=sess, feeds=feeds, runs=runs):
            for _ in range(runs):
                sess.run(None, feeds)

        step = _job.timed(steps, runs, job["repeats"])["median"]
        bare = _job.timed(bare_runs, runs, job["repeats"])["median"]
        empty = _passthrough(cfg, threads)
        empty_feeds = {i.name: feeds[i.name] for i in empty.get_inputs()}
        overhead = _job.timed(partial(bare_runs, empty, empty_feeds), runs,
                              job["repeats"])["median"]
        prof = _profile_session(cfg["train_onnx"], threads, str(Path(job["out"]) / "prof"))
        for _ in range(runs):
            prof.run(None, feeds)
        entry = {"graphtrainer_step_us": step * 1e6, "bare_run_us": bare * 1e6,
                 "passthrough_run_us": overhead * 1e6,
                 "single": _summarize(prof.end_profiling(), 1)}
        k = max(cfg["epoch_batches"])
        if k * B <= len(y):
            efeeds = {**feeds, "features": X[:k * B].reshape(k, B, *X.shape[1:]),
                      "labels": y[:k * B].reshape(k, B),
                      "sample_weight": np.ones((k, B), np.float32)}
            eprof = _profile_session(cfg["epoch_onnx"], threads,
                                     str(Path(job["out"]) / "prof_epoch"))
            calls = max(3, runs // k)
            for _ in range(calls):
                eprof.run(None, efeeds)
            entry["epoch"] = _summarize(eprof.end_profiling(), k)
            entry["epoch"]["batches_per_call"] = k
        if n:
            out[cfg["name"]] = entry
    return {"profile": out, "base_profile": _profile_bases(job, threads)}


def _profile_bases(job: dict, threads: int) -> dict:
    """The base at batch 1 under the profiler, per precision: ms per image by op type."""
    import numpy as np

    images = np.load(job["images"], mmap_mode="r")[:job.get("base_images", 20)]
    out = {}
    for precision, path in job.get("bases", {}).items():
        sess = _profile_session(path, threads, str(Path(job["out"]) / f"prof_base_{precision}"))
        name = sess.get_inputs()[0].name
        for image in images:
            sess.run(None, {name: np.array(image[None])})
        out[precision] = _summarize(sess.end_profiling(), 1)
    return out


TASKS = {"train": train, "base": base, "personalize": personalize, "profile": profile,
         "first_answer": first_answer, "reopen": reopen, "gemm": gemm}

if __name__ == "__main__":
    job = _job.load_job()
    _job.emit(TASKS[job["task"]](job))
    sys.stdout.flush()
