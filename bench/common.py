"""Helpers shared by the benchmarks: the machine line and BENCHMARKS.md sections.

The scripts run as `python bench/NAME.py`, so bench/ is on sys.path and they import
this module as `common`. Only the standard library here: the benchmark subprocesses
import it too and must not pay for anything else.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*dists: str) -> str:
    """"onnxruntime 1.31.1, torch 2.13.0+cpu" for installed distributions."""
    parts = []
    for dist in dists:
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def machine(*dists: str) -> str:
    """One line for a section: CPU model, cores, Python and package versions."""
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python "
            f"{platform.python_version()}, {versions(*dists)}.")


def revision() -> str:
    """"edgetune at commit abc1234" (and whether src/ had uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "edgetune (no git revision)"
    paths = [line[3:] for line in dirty.splitlines() if line.strip()]
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"edgetune at commit {commit}" + (f" (uncommitted changes: {shown})" if paths else "")


def cpu_busy() -> float:
    """CPU seconds all processes on the machine have used so far (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def memory_mib() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, MiB, from
    /proc/self/status. The peak is VmHWM, not ru_maxrss: that carries over exec, so a
    child would report its parent's peak."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def wait_quiet(max_load: float = 0.2, timeout: float = 15.0) -> float:
    """Wait (at most `timeout` s) until the machine's processes use less than `max_load`
    of its CPUs over one second; returns the last load seen. The machine may be shared."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy()
        time.sleep(1.0)
        load = (cpu_busy() - before) / (os.cpu_count() or 1)
        if load < max_load or time.monotonic() > deadline:
            return load


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the section that starts with `heading` in BENCHMARKS.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        rest = text[end + 1:] if end != -1 else ""
        # One blank line between sections, whatever the caller's section ends with.
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.write_text(text)


def jpeg_crops(photo: str, n: int, seed: int, size: int = 224) -> list[bytes]:
    """Random crops (60-100% of the short side) of a scikit-image photo, as 224x224 JPEG
    q85 bytes: what the teachable camera's page sends."""
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    image = getattr(data, photo)()
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def median_best(runs: list[dict], f) -> tuple[float, float]:
    """The median and the best (smallest) of f over repeated runs."""
    values = [f(r) for r in runs]
    return statistics.median(values), min(values)


def personalize_phases(what: str, epochs: int) -> list[tuple[str, object]]:
    """(row name, f(run) -> seconds) for a personalization child's phases ("imports",
    "model load", "features", "training", each marked at its end from process start);
    `what` names the samples whose features were computed."""
    def at(r, name):
        return r["phases"][name]["t"] if name else 0.0

    def phase(name, prev):
        return lambda r: at(r, name) - at(r, prev)

    return [("total, from process start (imports included)", phase("training", None)),
            ("total after imports", phase("training", "imports")),
            ("imports", phase("imports", None)),
            ("model load", phase("model load", "imports")),
            (f"features of the {what}", phase("features", "model load")),
            (f"training the head, {epochs} epochs", phase("training", "features"))]
