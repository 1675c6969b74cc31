"""The base graph as onnxruntime optimized it on this machine, saved once and reused.

onnxruntime's full optimization (ORT_ENABLE_ALL) rewrites a convolutional base into its
blocked NCHWc layout: that is what makes it fast, and costs every session creation
both time and memory (the original and the rewritten weights live side by side while
it runs). Measured on EfficientNet-Lite0 (one thread): a session from base.onnx
takes 92 MiB resident after imports of 46 and peaks at 113 MiB over 80 images;
the same session from its saved optimized graph, loaded without optimizing again,
69 MiB and 93 MiB, and is created faster.

The rewritten graph is specific to this CPU and this onnxruntime (onnxruntime warns
against using it elsewhere), so it is not part of the bundle: the first session of a
base on a machine writes it to the cache folder (edgetune.paths.cache_dir,
``optimized/``) under a name made of the base's sha256, the onnxruntime version and
the CPU's identity; later sessions, of any profile, load it. It is trusted like a
bundle file (edgetune.verified): recorded when written, re-checked by identity, and
rebuilt if it changed or is unknown. An unwritable cache means plain sessions.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import time
from pathlib import Path

import onnxruntime as ort

from edgetune.bundle import sha256
from edgetune.files import atomic_write, fsync_dir, temporary_file
from edgetune.verified import VerifiedFiles

__all__ = ["FOLDER", "optimized_path", "optimized_session"]

FOLDER = "optimized"
_PAST_NS = 10 * 10**9  # the file's time is set this far back (edgetune.verified: racy)


@functools.cache
def _machine() -> str:
    """What the optimized graph depends on besides the base: CPU and onnxruntime
    (not platform.processor(), which runs a program: 13 ms)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return f"{ort.__version__}|{platform.machine()}|{flags}"


def optimized_path(cache: Path, base_sha256: str) -> Path:
    """Where this machine's optimized form of the base with that sha256 is kept."""
    key = hashlib.sha256(f"{base_sha256}|{_machine()}".encode()).hexdigest()[:32]
    return cache / FOLDER / f"{key}.onnx"


def _options(threads: int | None, level) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    options.log_severity_level = 3  # the "hardware specific" warning is why it is cached
    return options


def _load(path: Path, threads: int | None, verified: VerifiedFiles):
    """A session from the saved optimized graph, or None if it is missing or does not
    match the sha256 written beside it when it was saved."""
    try:
        expected = path.with_suffix(".sha256").read_text().strip()
        st = path.stat()
        if verified.trusted(st, expected) is None:  # unknown identity: hash it once
            with open(path, "rb") as f:
                if sha256(f.read()) != expected:
                    return None
                st = os.fstat(f.fileno())
            verified.remember(st, expected)
            verified.flush()
    except OSError:
        return None
    try:
        return ort.InferenceSession(str(path), _options(
            threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
            providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime refuses it (raises many types): build it again
        return None


def _save(model: bytes, path: Path, threads: int | None, disabled: list[str],
          verified: VerifiedFiles):
    """Optimize `model`, keep onnxruntime's saved result at `path` (atomically), and
    return the session that produced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(path)
    os.close(fd)
    try:
        options = _options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        options.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=disabled)
        with open(tmp, "rb+") as f:
            digest = sha256(f.read())
            os.fsync(f.fileno())
        past = time.time_ns() - _PAST_NS
        os.utime(tmp, ns=(past, past))
        atomic_write(path.with_suffix(".sha256"), digest.encode())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        verified.remember(path.stat(), digest, racy_ok=True)
        verified.flush()
        return session
    finally:
        tmp.unlink(missing_ok=True)


def optimized_session(bundle, role: str, threads: int | None, disabled: list[str],
                      cache: Path | None = None):
    """A session of the bundle's graph `role` from this machine's saved optimized form
    (written by this call the first time); None when the cache cannot be used, so the
    caller makes a plain session."""
    verified = bundle.verified_files if cache is None else None  # the cache's, read once
    if cache is None:
        from edgetune.paths import cache_dir

        cache = cache_dir()
    entry = bundle.manifest["graphs"][role]
    path = optimized_path(cache, entry["sha256"])
    verified = verified or VerifiedFiles(cache / "verified.json")
    try:
        session = _load(path, threads, verified)
        if session is None:
            session = _save(bundle.graph(role), path, threads, disabled, verified)
        return session
    except OSError:  # no cache folder, a read-only one, a full disk
        return None
    except Exception:  # onnxruntime could not optimize or save it (raises many types):
        return None    # the plain session names the problem, if the graph has one
