"""Microseconds per training step: softmax head 1280->4, batch 32, SGD, one thread.

Compares, in one run: edgetune's single-step graph (one onnxruntime call per step),
its epoch graph (one call runs a whole epoch of mini-batches through an ONNX Scan)
and PyTorch eager. Writes the table into BENCHMARKS.md.

    python bench/train_step.py            # or: make bench
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from common import cpu_model, write_section  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import trainer_for  # noqa: E402

from edgetune.converter.heads import SoftmaxClassifier  # noqa: E402
from edgetune.converter.losses import SoftmaxCrossEntropy  # noqa: E402
from edgetune.converter.optimizers import SGD  # noqa: E402
from edgetune.converter.train_graph import build_training_graphs  # noqa: E402

FEATURES, CLASSES, BATCH, LR = 1280, 4, 32, 0.01


def best_of(fn, repeats: int) -> float:
    """Median of `repeats` timings of fn() (seconds), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] /
                                              "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.steps * BATCH
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int64)

    head, shapes = SoftmaxClassifier(CLASSES).build([FEATURES])
    graphs = build_training_graphs(head, SoftmaxCrossEntropy(), SGD(lr=LR), param_shapes=shapes)
    trainer = trainer_for(graphs, lr=LR, threads=1)

    def single_steps():
        for i in range(0, n, BATCH):
            trainer.step(x[i:i + BATCH], y[i:i + BATCH])

    results = {"edgetune single-step graph": best_of(single_steps, args.repeats) / args.steps}
    for batches in (3, 20, args.steps):
        rows = batches * BATCH
        calls = args.steps // batches

        def epochs(rows=rows, calls=calls):
            for c in range(calls):
                trainer.epoch(x[c * rows:(c + 1) * rows], y[c * rows:(c + 1) * rows], None,
                              BATCH)

        label = f"edgetune epoch graph, {batches} batches per call"
        results[label] = best_of(epochs, args.repeats) / (calls * batches)

    model = torch.nn.Linear(FEATURES, CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_steps():
        for i in range(0, n, BATCH):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(tx[i:i + BATCH]), ty[i:i + BATCH])
            loss.backward()
            opt.step()

    results["PyTorch eager"] = best_of(torch_steps, args.repeats) / args.steps
    eager = results["PyTorch eager"]

    lines = [
        "## Training step: softmax head 1280→4, batch 32, SGD, one thread",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, numpy {np.__version__}.",
        f"Reproduce: `make bench` (runs `python bench/train_step.py`); median of "
        f"{args.repeats} runs of {args.steps} steps.",
        "",
        "| what | µs per step | vs PyTorch eager |",
        "|---|---:|---:|",
    ]
    for label, seconds in results.items():
        lines.append(f"| {label} | {seconds * 1e6:.1f} | {seconds / eager:.2f}x |")
    lines.append("")
    lines.append("A ratio below 1 means fewer microseconds per step than PyTorch eager. "
                 "The epoch graph feeds a whole epoch (already shuffled) in one call; "
                 "3 batches per call is one epoch of 4 classes x 20 samples at batch 32 "
                 "(the last batch holds 16 rows).")
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(Path(args.out), "## Training step:", section)


if __name__ == "__main__":
    main()
