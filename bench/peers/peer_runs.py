"""The driver's side of bench/peers.py: the systems, the quiet gate, running workers.

Imported by bench/peers.py (in the project's venv); the workers never import it.
A worker is a fresh process in its peer's venv that reads a JSON job and prints one
`RESULT {json}` line (bench/peers/_job.py).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, cpu_busy

PEERS = Path(__file__).resolve().parent
VENVS = PEERS / ".venvs"
SYSTEMS = {  # system -> (worker, python)
    "edgetune": ("edgetune_worker.py", sys.executable),
    "litert": ("litert_worker.py", str(VENVS / "litert" / "bin" / "python")),
    "ortt": ("ort_training_worker.py", str(VENVS / "ortt" / "bin" / "python")),
    "torch": ("torch_worker.py", sys.executable),
    # edgetune's first run on a machine: an empty cache folder (no saved optimized base,
    # no verified files), which every later process finds filled
    "edgetune-cold": ("edgetune_worker.py", sys.executable),
    # the guide's Flex formulation, on the last tensorflow that runs it (optional)
    "litert-flex": ("litert_worker.py", str(VENVS / "litert-flex" / "bin" / "python")),
}
LABEL = {"edgetune": "edgetune", "edgetune-cold": "edgetune, empty cache", "litert": "LiteRT",
         "ortt": "ONNX Runtime training", "torch": "PyTorch eager",
         "litert-flex": "LiteRT (tensorflow 2.18.1)"}
FOOTPRINTS = {  # footprint venv -> what it holds (setup.sh installs exactly these)
    "edgetune": "numpy, onnxruntime, Pillow, safetensors",
    "litert": "ai-edge-litert, numpy, Pillow",
    "ortt": "onnxruntime-training, numpy",
    "torch": "torch (CPU), numpy, Pillow",
}
FEATURES, BATCH, CLASSES_SET = 1280, 32, (4, 10)
LR = {"sgd": 0.01, "adam": 1e-3}
THREAD_WORDS = {1: "one thread", 2: "two threads"}
LOG: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LOG.append(text)


def threads_word(n: int) -> str:
    return THREAD_WORDS.get(int(n), f"{n} threads")


# --------------------------------------------------------------------------- machine


class QuietGate:
    """Before each worker, wait until the other processes on this shared machine use
    less than `max_busy` cores (measured over `probe` s from /proc/stat), at most
    `max_wait` s per worker and `budget` s in all (then it only measures). A 1-minute
    load average is no gate here: it still counts the previous worker for a minute."""

    def __init__(self, max_busy: float, max_wait: float, budget: float, probe: float = 0.5):
        self.max_busy, self.max_wait, self.budget, self.probe = (max_busy, max_wait, budget,
                                                                 probe)
        self.waited = 0.0

    def wait(self) -> dict:
        start = time.monotonic()
        limit = min(self.max_wait, max(self.budget - self.waited, 0.0))
        while True:
            before = cpu_busy()
            time.sleep(self.probe)
            busy = (cpu_busy() - before) / self.probe  # cores in use, the driver's ~0
            if busy < self.max_busy or time.monotonic() - start >= limit:
                break
        waited = time.monotonic() - start
        self.waited += max(waited - self.probe, 0.0)
        return {"busy_before": busy, "loadavg": os.getloadavg()[0], "waited": waited}


def run_worker(system: str, job: dict, tmp: Path, threads: int, gate: QuietGate | None) -> dict:
    """One worker in a fresh process, after the gate. The result also records how busy
    the machine was before (cores) and how many cores other processes used meanwhile
    (the machine's CPU time during the run less the worker's own)."""
    worker, python = SYSTEMS[system]
    job = {**job, "system": system, "threads": threads}
    path = tmp / f"job-{system}-{job['task']}-{time.time_ns()}.json"
    path.write_text(json.dumps(job))
    quiet = gate.wait() if gate else {"busy_before": None, "loadavg": os.getloadavg()[0],
                                      "waited": 0.0}
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
           "OPENBLAS_NUM_THREADS": n, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(ROOT / "src")}
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = cpu_busy()
    t = time.perf_counter()
    out = subprocess.run([python, str(PEERS / worker), str(path)], env=env, cwd=str(PEERS),
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime + after.ru_stime) - (child.ru_utime + child.ru_stime)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{system} {job['task']} failed ({out.returncode}):\n"
                           f"{out.stderr[-4000:]}\n{out.stdout[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(load_before=quiet["loadavg"], busy_before=quiet["busy_before"],
                  waited=quiet["waited"], wall=wall,
                  others_cores=max((cpu_busy() - machine - own) / wall, 0.0))
    return result


def load_record(runs: dict[str, list]) -> list[dict]:
    return [{"loadavg": r["load_before"], "busy_before": r["busy_before"],
             "others_cores": r["others_cores"], "waited": r["waited"]}
            for rs in runs.values() for r in rs]


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


# --------------------------------------------------------------------------- rounds


def build_peers(tmp: Path, inputs: dict) -> dict:
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
        out[system] = run_worker(system, job, tmp, 2, None)
        say(f"built {system} models in {time.perf_counter() - t:.1f} s")
        out[system]["folder"] = str(folder)
    return out


def rotate(items: list, r: int) -> list:
    return items[r % len(items):] + items[:r % len(items)]


def run_rounds(jobs: dict[str, dict], tmp: Path, threads: int, gate: QuietGate, rounds: int,
               what: str) -> dict:
    """Every system's job, `rounds` times, rotating who goes first: {system: [results]}."""
    results: dict[str, list] = {s: [] for s in jobs}
    for r in range(rounds):
        for system in rotate(list(jobs), r):
            res = run_worker(system, jobs[system], tmp, threads, gate)
            results[system].append(res)
            say(f"{what}, {threads_word(threads)}, round {r + 1}/{rounds} {system}: "
                f"{res['wall']:.1f} s, others used {res['others_cores']:.2f} cores")
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


def train_jobs(inputs, built, args, kind: str, out_dir: Path,
               first: bool = True) -> dict[str, dict]:
    """The train job of each system for the head (kind "head") or the last block; the
    guide's Flex form (a reference) only at the first thread count."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
        if Path(SYSTEMS["litert-flex"][1]).exists() and first:
            jobs["litert-flex"] = {**common, "form": "guide", "configs": [
                {**h, "guide": str(lite / f"{h['name']}.guide.tflite")}
                for h in inputs["heads"]]}
        return jobs
    common = {"task": "train", "batch": BATCH, "steps": args.ft_steps,
              "repeats": args.repeats, "xc_steps": args.ft_xc_steps, "out": str(out_dir)}
    return {"edgetune": {**common, "configs": inputs["edgetune_finetune"]},
            "torch": {**common, "configs": inputs["finetune"]}}


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
