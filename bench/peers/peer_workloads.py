"""The workloads of bench/peers.py at one thread count: each builds every system's job,
runs the rounds (fresh processes, rotating who goes first) and merges the results."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from peer_inputs import FIRST_QUERY, FIRST_SAMPLES
from peer_runs import BATCH, load_record, merge_timings, run_rounds

LAST1_EPOCHS = 20


def _merge_fresh(runs: dict[str, list]) -> dict:
    """Fresh-process runs: median and best of the total, CPU, peak memory and phases."""
    merged = {}
    for system, rs in runs.items():
        totals, peaks = [r["total"] for r in rs], [r["peak_mib"] for r in rs]
        merged[system] = {
            "total": statistics.median(totals), "total_min": min(totals),
            "cpu": statistics.median(r["cpu"] for r in rs),
            "peak_mib": statistics.median(peaks), "peak_min": min(peaks),
            "phases": {k: statistics.median(r["phases"][k] for r in rs)
                       for k in rs[0]["phases"]},
            "phases_min": {k: min(r["phases"][k] for r in rs) for k in rs[0]["phases"]},
            "mem": {k: statistics.median(r["mem"][k] for r in rs) for k in rs[0].get("mem", {})},
            "all_totals": totals, "all_peaks": peaks,
            **({"accuracy": min(r["train_accuracy"] for r in rs)}
               if "train_accuracy" in rs[0] else {}),
            **({"answers": sorted({r["answer"] for r in rs})} if "answer" in rs[0] else {}),
        }
    return merged


def personalize(inputs, built, tmp: Path, threads: int, gate, args, kind: str) -> dict:
    """kind "fp32" / "int8": 4 x 20 photos to a trained head, 50 epochs, in edgetune,
    LiteRT (its base at that precision) and, for fp32, ONNX Runtime training and
    PyTorch. kind "last1": the last block and the head trained (edgetune last:1,
    PyTorch), LAST1_EPOCHS epochs."""
    out = tmp / f"personalize-{kind}-{threads}"
    out.mkdir()
    data = Path(inputs["data"])
    common = {"task": "personalize", "images": str(data / "images.npy"),
              "labels": str(data / "labels.npy"), "epochs": 50, "batch": BATCH, "lr": 1e-3,
              "classes": 4, "base_batch": args.base_batch, "out": str(out)}
    lite, ortt = Path(built["litert"]["folder"]), Path(built["ortt"]["folder"])
    if kind == "last1":
        common["epochs"] = LAST1_EPOCHS
        ft = next(c for c in inputs["finetune"] if c["optimizer"] == "adam")
        jobs = {"edgetune": {**common, "bundle": inputs["bundle_last1_adam"],
                             "precision": "fp32"},
                "torch": {**common, "task": "personalize_last1", "params": ft["params"]}}
    else:
        jobs = {"edgetune": {**common, "bundle": inputs["bundle"], "precision": kind},
                "litert": {**common, "tflite": str(lite / "personalize.tflite"),
                           "base_tflite": str(lite / ("base.tflite" if kind == "fp32"
                                                      else "base.int8.tflite"))}}
        if kind == "fp32" and threads == args.threads[0]:  # references: at one count only
            jobs["ortt"] = {**common, "base_onnx": inputs["base_fp32"],
                            "artifacts": str(ortt / "personalize")}
            jobs["torch"] = common
    runs = run_rounds(jobs, tmp, threads, gate, args.pers_rounds, f"personalize {kind}")
    merged = _merge_fresh(runs)
    out_key = "edgetune.personalize.features.npy"
    diff = None
    if kind != "last1":
        ref = np.load(out / out_key)
        diff = max(float(np.abs(np.load(out / f"{s}.personalize.features.npy") - ref).max())
                   for s in jobs if s != "edgetune")
    return {"t": merged, "feature_diff": diff, "epochs": common["epochs"],
            "loads": load_record(runs)}


def first_answer(inputs, built, tmp: Path, threads: int, gate, args, precision: str) -> dict:
    """Process start -> a new profile with one sample per class -> the first prediction
    (edgetune), and LiteRT's equivalent; then a reopened edgetune profile's first answer."""
    data = Path(inputs["data"])
    lite = Path(built["litert"]["folder"])
    common = {"task": "first_answer", "images": str(data / "images.npy"),
              "samples": list(FIRST_SAMPLES), "query": FIRST_QUERY, "out": str(tmp)}
    jobs = {"edgetune": {**common, "bundle": inputs["bundle"], "precision": precision},
            "edgetune-cold": {**common, "bundle": inputs["bundle"], "precision": precision,
                              "cold": True},
            "litert": {**common, "tflite": str(lite / "personalize.tflite"),
                       "base_tflite": str(lite / ("base.tflite" if precision == "fp32"
                                                  else "base.int8.tflite"))}}
    runs = run_rounds(jobs, tmp, threads, gate, args.pers_rounds, f"first answer {precision}")
    reopen = run_rounds({"edgetune": {**common, "task": "reopen",
                                      "profile": inputs["reopen"][precision]}},
                        tmp, threads, gate, args.pers_rounds, f"reopened profile {precision}")
    return {"t": _merge_fresh(runs), "reopen": _merge_fresh(reopen)["edgetune"],
            "loads": load_record(runs) + load_record(reopen)}


def base_throughput(inputs, built, tmp: Path, threads: int, gate, args) -> dict:
    out = tmp / f"base-{threads}"
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
    if threads != args.threads[0]:  # the references and larger batches at one count only
        jobs = {s: {**j, "batches": args.batches[:1]} for s, j in jobs.items() if s != "torch"}
    jobs["gemm"] = {"task": "gemm", "sizes": args.gemm_sizes, "repeats": args.repeats}
    runs = run_rounds({s: j for s, j in jobs.items() if s != "gemm"}, tmp, threads, gate,
                      args.base_rounds, "base")
    gemm_runs = run_rounds({"edgetune": jobs["gemm"]}, tmp, threads, gate, args.base_rounds,
                           "gemm")
    merged = {s: merge_timings(r, "base") for s, r in runs.items()}
    ref = np.load(out / f"edgetune.fp32.b{args.batches[0]}.npy")
    scale = float(np.abs(ref).max())
    diffs = {}
    for f in sorted(out.glob("*.npy")):
        system, precision, _ = f.name.split(".", 2)
        key = f"{system}.{precision}"
        d = float(np.abs(np.load(f) - ref).max()) / scale
        diffs[key] = max(d, diffs.get(key, 0.0))
    return {"t": merged, "diffs": {k: f"{v:.1e}" for k, v in diffs.items()},
            "gemm": merge_timings(gemm_runs["edgetune"], "gemm"),
            "loads": load_record(runs) + load_record(gemm_runs)}
