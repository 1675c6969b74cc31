"""The fleet on Flower's simulation engine: convergence, bytes, scale, privacy costs.

Fashion-MNIST through the real EfficientNet-Lite0 bundle (softmax head, Adam at the
bundle's lr): TRAIN_PER_CLASS training images of each class and the first TEST images
of t10k become 1280 features once; virtual devices (edgetune.fleet.simulate) hold
shares of the training features, every 5th sample of a class held out for federated
evaluation; FedAvg, one local epoch per round. Reports:

- rounds and seconds until the global head's test accuracy reaches 0.95 of the head
  trained centrally on all the training features (same graphs, same fit loop), for an
  IID split and a Dirichlet(0.5) label skew over 20 devices;
- bytes each device sends and receives per round (the head's arrays as Flower sends
  them: .npy blobs);
- wall time per round and peak memory (this process and every Ray worker) with 10, 100
  and 1,000 virtual devices;
- the accuracy after ROUNDS rounds with SecAgg+ and with differential privacy
  (client-side clipping to C, server noise multiplier S) at two noise levels.

Then personalized federated learning: 10 devices (Dirichlet 0.5), each with its own test
set drawn from the t10k features in its own label proportions, score the global head
after ROUNDS rounds, a head trained on the device alone, and the global head fine-tuned
on the device.

Writes the sections "Fleet: federated personalization" and "Fleet: global, local and
global-then-local heads" of BENCHMARKS.md (--personal-only: only the second).

    .venv/bin/python bench/fleet.py [--personal-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import BENCHMARKS, ROOT, machine, revision, write_section

# The fleet tests' Fashion-MNIST features (loaded by path: `fleet` is this script's name).
_spec = importlib.util.spec_from_file_location("fleet_data", ROOT / "tests" / "fleet" /
                                               "fleet_data.py")
fleet_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fleet_data)
NAMES, fashion_features = fleet_data.NAMES, fleet_data.fashion_features

HEADING = "## Fleet: federated personalization"
PERSONAL_HEADING = "## Fleet: global, local and global-then-local heads"
PERSONAL_DEVICES = 10
PERSONAL_TEST = 100  # test samples a device draws, in its own label proportions
LOCAL_EPOCHS = 30  # a head trained on the device alone: as many epochs as the central one
FINE_TUNE_EPOCHS = 5  # the global head fine-tuned on the device
CLIP = 0.1  # DP clipping norm of a device's update (a round's update is ~0.2-1 here)


class PeakMemory:
    """Peak summed resident memory (MiB) of this process and its descendants (the Ray
    workers), sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) / 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(bundle, data, shards, **options) -> dict:
    from edgetune.fleet.simulate import simulate

    return simulate(bundle, data["X"], data["labels"], data["X_test"], data["test_labels"],
                    shards, **options)


def reach(report: dict, target: float) -> tuple[int | None, float | None]:
    for r in report["rounds"]:
        if r["round"] > 0 and r.get("test_accuracy", 0) >= target:
            return r["round"], r["elapsed"] - report["rounds"][0]["elapsed"]
    return None, None


def last(report: dict) -> float:
    return [r["test_accuracy"] for r in report["rounds"] if r["round"] > 0][-1]


def device_tests(labels: list[str], shards, test_labels: list[str],
                 seed: int = 0) -> list[np.ndarray]:
    """Each device's test rows: PERSONAL_TEST t10k rows drawn without replacement with
    probability proportional to the device's share of their class (its label skew)."""
    rng = np.random.default_rng(seed)
    test = np.asarray(test_labels)
    out = []
    for rows in shards:
        mine = [labels[i] for i in rows]
        share = {c: mine.count(c) / len(mine) for c in set(mine)}
        weight = np.array([share.get(c, 0.0) / (test == c).sum() for c in test])
        out.append(np.sort(rng.choice(len(test), PERSONAL_TEST, replace=False,
                                      p=weight / weight.sum())))
    return out


def personalization(bundle: str, data: dict, rounds: int) -> list[dict]:
    """Per device: test accuracy of the global head, of a head trained on the device
    alone (from the initial head), and of the global head fine-tuned on the device."""
    from edgetune.bundle import Bundle
    from edgetune.fleet.device import evaluate_head, train_head
    from edgetune.fleet.params import initial_arrays
    from edgetune.fleet.simulate import partition

    loaded = Bundle.load(bundle)
    shards = partition(data["labels"], PERSONAL_DEVICES, "dirichlet:0.5")
    tests = device_tests(data["labels"], shards, data["test_labels"])
    report = run(bundle, data, shards, rounds=rounds)
    classes, global_arrays = report["classes"], report["arrays"]
    initial = initial_arrays(loaded, classes)
    out = []
    for k, (rows, test) in enumerate(zip(shards, tests)):
        X, y = data["X"][rows], [data["labels"][i] for i in rows]
        X_t, y_t = data["X_test"][test], [data["test_labels"][i] for i in test]

        def score(arrays, X_t=X_t, y_t=y_t):
            return evaluate_head(loaded, arrays, classes, X_t, y_t)[2]["accuracy"]

        local = train_head(loaded, initial, classes, X, y, epochs=LOCAL_EPOCHS, seed=k).arrays
        tuned = train_head(loaded, global_arrays, classes, X, y, epochs=FINE_TUNE_EPOCHS,
                           seed=k).arrays
        out.append({"samples": len(rows), "classes": len(set(y)),
                    "global": score(global_arrays), "local": score(local),
                    "global+local": score(tuned)})
        print(k, out[-1], flush=True)
    return out


def personal_section(devices: list[dict], rounds: int, args) -> str:
    options = ("global", "local", "global+local")
    best = [max(d[o] for o in options) for d in devices]
    wins = {o: sum(d[o] == b for d, b in zip(devices, best)) for o in options}
    names = {"global": f"global head after {rounds} rounds (FedAvg)",
             "local": f"device alone ({LOCAL_EPOCHS} epochs from the initial head)",
             "global+local": f"global head fine-tuned on the device ({FINE_TUNE_EPOCHS} "
                             f"epochs)"}
    lines = [PERSONAL_HEADING, "",
             f"{machine('flwr', 'ray', 'onnxruntime')} {revision()}. Command: "
             f"`.venv/bin/python bench/fleet.py --personal-only --rounds {rounds}`.", "",
             f"Personalized federated learning: the same Fashion-MNIST features "
             f"({args.per_class} training images a class) split over {len(devices)} devices "
             f"by Dirichlet 0.5 ({min(d['samples'] for d in devices)}-"
             f"{max(d['samples'] for d in devices)} samples and "
             f"{min(d['classes'] for d in devices)}-{max(d['classes'] for d in devices)} "
             f"classes a device). Each device's own test set: {PERSONAL_TEST} of the first "
             f"{args.test} t10k images, drawn in the device's own label proportions. "
             f"Local training (alone or fine-tuning) uses all of the device's samples and "
             f"trains only the columns of its own classes (the restricted softmax of "
             f"`edgetune.fleet.device.train_head`).", "",
             "| head | mean test accuracy over devices | worst device | devices it wins "
             "on (ties count for each) |", "|---|---|---|---|"]
    for o in options:
        scores = [d[o] for d in devices]
        lines.append(f"| {names[o]} | {np.mean(scores):.3f} | {min(scores):.3f} | "
                     f"{wins[o]} of {len(devices)} |")
    mean = float(np.mean([d[o] for d in devices for o in options]))
    lines += ["", f"A device's score counts {PERSONAL_TEST} images: its standard error is "
              f"about {np.sqrt(mean * (1 - mean) / PERSONAL_TEST):.2f}, so a win by less is "
              f"noise; the means over {len(devices)} devices are steadier.", "",
              "Per device (samples, classes: global / local / global-then-local): " +
              "; ".join(f"{d['samples']}, {d['classes']}: {d['global']:.2f} / "
                        f"{d['local']:.2f} / {d['global+local']:.2f}" for d in devices) + ".",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="training images a class")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--scale", default="10,100,1000", help="device counts to time")
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--personal-only", action="store_true",
                        help="only the global / local / global-then-local comparison")
    args = parser.parse_args()

    from flwr.common import ndarray_to_bytes

    from edgetune.converter.convert import convert
    from edgetune.fleet.params import initial_arrays
    from edgetune.fleet.simulate import central_accuracy, partition

    cache = Path(os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    built = convert("efficientnet-lite0", "softmax", "adam", classes=10, cache_dir=cache)
    bundle = str(built.save(work / "fashion.edgetune"))
    data = fashion_features(bundle, args.per_class, args.test,
                            cache / f"bench-fleet-{args.per_class}-{args.test}.npz")
    personal = personal_section(personalization(bundle, data, args.rounds), args.rounds,
                                args)
    print(personal)
    if not args.no_write:
        write_section(BENCHMARKS, PERSONAL_HEADING, personal)
    if args.personal_only:
        return
    central = central_accuracy(bundle, data["X"], data["labels"], data["X_test"],
                               data["test_labels"])
    target = 0.95 * central
    print(f"central {central:.4f}; target {target:.4f}", flush=True)

    arrays = initial_arrays(built, list(NAMES))
    per_round = sum(len(ndarray_to_bytes(a)) for a in arrays)

    convergence = {}
    for name, scheme in (("IID", "iid"), ("Dirichlet 0.5", "dirichlet:0.5")):
        report = run(bundle, data, partition(data["labels"], 20, scheme), rounds=args.rounds)
        convergence[name] = (report, *reach(report, target))
        print(name, convergence[name][1:], last(report), flush=True)

    skew = partition(data["labels"], 20, "dirichlet:0.5")
    privacy = {"FedAvg": convergence["Dirichlet 0.5"][0]}
    privacy["SecAgg+"] = run(bundle, data, skew, rounds=args.rounds, secagg=True)
    for noise in (0.1, 1.0):
        privacy[f"DP, S={noise}, C={CLIP}"] = run(bundle, data, skew, rounds=args.rounds,
                                                  dp_noise=noise, dp_clip=CLIP)
    for name, report in privacy.items():
        print(name, last(report), flush=True)

    scale = {}
    for n in [int(x) for x in args.scale.split(",")]:
        shards = partition(data["labels"], n, "iid")
        with PeakMemory() as memory:
            report = run(bundle, data, shards, rounds=args.scale_rounds)
        times = [r["elapsed"] for r in report["rounds"]]
        per = np.diff(times)  # round r's time: from the evaluation after r-1 to after r
        scale[n] = (float(np.median(per)), float(per.min()), memory.peak)
        print(n, scale[n], flush=True)

    lines = [HEADING, "",
             f"{machine('flwr', 'ray', 'onnxruntime')} {revision()}. Command: "
             f"`.venv/bin/python bench/fleet.py`.", "",
             f"Fashion-MNIST through EfficientNet-Lite0 (softmax head, Adam): "
             f"{args.per_class} training images a class ({10 * args.per_class}) shared "
             f"among the virtual devices, the first {args.test} of t10k as the test set; "
             f"FedAvg weighted by samples, one local epoch a round, every 5th sample of a "
             f"class held out on each device for federated evaluation. The central head "
             f"(the same training graphs and fit loop on all training features, 30 "
             f"epochs) scores **{central:.3f}**; the target is 0.95 of it, {target:.3f}.",
             "", "| 20 devices | rounds to 0.95 of central | seconds to it | accuracy after "
             f"{args.rounds} rounds |", "|---|---|---|---|"]
    for name, (report, rounds, seconds) in convergence.items():
        lines.append(f"| {name} | {rounds if rounds else 'not reached'} | "
                     f"{f'{seconds:.1f}' if seconds is not None else '-'} | "
                     f"{last(report):.3f} |")
    lines += ["", f"Bytes a device sends per round: {per_round:,} (the head's "
              f"{sum(a.size for a in arrays):,} float32 parameters as .npy blobs, plus a few "
              f"named numbers), and as many it receives; its evaluation reply carries no "
              f"array. Samples and features never leave (tests/fleet/test_deploy.py audits "
              f"every message).", "",
              "| virtual devices | wall time a round, median (best) | peak memory, this "
              "process and Ray workers |", "|---|---|---|"]
    for n, (median, best, peak) in scale.items():
        lines.append(f"| {n:,} | {median:.2f} s ({best:.2f} s) | {peak:,.0f} MiB |")
    lines += ["", f"Each round trains and evaluates every device (its local epoch and "
              f"its held-out score are tasks on Ray's workers, one CPU each): the time "
              f"grows with the number of devices, not with their data "
              f"({10 * args.per_class} samples in all). {args.scale_rounds} rounds, "
              f"IID.", "",
              f"| 20 devices, Dirichlet 0.5, {args.rounds} rounds | test accuracy | cost |",
              "|---|---|---|"]
    base = last(privacy["FedAvg"])
    for name, report in privacy.items():
        lines.append(f"| {name} | {last(report):.3f} | {base - last(report):+.3f} |")
    lines += ["", "SecAgg+ (Flower's `SecAggPlusWorkflow` + `secaggplus_mod`) quantizes "
              "each update into 2^22 levels over [-8, 8]: it costs accuracy only through that "
              "rounding (tests/fleet/test_simulate.py checks the aggregate equals FedAvg's "
              "within it) and time through its four message stages. DP is Flower's "
              "`DifferentialPrivacyClientSideFixedClipping`: devices clip their update to C, "
              "the server adds Gaussian noise of standard deviation S*C/devices.", "",
              "Anchor: Gboard's federated next-word model (Hard et al. 2018) took 100-500 "
              "device updates per round over about 3,000 rounds; a personalization head on "
              "fixed features is a convex problem of 12,810 parameters and converges in tens "
              "of rounds here. Flower's own examples report FedAvg curves on the same kind of "
              "IID and Dirichlet splits.", ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(BENCHMARKS, HEADING, section)


if __name__ == "__main__":
    main()
