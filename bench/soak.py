"""Soak: edgetune loses nothing under SIGKILL and lets nothing in, at scale.

1. Crash safety. A worker process opens a profile and loops over random operations:
   adding batches of random float32 features through `SampleStore.add`, adding real
   images through `Personalizer.add_samples` (base model included), training
   (`fit` ends with a checkpoint), `Personalizer.save()`, writing large checkpoints
   (0.25-4 MB) to a `CheckpointDir`, creating new profiles. Every operation is written
   to a journal before it starts and after it ends. The parent kills the worker with
   SIGKILL at a random moment, then checks, with the worker dead:

   - the profile opens (`Personalizer(profile=...)`), with no damaged-checkpoint warning;
   - its checkpoint loads and is the last one saved, or the one being saved at the kill;
   - SQLite's integrity check passes; every sample of a finished add is stored, the add
     in flight is stored whole or not at all, and every stored feature row has the
     CRC32 the worker recorded for it (no half-written sample);
   - the large CheckpointDir's latest checkpoint is the last saved one or the one in
     flight, with exactly the values the worker wrote;
   - a profile being created at the kill opens.

   Then the next worker continues on the same profile.
2. Fuzzing (plain random mutations; the test suite runs the hypothesis versions):
   hostile bundles through `Bundle.load` (a `BundleError` or a verified bundle, no file
   opened outside the bundle), the protobuf scanner (`ProtobufError` or an answer, work
   bounded by the input's size), mutated image bytes (`BadInputError` or pixels).

    .venv/bin/python bench/soak.py                  # 250 + 250 + 125 kills, 2000 cases each
    .venv/bin/python bench/soak.py --kills 1000 --fuzz 0 --seed 7

Prints a JSON report on stdout (progress on stderr); exits 1 if any check failed, or if
the negative control (checkpoints written in place, not atomically) goes unnoticed.
tests/reliability/test_reliability_crash.py runs the crash part with a few dozen kills.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16  # the tiny base's input side
CLASSES = ("a", "b", "c")
JOURNAL = "journal.log"
KINDS = ("store", "images", "fit", "save", "bulk", "fresh")
MIXES = {  # how often the worker picks each operation
    "all": (0.30, 0.12, 0.13, 0.15, 0.25, 0.05),
    "adds": (0.7, 0.3, 0, 0, 0, 0),
    "saves": (0, 0, 0.25, 0.25, 0.35, 0.15),  # checkpoints, and new profiles' bundle copies
    "bulk": (0, 0, 0, 0, 1, 0),
}
MAX_SAMPLES = 3000  # the parent clears journaled samples beyond this, to keep rounds fast
_SOURCE = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")  # op:row:rows:crc32


# -- a small real bundle and profile -------------------------------------------------------------
def build_bundle(path: Path) -> Path:
    """A tiny image bundle (16x16 RGB -> 8 features -> softmax, Adam): fast to run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_base

    from edgetune.converter.convert import convert
    from edgetune.converter.heads import SoftmaxClassifier
    from edgetune.converter.optimizers import Adam

    base = tiny_base(path.parent / "tiny-base.onnx", size=SIZE)
    return convert(base, SoftmaxClassifier(len(CLASSES)), Adam(lr=0.01)).save(path)


def prepare(root: Path, bundle: Path) -> None:
    """`root`: the bundle copy, a trained profile with one checkpoint, an empty journal."""
    import numpy as np

    from edgetune.runtime.personalizer import Personalizer

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, root / "bundle.edgetune")
    rng = np.random.default_rng(0)
    p = Personalizer(root / "bundle.edgetune", profile=root / "profile", threads=1,
                     min_image_size=SIZE)
    p.add_samples(list(rng.integers(0, 256, (6, SIZE, SIZE, 3), np.uint8)), list(CLASSES) * 2)
    p.fit(epochs=2)
    p.close()
    (root / JOURNAL).write_text("")


def _sources(op: int, X) -> list[str]:
    return [f"{op}:{i}:{len(X)}:{zlib.crc32(row.tobytes())}" for i, row in enumerate(X)]


def bulk_values(seq: int):
    import numpy as np

    rng = np.random.default_rng(seq)
    return rng.standard_normal(int(rng.integers(1 << 16, 1 << 20))).astype(np.float32)


# -- the worker (a child process, killed at a random moment) ------------------------------------
def worker(root: Path, first_id: int, seed: int, mix: str = "all", unsafe: bool = False,
           slow_fsync: float = 0.0) -> None:
    """Loop over random operations until killed. `slow_fsync`: seconds each `os.fsync`
    of a checkpoint takes on top (a slow SD card: kills land inside saves more often).
    `unsafe`: write checkpoints in place, not atomically (the negative control: the
    parent must then find damage)."""
    import numpy as np

    from edgetune.runtime import checkpoint
    from edgetune.runtime.checkpoint import CheckpointDir
    from edgetune.runtime.personalizer import Personalizer

    warnings.simplefilter("ignore")
    if slow_fsync:
        fsync = os.fsync

        def slow(fd):
            time.sleep(slow_fsync)
            fsync(fd)

        os.fsync = slow  # every os.fsync of this worker: checkpoints, bundle copies
    if unsafe:
        def write_in_place(path, payload):  # in 64 KiB steps, as a slow card would
            with open(path, "wb") as f:
                for i in range(0, len(payload), 1 << 16):
                    f.write(payload[i:i + (1 << 16)])
                    f.flush()
                    os.fsync(f.fileno())

        checkpoint._atomic_write = write_in_place
    fd = os.open(root / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def log(*parts) -> None:  # one write(2) per line: in the file even after SIGKILL
        os.write(fd, (" ".join(str(x) for x in parts) + "\n").encode())

    rng = np.random.default_rng(seed)
    ids = itertools.count(first_id)
    p = Personalizer(profile=root / "profile", threads=1, min_image_size=SIZE)
    bulk = CheckpointDir(root / "bulk")
    save = p.checkpoints.save

    def journaled_save(tensors, meta=None):  # every checkpoint, from save() or fit()
        op = next(ids)
        log("B", "ckpt", op)
        path = save(tensors, meta)
        log("E", "ckpt", op, int(path.stem.split("-")[1]), int(tensors["__step__"][0]))
        return path

    p.checkpoints.save = journaled_save
    print("ready", flush=True)
    while True:
        kind = str(rng.choice(KINDS, p=MIXES[mix]))
        op = next(ids)
        if kind == "store":
            X = rng.standard_normal((int(rng.integers(1, 17)), *p.features_shape))
            X = X.astype(np.float32)
            log("B", kind, op, len(X))
            p.store.add(X, [str(c) for c in rng.choice(CLASSES, len(X))],
                        source=_sources(op, X))
            log("E", kind, op, len(X))
            continue
        if kind == "images":
            images = list(rng.integers(0, 256, (int(rng.integers(1, 4)), SIZE, SIZE, 3),
                                       np.uint8))
            X = p.features(images)
            log("B", kind, op, len(X))
            p.add_samples(images, [str(c) for c in rng.choice(CLASSES, len(images))],
                          _sources(op, X))
            log("E", kind, op, len(X))
            continue
        log("B", kind, op)
        if kind == "fit":
            p.fit(epochs=int(rng.integers(1, 3)), early_stop=False)
        elif kind == "save":
            p.save()
        elif kind == "bulk":
            bulk.save({"w": bulk_values(op)}, {"seq": str(op)})
        else:
            Personalizer(root / "bundle.edgetune", profile=root / "fresh" / str(op),
                         threads=1, min_image_size=SIZE).close()
        log("E", kind, op)


# -- the parent: kill, then verify ----------------------------------------------------------------
def _journal(root: Path):
    """The journal: begun and ended operations {id: (kind, numbers)}, the operations
    never ended (killed), the one the last kill interrupted, and the id up to which the
    parent cleared journaled samples."""
    begun, ended, cleared, this_round = {}, {}, -1, []
    for line in (root / JOURNAL).read_text().splitlines():
        tag, *rest = line.split()
        if tag == "R":
            this_round = []
        elif tag == "C":
            cleared = int(rest[0])
        else:
            op, entry = int(rest[1]), (rest[0], [int(x) for x in rest[2:]])
            if tag == "B":
                begun[op] = entry
                this_round.append(op)
            else:
                ended[op] = entry
    interrupted = {op: entry for op, entry in begun.items() if op not in ended}
    open_now = [op for op in this_round if op not in ended]
    assert len(open_now) <= 2, f"more than one operation in flight: {open_now}"
    # A checkpoint save runs inside fit/save: the innermost (newest) one was interrupted.
    in_flight = max(open_now) if open_now else None
    return begun, ended, interrupted, in_flight, cleared


def verify(root: Path) -> tuple[str | None, bool, list[str]]:
    """Check the profile after a kill: (the operation the kill interrupted, whether it
    interrupted the writing of a checkpoint file, problems)."""
    begun, ended, interrupted, in_flight, cleared = _journal(root)
    kind = begun[in_flight][0] if in_flight is not None else None
    # A temporary checkpoint file left behind: killed between its creation and rename.
    mid_write = any(d.is_dir() and any(d.glob(".ckpt-*.tmp*"))
                    for d in (root / "profile" / "checkpoints", root / "bulk"))
    try:
        problems = _verify(root, begun, ended, interrupted, cleared)
    except Exception as e:  # noqa: BLE001 - reported as a problem
        problems = [f"verification failed: {type(e).__name__}: {e}"]
    return kind, mid_write, problems


def _verify(root, begun, ended, interrupted, cleared) -> list[str]:
    import numpy as np

    from edgetune.runtime.checkpoint import CheckpointDir
    from edgetune.runtime.personalizer import Personalizer

    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p = Personalizer(profile=root / "profile", threads=1, min_image_size=SIZE)
        except Exception as e:  # noqa: BLE001 - the failure this soak looks for
            return [f"the profile does not open: {type(e).__name__}: {e}"]
    problems += [f"warning on open: {w.message}" for w in caught]
    try:
        # Checkpoints: the last one saved, or one whose save was interrupted after it
        # was written (its number is then higher by one per such save).
        latest = p.checkpoints.latest()
        saves = sorted((op, extra) for op, (k, extra) in ended.items() if k == "ckpt")
        if latest is None:
            problems.append("no checkpoint loads")
        elif saves:
            last_op, (number, step) = saves[-1]
            after = sum(1 for op, (k, _) in interrupted.items() if k == "ckpt" and op > last_op)
            if not number <= latest.number <= number + after:
                problems.append(f"checkpoint {latest.number} loads; the last saved is "
                                f"{number} and {after} saves were interrupted since")
            if p.step < step:
                problems.append(f"step {p.step} is older than the last saved, {step}")
        # Samples: SQLite intact; every add whole or absent; every row as written.
        with sqlite3.connect(root / "profile" / "samples.sqlite") as db:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"SQLite integrity check: {check}")
        X, _ = p.store.features_and_labels()
        rows: Counter = Counter()
        for info, x in zip(p.store.samples(), X):
            m = _SOURCE.match(info.source or "")
            if m is None:
                continue
            op, crc = int(m.group(1)), int(m.group(4))
            rows[op] += 1
            if zlib.crc32(x.tobytes()) != crc:
                problems.append(f"sample {info.id}: features differ from those written")
            if op <= cleared or op not in begun:
                problems.append(f"sample {info.id} of operation {op} should not exist")
        for op, (k, extra) in begun.items():
            if k in ("store", "images") and op > cleared:
                allowed = (0, extra[0]) if op in interrupted else (extra[0],)
                if rows[op] not in allowed:
                    problems.append(f"operation {op} added {extra[0]} samples; {rows[op]} "
                                    f"are stored")
        # The large checkpoints.
        seqs = {op for op, (k, _) in begun.items() if k == "bulk"}
        done = [op for op in seqs if op in ended]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bulk = CheckpointDir(root / "bulk").latest()
        problems += [f"bulk: {w.message}" for w in caught]
        if done and bulk is None:
            problems.append("no bulk checkpoint loads")
        elif bulk is not None:
            seq = int(bulk.meta["seq"])
            if seq not in seqs or (done and seq < max(done)):
                problems.append(f"bulk checkpoint {seq} is not the last saved one "
                                f"({max(done) if done else None}) nor one in flight")
            if not np.array_equal(bulk.tensors["w"], bulk_values(seq)):
                problems.append(f"bulk checkpoint {seq} holds other values")
        # Profiles being created: each opens (given its bundle).
        for fresh in sorted((root / "fresh").glob("*")):
            try:
                Personalizer(root / "bundle.edgetune", profile=fresh, threads=1,
                             min_image_size=SIZE).close()
            except Exception as e:  # noqa: BLE001 - reported
                problems.append(f"new profile {fresh.name} does not open: {e}")
            shutil.rmtree(fresh)
    finally:
        p.close()
    if len(X) > MAX_SAMPLES:  # keep rounds fast: clear the journaled samples
        with sqlite3.connect(root / "profile" / "samples.sqlite") as db:
            db.execute("DELETE FROM samples WHERE source LIKE '%:%:%:%'")
        with open(root / JOURNAL, "a") as f:
            f.write(f"C {max(begun)}\n")
    return problems


def _verifies(path: Path) -> bool:
    from edgetune.runtime.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except Exception:  # noqa: BLE001 - any failure: it does not verify
        return False
    return True


def zygote() -> None:
    """Import once, then fork one worker per line read from stdin (its arguments);
    print "pid N" at once and "dead STATUS" when the worker is gone. Forking from an
    interpreter that has already imported numpy, onnxruntime and edgetune saves ~0.2 s
    per kill; the worker is still a process of its own, killed with SIGKILL."""
    import traceback

    import numpy  # noqa: F401 - imported here once, for every worker

    import edgetune.runtime.personalizer  # noqa: F401

    for line in sys.stdin:
        args = line.split()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                worker(Path(args[0]), int(args[1]), int(args[2]), args[3],
                       args[4] == "unsafe", float(args[5]))
            except BaseException:  # noqa: B036 - reported, then the process ends
                traceback.print_exc()
            finally:
                os._exit(1)
        print(f"pid {pid}", flush=True)
        print(f"dead {os.waitpid(pid, 0)[1]}", flush=True)


def _wait_for(root: Path, journal_at: int, aim: set[str], mid_write: bool,
              limit: float = 3.0) -> None:
    """Wait (up to `limit` seconds) until the worker is inside an operation of a kind in
    `aim` (its journal, from byte `journal_at`, has begun and not ended one), or, with
    `mid_write`, until a checkpoint's temporary file exists: kills aimed by the phase the
    worker reports land inside operations however fast or loaded the machine is."""
    folders = (root / "profile" / "checkpoints", root / "bulk")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if mid_write:
            if any(any(d.glob(".ckpt-*.tmp*")) for d in folders if d.is_dir()):
                return
        else:
            with open(root / JOURNAL, "rb") as f:
                f.seek(journal_at)
                lines = f.read().decode(errors="replace").splitlines()
            open_ops: dict[str, str] = {}
            for line in lines:
                tag, *rest = line.split()
                if tag == "B" and len(rest) > 1:
                    open_ops[rest[1]] = rest[0]
                elif tag == "E" and len(rest) > 1:
                    open_ops.pop(rest[1], None)
            if aim & set(open_ops.values()):
                return
        time.sleep(0.0005)


def crash_rounds(root: Path, kills: int, seed: int = 0, max_delay: float = 0.25,
                 mix: str = "all", unsafe: bool = False, slow_fsync: float = 0.02,
                 progress=None, aim: set[str] | None = None) -> dict:
    """Kill a worker `kills` times on the profile in `root` (made by `prepare`), each
    time after a random delay of up to `max_delay` seconds once it is ready. With `aim`
    (operation kinds), each kill then waits until one of those is in flight, and every
    third kill until a checkpoint file is being written (if the mix writes any)."""
    rng = random.Random(seed)
    interrupted: Counter = Counter()
    problems: list[str] = []
    mid_writes = 0
    errors = open(root / "worker.err", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    forker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "zygote"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                              text=True, env=env)
    try:
        for round_ in range(1, kills + 1):
            with open(root / JOURNAL, "a") as f:
                f.write(f"R {round_}\n")
            forker.stdin.write(f"{root} {round_ * 1_000_000} {seed * 100_000 + round_} {mix} "
                               f"{'unsafe' if unsafe else 'safe'} {slow_fsync}\n")
            journal_at = (root / JOURNAL).stat().st_size
            forker.stdin.flush()
            lines = [forker.stdout.readline().strip(), forker.stdout.readline().strip()]
            pid = int(next(line for line in lines if line.startswith("pid"))[4:])
            if "ready" in lines:
                time.sleep(rng.uniform(0, max_delay))
                if aim:
                    _wait_for(root, journal_at, aim, mid_write=round_ % 3 == 0
                              and bool(aim & {"ckpt", "bulk"}))
                os.kill(pid, signal.SIGKILL)
                lines.append(forker.stdout.readline().strip())
            status = int(next(line for line in lines if line.startswith("dead"))[5:])
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                errors.flush()
                problems.append(f"round {round_}: the worker ended by itself: "
                                f"{(root / 'worker.err').read_text()[-2000:]}")
            kind, mid_write, found = verify(root)
            if unsafe:  # count each kill's damage on its own: remove what it broke
                for folder in (root / "bulk", root / "profile" / "checkpoints"):
                    for path in folder.glob("ckpt-*.safetensors"):
                        if not _verifies(path):
                            path.unlink()
            interrupted[kind or "between operations"] += 1
            mid_writes += mid_write
            problems += [f"round {round_} (killed during {kind}): {p}" for p in found]
            if progress:
                progress(round_, kind, found)
    finally:
        forker.stdin.close()
        forker.wait(60)
        errors.close()
    _, ended, *_ = _journal(root)
    done = Counter(kind for kind, _ in ended.values())
    return {"kills": kills, "interrupted": dict(interrupted),
            "interrupted_while_writing_a_checkpoint_file": mid_writes,
            "problems": problems, "completed": dict(done)}


# -- fuzzing ------------------------------------------------------------------------------------
_opened: list[str] | None = None


def _audit(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))


def _rehash(root: Path, name: str) -> None:
    import hashlib

    manifest = json.loads((root / "manifest.json").read_text())
    for entry in [*manifest["graphs"].values(), manifest["init"]]:
        if entry["file"] == name:
            entry["sha256"] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def _random_json(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randint(-2**40, 2**40)
    if pick == 2:
        return rng.uniform(-1e9, 1e9)
    if pick == 3:
        return "".join(rng.choice("ab/.\\\x00é ") for _ in range(rng.randrange(6)))
    if pick == 4:
        return rng.choice(["float32", "classes", "NHWC", "../x", "", "edgetune.bundle"])
    if pick == 5:
        return [rng.randint(0, 2**31) for _ in range(rng.randrange(1, 9))]
    if pick == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(5)): _random_json(rng, depth + 1) for _ in range(3)}


def _mutate_bundle(rng: random.Random, root: Path) -> str:
    """Apply one hostile change to the bundle at `root`; return its kind."""
    import numpy as np

    files = ["base.onnx", "train.onnx", "train_epoch.onnx", "infer.onnx",
             "params.safetensors"]
    manifest_path = root / "manifest.json"
    kind = rng.choice(["manifest bytes", "manifest truncated", "manifest value",
                       "manifest JSON", "huge shape", "file name", "changed byte",
                       "truncated file", "truncated file, re-signed", "random params",
                       "external data"])
    manifest = json.loads(manifest_path.read_text())
    if kind == "manifest bytes":
        manifest_path.write_bytes(rng.randbytes(rng.randrange(3000)))
    elif kind == "manifest truncated":
        data = manifest_path.read_bytes()
        manifest_path.write_bytes(data[:rng.randrange(len(data))])
    elif kind == "manifest JSON":
        manifest_path.write_text(json.dumps(_random_json(rng)))
    elif kind == "manifest value":
        paths = []

        def walk(v, prefix):
            paths.append(prefix)
            items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(
                v, list) else ()
            for k, x in items:
                walk(x, (*prefix, k))

        walk(manifest, ())
        path = rng.choice(paths[1:])
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = _random_json(rng)
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "huge shape":
        dims = [rng.randint(1 << 10, 2**31 - 1) for _ in range(rng.randint(3, 8))]
        target = rng.choice(["params", "state", "features", "input"])
        (manifest[target][0] if target in ("params", "state") else manifest[target])[
            "shape"] = dims
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "file name":
        entry = rng.choice([*manifest["graphs"].values(), manifest["init"]])
        entry["file"] = rng.choice(["../canary.bin", "/etc/passwd", "..", "a\x00b", "x" * 300,
                                    ".hidden", "a/b", "nope.onnx", "sub\\x"])
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "changed byte":
        name = rng.choice(files)
        data = bytearray((root / name).read_bytes())
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        (root / name).write_bytes(bytes(data))
    elif kind.startswith("truncated file"):
        name = rng.choice(files)
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[:rng.randrange(len(data))])
        if kind.endswith("re-signed"):
            _rehash(root, name)
            kind = kind.replace("file", "params" if name.endswith("safetensors") else "graph")
    elif kind == "random params":
        (root / "params.safetensors").write_bytes(rng.randbytes(rng.randrange(2000)))
        _rehash(root, "params.safetensors")
    else:
        import onnx
        from onnx import external_data_helper, numpy_helper

        name = rng.choice(["base.onnx", "train.onnx", "train_epoch.onnx"])
        location = rng.choice(["../canary.bin", "/etc/passwd", "link.bin", "sub/../../x",
                               "../" * rng.randint(1, 6) + "etc/passwd", "a\x00b", "",
                               "inside.bin", "sub/inside.bin", "x" * 5000, "..\\canary.bin"])
        (root / "link.bin").symlink_to(root.parent / "canary.bin")
        model = onnx.load(root / name, load_external_data=False)
        for tensor in model.graph.initializer:
            raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
            tensor.CopyFrom(raw)
            external_data_helper.set_external_data(tensor, location=location, offset=0,
                                                   length=int(np.prod(raw.dims)) * 4)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
        (root / name).write_bytes(model.SerializeToString())
        _rehash(root, name)
        # Inside: the names, and on POSIX a backslash is part of a file name.
        inside = location in ("inside.bin", "sub/inside.bin", "x" * 5000) or (
            location == "..\\canary.bin" and os.sep == "/")
        kind += " (inside)" if inside else " (escaping)"
    return kind


def _must_refuse(kind: str) -> bool:
    """Whether a mutation must be refused (others may load, e.g. a changed `created_by`
    or a graph cut between two protobuf fields and re-signed)."""
    return kind not in ("manifest value", "truncated graph, re-signed",
                        "external data (inside)")


def fuzz_bundles(n: int, bundle: Path, seed: int = 0) -> dict:
    from edgetune.bundle import Bundle, BundleError

    global _opened
    sys.addaudithook(_audit)
    rng = random.Random(seed)
    outcomes: dict[str, Counter] = {}
    failures: list[str] = []
    prefixes = tuple(os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix))
    for i in range(n):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "b.edgetune"
            shutil.copytree(bundle, root)
            (Path(tmp) / "canary.bin").write_bytes(b"\0" * 64)
            kind = _mutate_bundle(rng, root)
            _opened = []
            try:
                Bundle.load(root)
                outcome = "loaded, verified"
                if _must_refuse(kind):
                    failures.append(f"case {i} ({kind}): loaded")
            except BundleError:
                outcome = "BundleError"
            except Exception as e:  # noqa: BLE001 - counted as a failure
                outcome = f"other: {type(e).__name__}"
                failures.append(f"case {i} ({kind}): {type(e).__name__}: {e}")
            finally:
                opened, _opened = _opened, None
            inside = str(root.resolve()) + os.sep
            outside = [p for p in opened if not os.path.realpath(p).startswith(inside)
                       and not (os.path.realpath(p).startswith(prefixes)
                                and p.endswith((".py", ".pyc", ".so")))]
            if outside:
                failures.append(f"case {i} ({kind}): opened {outside}")
                outcome += ", read outside"
            outcomes.setdefault(kind, Counter())[outcome] += 1
    return {"cases": n, "outcomes": {k: dict(v) for k, v in sorted(outcomes.items())},
            "failures": failures}


def fuzz_scanner(n: int, bundle: Path, seed: int = 0) -> dict:
    from edgetune import onnx_scan

    rng = random.Random(seed)
    originals = [(bundle / f).read_bytes() for f in ("base.onnx", "train.onnx",
                                                      "train_epoch.onnx", "infer.onnx")]
    outcomes: Counter = Counter()
    failures: list[str] = []
    worst_ratio, worst_seconds = 0.0, 0.0
    fields = onnx_scan.fields
    scanned = [0]

    def counting(message):
        scanned[0] += len(message)
        return fields(message)

    onnx_scan.fields = counting
    try:
        for i in range(n):
            if i % 2:
                data = rng.randbytes(rng.randrange(4096))
            else:
                data = bytearray(rng.choice(originals))
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(data)) if data else 0
                    how = rng.choice([0, 0, 0, 1, 2, 3])
                    if how == 0 and data:
                        data[at] ^= rng.randrange(1, 256)
                    elif how == 1:
                        data[at:at] = rng.randbytes(rng.randint(1, 8))
                    elif how == 2:
                        del data[at:at + rng.randint(1, 8)]
                    else:
                        del data[at:]
                data = bytes(data)
            scanned[0] = 0
            t0 = time.perf_counter()
            try:
                onnx_scan.external_data_locations(data)
                outcomes["answered"] += 1
            except onnx_scan.ProtobufError:
                outcomes["ProtobufError"] += 1
            except Exception as e:  # noqa: BLE001 - counted as a failure
                outcomes[f"other: {type(e).__name__}"] += 1
                failures.append(f"case {i}: {type(e).__name__}: {e}")
            worst_seconds = max(worst_seconds, time.perf_counter() - t0)
            worst_ratio = max(worst_ratio, scanned[0] / max(len(data), 1))
    finally:
        onnx_scan.fields = fields
    return {"cases": n, "outcomes": dict(outcomes), "failures": failures,
            "max_bytes_scanned_per_input_byte": round(worst_ratio, 2),
            "max_seconds": round(worst_seconds, 4)}


def fuzz_images(n: int, seed: int = 0) -> dict:
    import io

    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from edgetune.runtime import BadInputError, load_image

    rng = random.Random(seed)
    photo = skdata.chelsea()[100:196:2, 150:214]
    encoded = {}
    for fmt, kw in {"JPEG": {"quality": 90}, "PNG": {}, "GIF": {}, "BMP": {}, "TIFF": {},
                    "WEBP": {"quality": 80}, "PPM": {}}.items():
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, fmt, **kw)
        encoded[fmt] = buf.getvalue()
    outcomes: dict[str, Counter] = {}
    failures: list[str] = []
    limit = 1 << 20
    warnings.simplefilter("ignore")
    for i in range(n):
        fmt = rng.choice(sorted(encoded))
        data = bytearray(encoded[fmt])
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data)) if data else 0
            how = rng.randrange(5)
            if how == 0 and data:
                data[at] ^= 1 << rng.randrange(8)
            elif how == 1 and data:
                data[at] = rng.randrange(256)
            elif how == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 16))
            elif how == 3:
                del data[at:at + rng.randint(1, 256)]
            else:
                del data[at:]
        try:
            pixels = load_image(bytes(data), min_size=1, max_pixels=limit)
            ok = (pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
                  and pixels.shape[0] * pixels.shape[1] <= limit)
            outcome = "decoded" if ok else "bad pixels"
            if not ok:
                failures.append(f"case {i} ({fmt}): pixels {pixels.shape} {pixels.dtype}")
        except BadInputError:
            outcome = "BadInputError"
        except Exception as e:  # noqa: BLE001 - counted as a failure
            outcome = f"other: {type(e).__name__}"
            failures.append(f"case {i} ({fmt}): {type(e).__name__}: {e}")
        outcomes.setdefault(fmt, Counter())[outcome] += 1
    return {"cases": n, "outcomes": {k: dict(v) for k, v in sorted(outcomes.items())},
            "failures": failures}


# -- command line -------------------------------------------------------------------------------
def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["zygote"]:
        zygote()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=250,
                        help="kills while checkpoints are written, as many while samples "
                             "are added, and half as many with every operation mixed")
    parser.add_argument("--fuzz", type=int, default=2000, help="cases per fuzzer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.25,
                        help="kill within this many seconds after the worker is ready")
    parser.add_argument("--slow-fsync", type=float, default=0.02, metavar="SECONDS",
                        help="added to each checkpoint fsync in the worker (a slow disk)")
    parser.add_argument("--unsafe-control", type=int, default=50, metavar="KILLS",
                        help="then kill a worker whose checkpoint writes are not atomic "
                             "this many times: the checks must find damage")
    args = parser.parse_args(argv)
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgetune-soak-") as tmp:
        tmp = Path(tmp)
        bundle = build_bundle(tmp / "tiny.edgetune")
        for mix, kills in (("saves", args.kills), ("adds", args.kills),
                           ("all", args.kills // 2)):
            if not kills:
                continue
            prepare(tmp / mix, bundle)
            t0 = time.perf_counter()

            def progress(round_, kind, found, mix=mix, kills=kills, t0=t0):
                if round_ % 50 == 0 or found:
                    print(f"  {mix}: {round_}/{kills} kills ({time.perf_counter() - t0:.0f} s)"
                          f"{': ' + '; '.join(found) if found else ''}", file=sys.stderr,
                          flush=True)

            report[f"crash ({mix})"] = crash_rounds(
                tmp / mix, kills, args.seed, args.max_delay, mix=mix,
                slow_fsync=args.slow_fsync, progress=progress)
            report[f"crash ({mix})"]["seconds"] = round(time.perf_counter() - t0, 1)
        if args.unsafe_control:
            prepare(tmp / "control", bundle)
            control = crash_rounds(tmp / "control", args.unsafe_control, args.seed,
                                   args.max_delay, mix="bulk", unsafe=True,
                                   slow_fsync=args.slow_fsync)
            found = control.pop("problems")
            control["kills_that_left_damage"] = len({p.split(" (")[0] for p in found})
            control["examples"] = [p[:200] for p in found[:3]]
            report["negative control (in-place writes)"] = control
        if args.fuzz:
            for name, run in (("bundles", lambda: fuzz_bundles(args.fuzz, bundle, args.seed)),
                              ("scanner", lambda: fuzz_scanner(args.fuzz, bundle, args.seed)),
                              ("images", lambda: fuzz_images(args.fuzz, args.seed))):
                t0 = time.perf_counter()
                report[name] = run()
                report[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    failed = sum(len(r.get("problems", [])) + len(r.get("failures", [])) for r in report.values())
    if args.unsafe_control and not report["negative control (in-place writes)"][
            "kills_that_left_damage"]:
        failed += 1  # the checks would not notice a non-atomic write: they prove nothing
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
