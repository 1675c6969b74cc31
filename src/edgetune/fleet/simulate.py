"""What would a fleet reach? A labelled folder split into N virtual devices, federated on
Flower's simulation engine (Ray), compared with the head trained on all of it at once.

    X, labels = folder_features("model.edgetune", "photos/", work)   # the base, once
    shards = partition(labels, clients=20, scheme="dirichlet:0.5")
    report = simulate("model.edgetune", X, labels, Xt, test_labels, shards, rounds=20)

Splits: `iid` (shuffled, equal shares) or `dirichlet:ALPHA` (label skew: each class's
samples are spread over the devices in proportions drawn from Dirichlet(ALPHA); small
ALPHA, few classes per device). Each virtual device is a `ShardDevice` (its samples,
every 5th of a class held out for federated evaluation) running the same ClientApp
code as a real one. The report has, per round, the global head's accuracy on the test
features (centralized evaluation by the ServerApp) and the devices' held-out accuracy,
and `elapsed` (seconds since the simulation started), and `central_accuracy`: the
bundle's head trained on all training samples with the same graphs and fit loop.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetune.bundle import Bundle
from edgetune.errors import BadInputError
from edgetune.fleet.device import ShardDevice, evaluate_head, train_head
from edgetune.fleet.params import initial_arrays, vocabulary
from edgetune.fleet.server_app import FleetConfig, make_server_app

__all__ = ["CENTRAL_EPOCHS", "central_accuracy", "folder_features", "partition", "simulate"]

CENTRAL_EPOCHS = 30
FEATURE_BATCH = 64


def folder_features(bundle: str | os.PathLike, folder: str | os.PathLike,
                    work: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """The base's features of every file of DIR/<class>/<file>, and their class names."""
    from edgetune.runtime.personalizer import Personalizer

    with tempfile.TemporaryDirectory(dir=work) as tmp, \
            Personalizer(bundle, profile=Path(tmp) / "features") as p:
        items = p.preparer.list_folder(folder)
        if not items:
            raise BadInputError(f"{folder} holds no class folders of usable files "
                                f"(DIR/<class>/<file>)")
        parts = [p.features([path for path, _ in items[i:i + FEATURE_BATCH]])
                 for i in range(0, len(items), FEATURE_BATCH)]
    return np.concatenate(parts), [c for _, c in items]


def partition(labels: Sequence[str], clients: int, scheme: str = "iid",
              seed: int = 0) -> list[np.ndarray]:
    """Row indices of each virtual device (every device gets at least 2 samples)."""
    n = len(labels)
    if clients < 1 or n < 2 * clients:
        raise BadInputError(f"{n} samples cannot make {clients} devices of 2 samples or more")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]
    if not scheme.startswith("dirichlet:"):
        raise BadInputError(f"partition {scheme!r}: use iid or dirichlet:ALPHA (e.g. 0.5)")
    try:
        alpha = float(scheme.split(":", 1)[1])
    except ValueError:
        alpha = -1.0
    if not alpha > 0:
        raise BadInputError(f"partition {scheme!r}: ALPHA must be a number > 0")
    labels = np.asarray(labels)
    for _ in range(100):  # redraw until every device has 2 samples (Dirichlet may starve)
        shards: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(rows)).astype(int)
            for shard, part in zip(shards, np.split(rows, cuts)):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= 2:
            return [np.sort(np.array(s, np.int64)) for s in shards]
    raise BadInputError(f"dirichlet:{alpha} left a device with fewer than 2 of {n} samples "
                        f"in 100 draws; use fewer clients or a larger ALPHA")


def central_accuracy(bundle: str | os.PathLike, X, labels, X_test, test_labels,
                     epochs: int = CENTRAL_EPOCHS) -> float:
    """Accuracy on the test features of the head trained on all training samples."""
    loaded = Bundle.load(bundle)
    classes = vocabulary([labels])
    result = train_head(loaded, initial_arrays(loaded, classes), classes, X, labels,
                        epochs=epochs)
    return evaluate_head(loaded, result.arrays, classes, X_test, test_labels)[2]["accuracy"]


def simulate(bundle: str | os.PathLike, X: np.ndarray, labels: Sequence[str],
             X_test: np.ndarray, test_labels: Sequence[str], shards: list[np.ndarray], *,
             rounds: int, local_epochs: int = 1, strategy: str = "fedavg",
             secagg: bool = False, dp_noise: float = 0.0, dp_clip: float = 0.0,
             cpus: int | None = None) -> dict:
    """Run the fleet on Flower's simulation engine; the ServerApp's report plus the test
    accuracy of the global head after each round (`rounds[i]["test_accuracy"]`)."""
    from flwr.simulation import run_simulation

    from edgetune.fleet.client_app import make_client_app

    bundle = str(Path(bundle).resolve())
    labels, X = list(labels), np.asarray(X, np.float32)
    loaded = Bundle.load(bundle)
    X_test, test_labels = np.asarray(X_test, np.float32), list(test_labels)
    started = time.monotonic()

    def evaluate_fn(server_round, arrays, classes):  # after each round: its wall time too
        loss, _, metrics = evaluate_head(loaded, arrays, classes, X_test, test_labels)
        return loss, {"test_accuracy": metrics["accuracy"],
                      "elapsed": time.monotonic() - started}

    def device_for(context):
        rows = shards[int(context.node_config["partition-id"])]
        return ShardDevice(bundle, X[rows], [labels[i] for i in rows])

    cfg = FleetConfig(bundle=bundle, rounds=int(rounds), min_clients=len(shards),
                      strategy=strategy, local_epochs=int(local_epochs), secagg=secagg,
                      dp_noise=float(dp_noise), dp_clip=float(dp_clip), wait=120.0)
    cfg.check()
    sink: list[dict] = []
    cpus = cpus or os.cpu_count() or 1
    run_simulation(make_server_app(cfg, sink, evaluate_fn), make_client_app(device_for),
                   num_supernodes=len(shards),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "num_gpus": 0,
                                                 "logging_level": "ERROR",
                                                 "log_to_driver": False}})
    if not sink:
        raise BadInputError("the simulated fleet did not finish; see Flower's log above")
    report = sink[0]  # its "arrays": the global head, manifest order
    report["clients"] = len(shards)
    return report
