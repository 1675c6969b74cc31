"""Flower's Deployment Engine on loopback, through the command line: `edgetune fleet
server` (a SuperLink and the ServerApp) and one `edgetune fleet join` process (a
SuperNode) per device profile, each device with its own classes of Fashion-MNIST
(features of the default base). One device is killed in round 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgetune.bundle import Bundle
from edgetune.fleet.deploy import free_port
from edgetune.runtime.exchange import head
from edgetune.runtime.personalizer import Personalizer

EXE = Path(sys.executable).with_name("edgetune")
# Overlapping class subsets; the 4th device is killed in round 2.
DEVICES = [("tshirt", "trouser", "pullover", "dress", "coat"),
           ("coat", "sandal", "shirt", "sneaker"),
           ("sneaker", "bag", "boot", "tshirt", "shirt"),
           ("trouser", "bag", "dress")]
ALLOWED_METRICS = {"num_examples", "loss", "accuracy", "train_loss", "objective",
                   "rollbacks", "classes", "code", "message"}


def _profiles(root: Path, bundle: str, fashion: dict) -> list[Path]:
    """Each class's training samples dealt round-robin to the devices that have it."""
    owners = {c: [d for d, classes in enumerate(DEVICES) if c in classes]
              for c in set(fashion["labels"])}
    rows: list[list[int]] = [[] for _ in DEVICES]
    seen: dict[str, int] = {}
    for i, label in enumerate(fashion["labels"]):
        if owners[label]:
            rows[owners[label][seen.get(label, 0) % len(owners[label])]].append(i)
            seen[label] = seen.get(label, 0) + 1
    paths = []
    for d, picked in enumerate(rows):
        path = root / f"device{d}"
        with Personalizer(bundle, profile=path) as p:
            p.add_features(fashion["X"][picked], [fashion["labels"][i] for i in picked])
        paths.append(path)
    return paths


def _accuracy(p: Personalizer, fashion: dict) -> float:
    answers = p.predict_features(fashion["X_test"])
    return float(np.mean([a["label"] == t for a, t in zip(answers, fashion["test_labels"])]))


def _local_only(profile: Path, tmp: Path, fashion: dict) -> float:
    """A device alone: its own head trained on all its samples (a copy of its profile)."""
    copy = tmp / f"alone-{profile.name}"
    shutil.copytree(profile, copy)
    with Personalizer(profile=copy) as p:
        p.fit()
        return _accuracy(p, fashion)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the SuperLink did not start")


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_three_devices_and_a_crash_federate_on_loopback(fashion_bundle, fashion, tmp_path):
    profiles = _profiles(tmp_path, fashion_bundle, fashion)
    alone = [_local_only(p, tmp_path, fashion) for p in profiles[:3]]
    port = free_port()
    server = subprocess.Popen(
        [str(EXE), "fleet", "server", fashion_bundle, "--rounds", "3", "--min-clients", "4",
         "--address", f"127.0.0.1:{port}", "-o", str(tmp_path / "global.edgetune"),
         "--local-epochs", "10", "--wait", "120", "--timeout", "900", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    nodes = []
    try:
        _wait_port(port, server)
        for d, profile in enumerate(profiles):
            nodes.append(subprocess.Popen(
                [str(EXE), "fleet", "join", "--profile", str(profile), "--server",
                 f"127.0.0.1:{port}", "--audit", str(tmp_path / f"audit{d}.jsonl"),
                 "--log", str(tmp_path / f"node{d}.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        # Device 3 crashes in round 2: once it has answered round 1's evaluation, the
        # server sends round 2's training; kill its whole process group (SIGKILL).
        audit = tmp_path / "audit3.jsonl"
        deadline = time.monotonic() + 600
        while len(_lines(audit)) < 3:
            assert time.monotonic() < deadline and server.poll() is None, \
                server.communicate()
            time.sleep(0.2)
        os.killpg(nodes[3].pid, signal.SIGKILL)
        out, err = server.communicate(timeout=900)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(30)
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert [r["round"] for r in report["rounds"] if r["round"] > 0] == [1, 2, 3]
    assert report["classes"] == sorted({c for classes in DEVICES for c in classes})
    assert sorted(map(sorted, report["devices"].values())) == sorted(map(sorted, DEVICES))

    # Every surviving device ends with the same global head: the one in global.edgetune.
    glob = Bundle.load(tmp_path / "global.edgetune")
    classes = glob.manifest["fleet"]["classes"]
    assert glob.manifest["classes"]["names"] == classes  # a new device takes them by name
    final = glob.initial_values()
    for profile in profiles[:3]:
        with Personalizer(profile=profile, read_only=True) as p:
            params, columns = head(p)
            order = [columns.index(c) for c in classes]
            for spec in glob.params:
                axis = spec["shape"].index("classes")
                assert np.allclose(np.take(params[spec["name"]], order, axis),
                                   final[spec["name"]], atol=1e-6), spec["name"]
    with Personalizer(profile=profiles[0], read_only=True) as p:
        federated = _accuracy(p, fashion)
    print(f"held-out accuracy: federated {federated:.3f}, devices alone {alone}")
    assert federated >= max(alone)

    # The crashed device lost nothing: its profile opens for writing (the lock went with
    # the process) and holds the global head of round 1, all classes included.
    with Personalizer(profile=profiles[3]) as p:
        assert p.trained and set(p.classes()) == set(classes)
        assert p.counts()["bag"] > 0

    # After federation a device fine-tunes from the global head (not from scratch: a
    # fresh softmax head's cross-entropy would be ln 10 on its samples).
    with Personalizer(profile=profiles[0]) as p:
        kept = p.fit(epochs=5)[-1]
        assert kept["event"] == "kept" and kept["start"] < 0.8 * np.log(len(classes))
        assert kept["objective"] <= kept["start"]

    # What left each device: the head's arrays (shapes of the bundle's parameters) and
    # named numbers; never a sample or a feature.
    bundle = Bundle.load(fashion_bundle)
    n_features = bundle.manifest["features"]["shape"][0]
    shapes = [[n_features, len(classes)], [len(classes), n_features], [len(classes)]]
    for d in range(4):
        sent = _lines(tmp_path / f"audit{d}.jsonl")
        assert sent and {m["type"] for m in sent} <= {"get_properties", "train", "evaluate"}
        for message in sent:
            for record in message["arrays"].values():
                for array in record.values():
                    assert array["shape"] in shapes and array["dtype"] == "float32"
                    assert array["bytes"] <= 4 * np.prod(array["shape"]) + 256
            names = {k for keys in message["metrics"].values() for k in keys} | {
                k for entries in message["config"].values() for k in entries}
            assert names <= ALLOWED_METRICS, names
    assert sum(m["type"] == "train" for m in _lines(tmp_path / "audit0.jsonl")) == 3
