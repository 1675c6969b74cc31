"""Teachable camera under load: many WebSocket clients predicting at once, memory bounded.

Prepares a temporary profile with a Personalizer (default bundle: EfficientNet-Lite0 +
softmax head; two classes of real photos, scikit-image's chelsea and coffee, random
crops as JPEG; the head trained), starts `python -m edgetune.server --profile P` as a
subprocess on a free loopback port, then runs two phases on the same server process:

- idle: N asyncio WebSocket clients, each sending a JPEG frame (other crops of the same
  photos), awaiting its prediction and sending the next, for S seconds;
- training: the same while background training runs the whole time (POST /api/train,
  epochs back to back, early stop off; restarted whenever it ends), so every client
  also receives the progress broadcasts.

It counts predictions, error replies and client failures (closed connections, replies
slower than 30 s), latency per prediction, and samples the server's memory from
/proc/PID/status (VmRSS, VmHWM = peak RSS), its threads and open file descriptors every
0.5 s. Afterwards a fresh client must still get a correct prediction, and the server's
log must hold no traceback and no "Exceeded concurrency limit".

    .venv/bin/python bench/server_load.py                   # 50 clients, 60 s per phase
    .venv/bin/python bench/server_load.py --clients 20 --seconds 10 --phases idle

Prints a JSON report on stdout (progress on stderr) and, with --markdown, the table for
RELIABILITY.md. Exits 1 if any request failed or memory grew by more than
--max-growth-mb over the second half of a phase. tests/server/test_server_reliability.py runs
the same code with 16 clients for a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import cpu_model, jpeg_crops, versions  # noqa: E402

CLASSES = {"cat": "chelsea", "coffee": "coffee"}  # class -> scikit-image photo
BROADCASTS = ("state", "progress", "training_started", "training_done")
REPLY_TIMEOUT = 30.0  # seconds a client waits for one prediction before it counts a failure
SAMPLE_EVERY = 0.5  # seconds between memory samples


# -- data -----------------------------------------------------------------------------------------


def query_frames(per_class: int = 16, seed: int = 100) -> list[tuple[str, bytes]]:
    """(label, JPEG) pairs, other crops than the samples, interleaved."""
    frames = [(label, f) for i, (label, photo) in enumerate(CLASSES.items())
              for f in jpeg_crops(photo, per_class, seed + i)]
    order = np.random.default_rng(seed).permutation(len(frames))
    return [frames[i] for i in order]


def prepare_profile(profile: Path, bundle: str | os.PathLike, samples: int = 10,
                    epochs: int = 30) -> dict:
    """A profile with `samples` real-photo samples per class and a trained head."""
    from edgetune.runtime.personalizer import Personalizer

    p = Personalizer(bundle, profile=profile)
    try:
        for i, (label, photo) in enumerate(CLASSES.items()):
            crops = jpeg_crops(photo, samples, seed=i)
            p.add_samples(crops, [label] * len(crops), sources=["bench"] * len(crops))
        p.fit(epochs=epochs)
        p.save()
        assert p.trained, "the head did not train"
        return p.counts()
    finally:
        p.close()


# -- the server process ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(base: str, method: str, path: str, body: dict | None = None,
         timeout: float = 30) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"} if data
                                     else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (MB), Threads and open file descriptors of a live process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class ServerProcess:
    """`python -m edgetune.server --profile P --port N` on loopback, log to a file."""

    def __init__(self, profile: Path, cache: str | None = None, startup: float = 120):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.log_path = profile.parent / "server.log"
        env = {**os.environ, "EDGETUNE_PROFILE": str(profile)}
        env.pop("EDGETUNE_TOKEN", None)
        if cache:
            env["EDGETUNE_CACHE"] = str(cache)
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetune.server", "--profile", str(profile),
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup
        while True:
            try:
                http(self.base, "GET", "api/health", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server did not start: {self.log()}") from None
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory(self) -> dict:
        return proc_status(self.pid)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the load -------------------------------------------------------------------------------------
def _note(stats: dict, what) -> None:
    if len(stats["error_samples"]) < 5:  # keep the first few, not all
        stats["error_samples"].append(what)


async def _client(index: int, url: str, frames, deadline: float, stats: dict) -> None:
    """Send a frame, await its prediction, repeat until the deadline."""
    from websockets.asyncio.client import connect

    latencies, k = stats["latencies"], index * 7
    try:
        async with connect(url, max_size=1 << 22, open_timeout=30, proxy=None) as ws:
            stats["connected"] += 1
            while time.monotonic() < deadline:
                label, frame = frames[k % len(frames)]
                k += 1
                t0 = time.perf_counter()
                await ws.send(frame)
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
                    if message["type"] not in BROADCASTS:
                        break
                    stats["broadcasts"] += 1
                if message["type"] != "prediction":
                    stats["errors"] += 1
                    _note(stats, message)
                    continue
                latencies.append(time.perf_counter() - t0)
                stats["correct"] += message["label"] == label
    except Exception as e:  # a failed client is an error, never a crash of the benchmark
        stats["failures"] += 1
        _note(stats, f"{type(e).__name__}: {e}")


async def _sample_memory(server: ServerProcess, t0: float, deadline: float,
                         samples: list) -> None:
    while True:
        now = time.monotonic()
        samples.append({"t": round(now - t0, 2), **server.memory()})
        if now >= deadline:
            return
        await asyncio.sleep(min(SAMPLE_EVERY, max(deadline - now, 0.01)))


async def _keep_training(server: ServerProcess, deadline: float, info: dict) -> None:
    """Keep background training running until the deadline (restart it when it ends)."""
    body = {"epochs": 10_000, "early_stop": False}
    while time.monotonic() < deadline:
        try:
            state = await asyncio.to_thread(http, server.base, "GET", "api/state")
            if not state["training"]:
                if state["run"] and state["run"]["points"]:
                    info["epochs"] += state["run"]["points"][-1][0]
                await asyncio.to_thread(http, server.base, "POST", "api/train", body)
                info["starts"] += 1
            else:
                info["running_checks"] += 1
            info["checks"] += 1
        except (OSError, ValueError) as e:
            info["errors"] += 1
            _note(info, str(e))
        await asyncio.sleep(0.5)
    try:
        state = await asyncio.to_thread(http, server.base, "POST", "api/train/stop", {})
    except (OSError, ValueError) as e:
        info["errors"] += 1
        _note(info, str(e))
        return
    if state["run"] and state["run"]["points"]:
        info["epochs"] += state["run"]["points"][-1][0]


def _at(samples: list, t: float) -> dict:
    """The first memory sample at or after t seconds (else the last one)."""
    return next((s for s in samples if s["t"] >= t), samples[-1])


def _percentile(sorted_ms: list, q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def _phase(server: ServerProcess, clients: int, seconds: float, frames,
                 training: bool) -> dict:
    stats = {"latencies": [], "connected": 0, "errors": 0, "failures": 0, "correct": 0,
             "broadcasts": 0, "error_samples": []}
    train_info = {"starts": 0, "epochs": 0, "checks": 0, "running_checks": 0, "errors": 0,
                  "error_samples": []}
    t0 = time.monotonic()
    deadline = t0 + seconds
    samples: list = []
    tasks = [asyncio.create_task(_client(i, server.ws_url, frames, deadline, stats))
             for i in range(clients)]
    tasks.append(asyncio.create_task(_sample_memory(server, t0, deadline, samples)))
    if training:
        tasks.append(asyncio.create_task(_keep_training(server, deadline, train_info)))
    # every loop above stops by itself at the deadline; this bounds the worst case
    done, pending = await asyncio.wait(tasks, timeout=seconds + REPLY_TIMEOUT + 60)
    for task in pending:
        task.cancel()
    elapsed = time.monotonic() - t0
    broken = [t.exception() for t in done if t.exception() is not None]
    if broken or not samples:  # the sampler or the trainer failed: the server is gone?
        raise RuntimeError(f"the measurement failed ({broken[:1]}); server log:\n"
                           f"{server.log()[-2000:]}")
    ms = sorted(t * 1000 for t in stats["latencies"])
    n = len(ms)
    half, end = _at(samples, seconds / 2), samples[-1]
    second_half = [s["VmRSS"] for s in samples if s["t"] >= seconds / 2]
    result = {
        "training": training, "clients": clients, "seconds": round(elapsed, 1),
        "connected": stats["connected"], "predictions": n,
        "predictions_per_s": round(n / elapsed, 1),
        "errors": stats["errors"] + stats["failures"] + len(pending) + train_info["errors"],
        "error_replies": stats["errors"], "client_failures": stats["failures"],
        "error_samples": stats["error_samples"] + train_info["error_samples"],
        "correct": round(stats["correct"] / max(n, 1), 4),
        "latency_ms": {"p50": round(_percentile(ms, 0.50), 1),
                       "p90": round(_percentile(ms, 0.90), 1),
                       "p99": round(_percentile(ms, 0.99), 1),
                       "max": round(ms[-1], 1) if ms else None},
        "broadcasts_received": stats["broadcasts"],
        "rss_mb": {"start": round(samples[0]["VmRSS"], 1),
                   "at_10s": round(_at(samples, 10)["VmRSS"], 1),
                   "at_half": round(half["VmRSS"], 1),
                   "end": round(end["VmRSS"], 1),
                   "max_sampled": round(max(s["VmRSS"] for s in samples), 1),
                   "peak_hwm": round(end["VmHWM"], 1),
                   "growth_second_half": round(end["VmRSS"] - half["VmRSS"], 1),
                   "max_second_half_over_half": round(max(second_half) - half["VmRSS"], 1)},
        "threads": {"start": samples[0]["Threads"], "max": max(s["Threads"] for s in samples),
                    "end": end["Threads"]},
        "fds": {"start": samples[0]["fds"], "max": max(s["fds"] for s in samples),
                "end": end["fds"]},
        "memory_samples": len(samples),
        "rss_trace_mb": [[s["t"], round(s["VmRSS"], 1)] for s in samples[::10]],
    }
    if training:
        result["training_runs"] = train_info["starts"]
        result["training_epochs"] = train_info["epochs"]
        result["training_share"] = round(train_info["running_checks"]
                                         / max(train_info["checks"], 1), 2)
    return result


async def _check_after(server: ServerProcess, frames) -> dict:
    """A fresh client still gets correct predictions."""
    from websockets.asyncio.client import connect

    correct = 0
    async with connect(server.ws_url, max_size=1 << 22, open_timeout=30, proxy=None) as ws:
        for label, frame in frames[:4]:
            await ws.send(frame)
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
                if message["type"] not in BROADCASTS:
                    break
            correct += message.get("label") == label
    return {"fresh_client_correct": f"{correct}/4"}


def run(clients: int = 50, seconds: float = 60, phases=("idle", "training"),
        samples: int = 10, epochs: int = 30, cache: str | None = None,
        bundle: str | os.PathLike | None = None, log=None) -> dict:
    """Prepare a profile, start the server, run the phases; the report as a dict."""
    from edgetune.server import default_bundle

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    frames = query_frames()
    with tempfile.TemporaryDirectory(prefix="edgetune-load-") as tmp:
        profile = Path(tmp) / "profile"
        t0 = time.monotonic()
        bundle = bundle or default_bundle(cache_dir=cache, log=log)
        counts = prepare_profile(profile, bundle, samples=samples, epochs=epochs)
        log(f"profile ready in {time.monotonic() - t0:.1f} s: {counts}")
        with ServerProcess(profile, cache=cache) as server:
            report = {"clients": clients, "seconds": seconds, "samples": counts,
                      "server_pid": server.pid, "rss_mb_idle_before_load":
                      round(server.memory()["VmRSS"], 1), "phases": {}}
            for name in phases:
                log(f"{name}: {clients} clients for {seconds} s ...")
                result = asyncio.run(_phase(server, clients, seconds, frames,
                                            training=name == "training"))
                log(f"{name}: {result['predictions']} predictions, "
                    f"{result['predictions_per_s']}/s, p50 {result['latency_ms']['p50']} ms, "
                    f"p99 {result['latency_ms']['p99']} ms, errors {result['errors']}, RSS "
                    f"{result['rss_mb']['start']} -> {result['rss_mb']['end']} MB")
                report["phases"][name] = result
            report.update(asyncio.run(_check_after(server, frames)))
            report["rss_mb_after"] = round(server.memory()["VmRSS"], 1)
            report["peak_rss_mb"] = round(server.memory()["VmHWM"], 1)
            text = server.log()
            report["server_alive"] = server.proc.poll() is None
            report["log_tracebacks"] = text.count("Traceback")
            report["log_concurrency_limit"] = text.count("Exceeded concurrency limit")
            report["log_errors"] = sum("ERROR" in line for line in text.splitlines())
    return report


def failures(report: dict, max_growth_mb: float) -> list[str]:
    """What makes the run fail: any error, a dead or complaining server, memory growth."""
    out = []
    for name, r in report["phases"].items():
        if r["errors"]:
            out.append(f"{name}: {r['errors']} errors ({r['error_samples'][:2]})")
        if r["connected"] != r["clients"]:
            out.append(f"{name}: only {r['connected']} of {r['clients']} clients connected")
        if r["rss_mb"]["max_second_half_over_half"] > max_growth_mb:
            out.append(f"{name}: RSS grew by {r['rss_mb']['max_second_half_over_half']} MB "
                       f"over the second half (limit {max_growth_mb} MB)")
    if not report["server_alive"]:
        out.append("the server died")
    if report["fresh_client_correct"] != "4/4":
        out.append(f"a fresh client got {report['fresh_client_correct']} right afterwards")
    for key in ("log_tracebacks", "log_concurrency_limit", "log_errors"):
        if report[key]:
            out.append(f"the server log has {key} = {report[key]}")
    return out


# -- report ---------------------------------------------------------------------------------------
def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()}; "
            f"{versions('onnxruntime', 'uvicorn', 'starlette', 'websockets')}")


def markdown(report: dict) -> str:
    lines = ["| Phase | Predictions | Per second | p50 (ms) | p99 (ms) | Errors | RSS start "
             "/ 10 s / end (MB) | Growth, 2nd half (MB) | Peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in report["phases"].items():
        m, lat = r["rss_mb"], r["latency_ms"]
        lines.append(f"| {name} | {r['predictions']:,} | {r['predictions_per_s']} | "
                     f"{lat['p50']} | {lat['p99']} | {r['errors']} | {m['start']} / "
                     f"{m['at_10s']} / {m['end']} | {m['growth_second_half']:+} | "
                     f"{m['peak_hwm']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60, help="per phase")
    parser.add_argument("--phases", default="idle,training",
                        help="comma-separated: idle, training (default both)")
    parser.add_argument("--samples", type=int, default=10, help="samples per class")
    parser.add_argument("--max-growth-mb", type=float, default=32,
                        help="fail if RSS grows more than this over a phase's second half")
    parser.add_argument("--cache", help="where the default bundle is built/cached "
                        "(default: $EDGETUNE_CACHE or ~/.cache/edgetune)")
    parser.add_argument("--markdown", action="store_true", help="also print the table")
    args = parser.parse_args()
    if not 1 <= args.clients <= 60:  # uvicorn_config_kwargs: limit_concurrency 64
        parser.error("--clients must be 1 to 60 (the server accepts 64 connections)")
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be above 0 and at most 3600")
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or set(phases) - {"idle", "training"}:
        parser.error("--phases takes idle and/or training")
    report = run(args.clients, args.seconds, phases, samples=args.samples, cache=args.cache)
    report["machine"] = machine()
    report["failures"] = failures(report, args.max_growth_mb)
    print(json.dumps(report, indent=2))
    if args.markdown:
        print(markdown(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
