"""What every peer worker shares: read the job, time calls, report the result.

Standard library only: each worker runs in its own peer's virtual environment
(bench/peers/setup.sh) and imports this file from its own folder.

A job is a JSON file (the one argument of every worker); arrays travel as .npy files
in a temporary folder named by the job. A worker prints one line `RESULT {json}`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def load_job() -> dict:
    return json.loads(Path(sys.argv[1]).read_text())


def emit(result: dict) -> None:
    result.setdefault("peak_mib", peak_mib())
    result.setdefault("loadavg_at_end", os.getloadavg()[0])
    print("RESULT " + json.dumps(result), flush=True)


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB: VmHWM, the high-water mark of
    its own address space. (`getrusage(RUSAGE_SELF).ru_maxrss` is not used: Linux
    carries it over exec, so a worker started by the driver would report at least the
    driver's own peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, units: int, repeats: int, warmup: int = 1) -> dict:
    """Seconds per unit of `fn()` (which does `units` units of work), median of `repeats`
    runs after `warmup` uncounted runs; wall time, and this process's CPU time (which
    other processes on a busy machine inflate less)."""
    for _ in range(warmup):
        fn()
    runs, cpu = [], []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) / units)
        cpu.append((time.process_time() - c) / units)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "runs": runs, "cpu_runs": cpu, "load": os.getloadavg()[0]}


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(n_rows: int, batch: int):
    """(start, end) of consecutive mini-batches; the last may be smaller."""
    return [(i, min(i + batch, n_rows)) for i in range(0, n_rows, batch)]


def train_task(job: dict, variants_for, np) -> dict:
    """The training-step workloads (head, last block), the same for every system.

    job["configs"]: each with "name", "X" and "y" (.npy; a whole number of mini-batches
    of job["batch"] rows, used in order and then again from the top).
    variants_for(config) -> {variant name: factory}; factory() -> a trainer with
    `train(X, y, steps)` (that many mini-batches, in the system's natural way) and
    `params()` -> {name: array}. For each config and variant: a cross-check run (fresh
    trainer, job["xc_steps"] steps, final parameters saved as .npy for the driver to
    compare), then timings of job["steps"] steps on another fresh trainer.
    """
    S, repeats = job["steps"], job["repeats"]
    out_dir = Path(job["out"])
    results = {}
    for cfg in job["configs"]:
        X, y = np.load(cfg["X"]), np.load(cfg["y"])
        for variant, factory in variants_for(cfg).items():
            key = f"{cfg['name']}|{variant}"
            stem = f"{job['system']}.{cfg['name']}.{variant}".replace(" ", "_")
            if job["xc_steps"]:  # 0: timings only (the cross-check ran at another count)
                trainer = factory()
                trainer.train(X, y, job["xc_steps"])
                for name, value in trainer.params().items():
                    np.save(out_dir / f"{stem}.{name}.npy", np.asarray(value, np.float32))
            trainer = factory()
            results[key] = timed(lambda trainer=trainer, X=X, y=y: trainer.train(X, y, S), S,
                                 repeats)
            results[key]["xc"] = stem
    return {"train": results}


def cycle(n_rows: int, batch: int, steps: int):
    """Row offsets of `steps` consecutive mini-batches over n_rows rows, wrapping around."""
    return [(i * batch) % n_rows for i in range(steps)]


def personalize_loop(n: int, epochs: int, batch: int, step, np) -> list:
    """50 epochs of shuffled mini-batches (numpy's default_rng(0) permutations, the
    same for every system); step(rows) trains one mini-batch and returns its loss."""
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(n)
        losses.append([float(step(order[s:e])) for s, e in batches(n, batch)])
    return losses
