"""Benchmarks against the systems a user would pick instead: LiteRT, ONNX Runtime training,
PyTorch eager — the same work, side by side, in one run, at one thread and at two.

    bash bench/peers/setup.sh          # once: each peer's own virtual environment
    flock /tmp/edgetune-heavy.lock .venv/bin/python bench/peers.py   # writes BENCHMARKS.md

The driver (this file, in the project's venv) builds edgetune's graphs and bundles,
writes the shared inputs (the same initial parameters and data for every system, as
.npy files in a temporary folder; bench/peers/peer_inputs.py), has each peer build its
own models in its own venv (bench/peers/*_worker.py `build`), then runs every worker in
turn — rotating who goes first, each in a fresh process, after a bounded wait for the
shared machine to be quiet (bench/peers/peer_runs.py) — and writes two sections of
BENCHMARKS.md: the targets of issue 17 at the top (bench/peers/peer_targets.py) and
"## Against peers" (bench/peers/peer_report.py). Workloads (bench/peers/peer_workloads.py):

1. personalize: 4 classes x 20 photos from pixels to a trained head: fp32 bases, int8
   bases, and the last block trained too (last:1) — time, phases, peak memory;
2. first: a new profile, one sample per class, the first answer; a reopened profile's;
3. base: images per second at batch 1 and 16, fp32 and int8, and a large GEMM's GFLOP/s;
4. finetune: a training step of the last block of EfficientNet-Lite0 (last:1);
5. head: a softmax-head training step, 1280->4 and 1280->10, SGD and Adam;
and once: what the device installs (footprint), where a training step's time goes
(profile, edgetune alone).

`--from-results FILE` rewrites both sections from a saved run (every run saves
$TMPDIR/edgetune-peers-results.json) without measuring again.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from common import BENCHMARKS, ROOT, revision, write_section  # noqa: E402
from peer_inputs import prepare  # noqa: E402
from peer_report import HEADING, report  # noqa: E402
from peer_runs import (  # noqa: E402
    FOOTPRINTS,
    SYSTEMS,
    VENVS,
    QuietGate,
    build_peers,
    crosscheck,
    float64_reference,
    footprint,
    load_record,
    merge_timings,
    run_rounds,
    run_worker,
    say,
    train_jobs,
    versions,
)
from peer_targets import targets_section, write_top  # noqa: E402
from peer_workloads import base_throughput, first_answer, personalize  # noqa: E402

WORKLOADS = ["personalize", "first", "base", "finetune", "head", "footprint", "profile"]


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts; every workload runs at each")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the timed jobs (head, finetune, base, gemm)")
    parser.add_argument("--pers-rounds", type=int, default=5,
                        help="fresh-process runs per system (personalize, first answer)")
    parser.add_argument("--base-rounds", type=int, default=2,
                        help="rounds of the base throughput jobs (the longest)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per job")
    parser.add_argument("--steps", type=int, default=240, help="head steps per timing")
    parser.add_argument("--xc-steps", type=int, default=100, help="cross-check steps")
    parser.add_argument("--ft-steps", type=int, default=9, help="last-block steps per timing")
    parser.add_argument("--ft-xc-steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--gemm-sizes", type=int, nargs="+", default=[2048],
                        help="n of the n x n float32 GEMM that measures the practical peak")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"],
                        help="bases of the personalization and the first answer")
    parser.add_argument("--base-batch", type=int, default=None,
                        help="images per base call in the personalization, for every system "
                             "(default: edgetune's own, personalizer.BASE_BATCH)")
    parser.add_argument("--max-busy", type=float, default=0.3,
                        help="the gate: other processes' cores in use before a worker starts")
    parser.add_argument("--max-wait", type=float, default=20.0,
                        help="the gate's longest wait before one worker, s")
    parser.add_argument("--wait-budget", type=float, default=240.0,
                        help="the gate's total wait over the run, s (then it only measures)")
    parser.add_argument("--out", default=str(BENCHMARKS))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="only rewrite the sections from a previous run's results.json")
    return parser.parse_args()


def write(args, built, results, vers) -> None:
    section = report(args, built, results, vers)
    top = targets_section(args, results)
    print(top)
    write_section(Path(args.out), HEADING, section)
    write_top(Path(args.out), top)


def attempt(results: dict, what: str, fn) -> None:
    """Run one workload; a failure is recorded (and shown in the report), not fatal: the
    other workloads' results still reach BENCHMARKS.md."""
    try:
        fn()
    except Exception as e:  # a worker's RuntimeError carries its stderr
        say(f"{what} FAILED: {e}")
        results.setdefault("errors", []).append(f"{what}: {str(e).splitlines()[0]}")


def measure(args, tmp: Path, inputs: dict, built: dict) -> dict:
    gate = QuietGate(args.max_busy, args.max_wait, args.wait_budget)
    results: dict = {"inputs_heads": inputs["heads"], "loads": [],
                     "base_flops": inputs["base_flops"], "by_threads": {}}
    kinds = [k for k in ("fp32", "int8") if k in args.precisions] + ["last1"]

    def pers(r, threads, kind):
        entry = personalize(inputs, built, tmp, threads, gate, args, kind)
        results["loads"] += entry.pop("loads")
        r.setdefault("personalize", {})[kind] = entry

    def first_ans(r, threads, precision):
        entry = first_answer(inputs, built, tmp, threads, gate, args, precision)
        results["loads"] += entry.pop("loads")
        r.setdefault("first", {})[precision] = entry

    def base(r, threads):
        r["base"] = base_throughput(inputs, built, tmp, threads, gate, args)
        results["loads"] += r["base"].pop("loads")

    def train(r, threads, kind, label):
        out_dir = tmp / f"params-{threads}"
        first = threads == args.threads[0]
        jobs = train_jobs(inputs, built, args, kind, out_dir, first)
        if not first:  # the cross-check once, at the first thread count
            jobs = {s: {**j, "xc_steps": 0} for s, j in jobs.items()}
        runs = run_rounds(jobs, tmp, threads, gate, args.rounds, label)
        results["loads"] += load_record(runs)
        r[f"{kind}_t"] = {s: merge_timings(x, "train") for s, x in runs.items()}
        if first:
            r[f"crosscheck_{kind}"] = crosscheck(r[f"{kind}_t"], out_dir)
            if kind == "finetune":
                r["finetune_reference"] = float64_reference(r["finetune_t"], out_dir)

    for threads in args.threads:
        r: dict = {}
        results["by_threads"][str(threads)] = r
        if "personalize" in args.workloads:
            for kind in kinds:
                attempt(results, f"personalize {kind}, {threads} threads",
                        partial(pers, r, threads, kind))
        if "first" in args.workloads:
            for precision in args.precisions:
                attempt(results, f"first answer {precision}, {threads} threads",
                        partial(first_ans, r, threads, precision))
        if "base" in args.workloads:
            attempt(results, f"base, {threads} threads", partial(base, r, threads))
        for kind, label in (("finetune", "last block"), ("head", "head")):
            if kind in args.workloads:
                attempt(results, f"{label}, {threads} threads",
                        partial(train, r, threads, kind, label))

    def profile():
        job = {"task": "profile", "batch": 32, "runs": 500, "ft_runs": 6,
               "repeats": args.repeats, "out": str(tmp),
               "configs": inputs["edgetune_heads"] + inputs["edgetune_finetune"],
               "bases": {"fp32": inputs["base_fp32"], "int8": inputs["base_int8"]},
               "images": str(Path(inputs["data"]) / "images.npy")}
        for threads in args.threads:  # the base at each count; the steps at the first
            res = run_worker("edgetune", job, tmp, threads, gate)
            results["loads"] += load_record({"edgetune": [res]})
            results.setdefault("profile", res["profile"])
            results.setdefault("base_profile", {})[str(threads)] = res["base_profile"]
            job = {**job, "configs": []}

    if "profile" in args.workloads:
        attempt(results, "profile", profile)
    if "footprint" in args.workloads:
        results["footprint"] = {name: footprint(VENVS / f"footprint-{name}")
                                for name in FOOTPRINTS if (VENVS / f"footprint-{name}").exists()}
    results["gate_waited"] = gate.waited
    return results


def main() -> None:
    args = parse_args()
    if args.from_results:
        saved = json.loads(Path(args.from_results).read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.out})
        write(args, saved["built"], saved["results"], saved["versions"])
        return
    if args.base_batch is None:
        from edgetune.runtime import personalizer

        args.base_batch = personalizer.BASE_BATCH
    missing = [s for s, (_, py) in SYSTEMS.items()
               if not Path(py).exists() and s != "litert-flex"]
    if missing:
        sys.exit(f"no venv for {missing}: run `bash bench/peers/setup.sh` first")

    started = time.perf_counter()
    # A device installs a wheel, which pip byte-compiles; this tree is installed editable
    # and PYTHONDONTWRITEBYTECODE may be set, so compile it once or every worker would
    # compile edgetune's modules at import (about 0.08 s of its import time).
    compileall.compile_dir(str(ROOT / "src" / "edgetune"), quiet=1)
    compileall.compile_dir(str(Path(__file__).resolve().parent / "peers"), maxlevels=0,
                           quiet=1)  # the workers' own modules, not the peers' venvs
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-peers-"))
    say(f"work folder {tmp}")
    rev = revision()  # the source measured: the commit at the start of the run
    inputs = prepare(tmp, args)
    built = build_peers(tmp, inputs)
    vers = versions()
    results = measure(args, tmp, inputs, built)
    results.update(
        minutes=(time.perf_counter() - started) / 60, revision=rev,
        n_images=80, command=".venv/bin/python bench/peers.py " + " ".join(sys.argv[1:]),
        finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    saved = {"args": vars(args), "built": built, "versions": vers, "results": results}
    (tmp / "results.json").write_text(json.dumps(saved, indent=1, default=str))
    saved_copy = Path(tempfile.gettempdir()) / "edgetune-peers-results.json"
    shutil.copy(tmp / "results.json", saved_copy)
    say(f"results in {saved_copy} (rewrite the sections: --from-results {saved_copy})")
    write(args, built, results, vers)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
