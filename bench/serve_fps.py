"""Teachable camera: predictions per second served over the WebSocket, training idle vs
running.

Starts `python -m edgetune.server` as a subprocess on a free loopback port (default
bundle: EfficientNet-Lite0 + softmax head, from the cache), adds real photos as samples
over HTTP (scikit-image's chelsea, coffee, astronaut and rocket: random crops, JPEG),
then streams JPEG frames of other crops over the WebSocket the way the page does (one
frame in flight: send, wait for the prediction, send the next) and measures

- idle: no training;
- training: background training running the whole time (epochs back to back, early
  stop off; restarted if it finishes before the frames are through).

    python bench/serve_fps.py [--frames 200] [--samples 20] [--write]

--write replaces the section "## Teachable camera: frames per second" in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import cpu_model, jpeg_crops, versions, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Teachable camera: frames per second"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(base: str, method: str, path: str, body: bytes | None = None,
         content_type: str = "application/json") -> dict:
    request = urllib.request.Request(base + path, data=body, method=method,
                                     headers={"content-type": content_type} if body else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                     f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def stream(ws, frames: list[bytes]) -> list[float]:
    """Send each frame, wait for its prediction; seconds per frame."""
    times = []
    for frame in frames:
        t0 = time.perf_counter()
        ws.send(frame)
        while True:
            message = json.loads(ws.recv(timeout=60))
            if message["type"] == "prediction":
                break
            if message["type"] == "error":
                raise RuntimeError(message)
        times.append(time.perf_counter() - t0)
    return times


def summary(runs: list[list[float]]) -> dict:
    """Median frames per second over the runs; latency percentiles over all frames."""
    ms = sorted(t * 1000 for times in runs for t in times)
    return {"frames": len(runs[0]), "fps": statistics.median(len(t) / sum(t) for t in runs),
            "p50": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def run(frames: int, samples: int, cache: str | None, repeats: int = 3) -> dict:
    from websockets.sync.client import connect

    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        env = {**os.environ, "EDGETUNE_PROFILE": str(Path(tmp) / "profile")}
        env.pop("EDGETUNE_TOKEN", None)
        if cache:
            env["EDGETUNE_CACHE"] = cache
        server = subprocess.Popen([sys.executable, "-m", "edgetune.server", "--port", str(port)],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300  # the first run builds the default bundle
            while True:
                try:
                    http(base, "GET", "api/health")
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not start: "
                                           f"{server.communicate()[1]}") from None
                    time.sleep(0.2)
            for i, name in enumerate(PHOTOS):
                http(base, "POST", "api/classes", json.dumps({"name": name}).encode())
                body, ctype = multipart({"label": name}, [
                    (f"{name}-{j}.jpg", f) for j, f in enumerate(jpeg_crops(name, samples, i))])
                http(base, "POST", "api/samples", body, ctype)
            test = [f for i, name in enumerate(PHOTOS)
                    for f in jpeg_crops(name, frames // len(PHOTOS) + 1, 100 + i)][:frames]
            np.random.default_rng(0).shuffle(test)

            idle, busy, during, polls = [], [], 0, 0
            body = json.dumps({"epochs": 10_000, "early_stop": False}).encode()
            with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                json.loads(ws.recv())  # the state
                stream(ws, test[:10])  # warm up
                for _ in range(repeats):  # alternate, so both see the same machine load
                    idle.append(stream(ws, test))
                    times = []
                    for start in range(0, len(test), 20):
                        if not http(base, "GET", "api/state")["training"]:
                            http(base, "POST", "api/train", body)
                        times += stream(ws, test[start:start + 20])
                        polls += 1
                        during += http(base, "GET", "api/state")["training"]
                    busy.append(times)
                    state = http(base, "POST", "api/train/stop", b"{}")
            epochs = state["run"]["points"][-1][0] if state["run"]["points"] else 0
        finally:
            server.terminate()
            server.communicate(timeout=30)
    return {"idle": summary(idle), "training": summary(busy), "repeats": repeats,
            "training_share": during / max(polls, 1), "samples": samples * len(PHOTOS),
            "epochs_last_run": epochs}


def section(result: dict, frames: int, samples: int) -> str:
    idle, busy = result["idle"], result["training"]
    rows = [("idle", idle), ("running (epochs back to back)", busy)]
    lines = [
        HEADING, "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, no GPU; Python "
        f"{platform.python_version()}, {versions('onnxruntime', 'uvicorn', 'starlette')}.",
        f"Reproduce: `.venv/bin/python bench/serve_fps.py --frames {frames} --samples "
        f"{samples} --repeats {result['repeats']} --write` (starts `python -m edgetune.server` "
        f"on a free loopback port).",
        "",
        f"One frame in flight, as the page sends them: a 224x224 JPEG of a real photo "
        f"(scikit-image crops) over the WebSocket, the server decodes it, runs the "
        f"EfficientNet-Lite0 base and the head, and replies with the scores as JSON. "
        f"{result['samples']} samples in 4 classes; training is the default bundle's "
        f"softmax head with Adam, epochs back to back in the background.",
        "",
        f"Median of {result['repeats']} alternating runs of {frames} frames each; latency "
        f"percentiles over all their frames. Other processes on the machine add noise.",
        "",
        "| training | frames per run | predictions per second | latency p50 (ms) | p95 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['frames']} | {r['fps']:.1f} | {r['p50']:.1f} | "
                     f"{r['p95']:.1f} |")
    lines += ["", f"During training, {result['training_share']:.0%} of the checks after each "
              f"group of 20 frames found training still running (it is restarted when it "
              f"ends); the last run reached epoch {result['epochs_last_run']}. The page "
              f"asks for at most 10 frames per second, so either rate keeps it live.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--samples", type=int, default=20, help="samples per class")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating idle/training runs; the median is reported")
    parser.add_argument("--cache", help="where the default bundle is built/cached "
                        "(default: $EDGETUNE_CACHE or ~/.cache/edgetune)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    result = run(args.frames, args.samples, args.cache, args.repeats)
    text = section(result, args.frames, args.samples)
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", HEADING, text)
        print(f"wrote the section to {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
