"""The Flower ServerApp: federated training of a bundle's head over a fleet of devices.

Run config (strings and numbers, from `edgetune fleet server` or `fleet simulate`):
`bundle` (path), `rounds`, `min-clients`, `strategy` (fedavg | fedadam | fedprox),
`local-epochs`, `secagg` (bool), `dp-noise` and `dp-clip` (floats, 0: off), `output`
(the global bundle to write, optional), `report` (a JSON file of the run, optional),
`wait` (seconds to wait for min-clients devices). A round goes on with the devices
still connected: one that leaves (or dies) mid-round is answered as unavailable by the
SuperLink and counted as a failure.

1. Wait for `min-clients` devices, ask each for its class names (a `get_properties`
   query: names only) and make the vocabulary, their sorted union.
2. Run Flower's own strategy over the bundle's trainable parameters with Flower's
   DefaultWorkflow: FedAvg (weighted by training samples), FedAdam or FedProx;
   with SecAgg+ (`SecAggPlusWorkflow`, clients answer through `secaggplus_mod`) and
   differential privacy (`DifferentialPrivacyClientSideFixedClipping`: clients clip
   their update, the server adds Gaussian noise) when asked. After each round every
   device scores the new global head on its held-out samples (federated evaluation).
3. Write the global bundle (the bundle whose initial parameters are the federated ones)
   and the report: per-round metrics, vocabulary, devices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import Context, Message
from flwr.common import GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import ServerApp

from edgetune.bundle import Bundle
from edgetune.errors import EdgetuneError
from edgetune.files import atomic_write
from edgetune.fleet.params import (
    bundle_id,
    initial_arrays,
    param_names,
    vocabulary,
    write_global_bundle,
)

__all__ = ["STRATEGIES", "FleetConfig", "app", "run_fleet"]

STRATEGIES = ("fedavg", "fedadam", "fedprox")
PROXIMAL_MU = 0.1  # FedProx's mu when chosen by name
FEDADAM_ETA = 0.01  # FedAdam's server learning rate (its tau stays Flower's default)


@dataclass
class FleetConfig:
    bundle: str
    rounds: int = 3
    min_clients: int = 2
    strategy: str = "fedavg"
    local_epochs: int = 1
    secagg: bool = False
    dp_noise: float = 0.0
    dp_clip: float = 0.0
    output: str = ""
    report: str = ""
    wait: float = 600.0
    round_timeout: float = 600.0
    extra: dict = field(default_factory=dict)  # reported as given

    @classmethod
    def from_run_config(cls, config: Mapping) -> FleetConfig:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        given = {k.replace("-", "_"): v for k, v in config.items()}
        out = cls(**{k: v for k, v in given.items() if k in names})
        out.extra = {k: v for k, v in given.items() if k not in names}
        out.check()
        return out

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EdgetuneError(f"strategy {self.strategy!r}: use one of {list(STRATEGIES)}")
        if int(self.rounds) < 1 or int(self.min_clients) < 1:
            raise EdgetuneError("rounds and min-clients must be at least 1")
        if (self.dp_noise > 0) != (self.dp_clip > 0):
            raise EdgetuneError("differential privacy needs both dp-noise and dp-clip > 0")
        if self.secagg and int(self.min_clients) < 3:
            raise EdgetuneError("SecAgg+ needs at least 3 clients (min-clients >= 3)")

    def run_config(self) -> dict:
        """As Flower's run config: flat, strings and numbers, '-' in names."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items() if k != "extra"}


def _wait_for_nodes(grid: Grid, n: int, wait: float) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise EdgetuneError(f"only {len(nodes)} of {n} devices joined within {wait:.0f} s")
        time.sleep(0.5)


def query_classes(grid: Grid, nodes: list[int]) -> dict[int, list[str]]:
    """Each device's class names (its answer to a get_properties query)."""
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config={}))
    messages = [Message(content=content, dst_node_id=n,
                        message_type=MessageTypeLegacy.GET_PROPERTIES) for n in nodes]
    answers = {}
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            continue
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        answers[reply.metadata.src_node_id] = json.loads(str(props["classes"]))
    return answers


def _weighted(metrics: list[tuple[int, dict]]) -> dict:
    """Sample-weighted means of the devices' numeric metrics."""
    total = sum(n for n, _ in metrics) or 1
    keys = {k for _, m in metrics for k, v in m.items() if isinstance(v, int | float)}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in metrics) / total for k in sorted(keys)}


def make_strategy(cfg: FleetConfig, arrays, fit_config: dict, evaluate_fn=None):
    """Flower's strategy (and DP wrapper) for the config; evaluate_fn(round, arrays) ->
    (loss, metrics) scores the global head on the server (centralized evaluation)."""
    common = dict(
        evaluate_fn=None if evaluate_fn is None else
        lambda r, arrays, _config: evaluate_fn(r, arrays),
        # min-clients devices start the run; a round goes on with those still there
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=1, min_evaluate_clients=1,
        min_available_clients=1,
        initial_parameters=ndarrays_to_parameters(arrays), accept_failures=True,
        on_fit_config_fn=lambda r: {**fit_config, "server-round": r},
        on_evaluate_config_fn=lambda r: {**fit_config, "server-round": r},
        fit_metrics_aggregation_fn=_weighted, evaluate_metrics_aggregation_fn=_weighted)
    if cfg.strategy == "fedadam":
        strategy = legacy.FedAdam(eta=FEDADAM_ETA, **common)
    elif cfg.strategy == "fedprox":
        strategy = legacy.FedProx(proximal_mu=PROXIMAL_MU, **common)
    else:
        strategy = legacy.FedAvg(**common)
    if cfg.dp_noise > 0:
        strategy = legacy.DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=float(cfg.dp_noise), clipping_norm=float(cfg.dp_clip),
            num_sampled_clients=int(cfg.min_clients))
    return strategy


def run_fleet(grid: Grid, context: Context, cfg: FleetConfig, evaluate_fn=None) -> dict:
    """The whole federated run (module doc); returns the report. evaluate_fn(round,
    arrays, classes) -> (loss, metrics): the server's own test of each global head."""
    started = time.monotonic()
    bundle = Bundle.load(cfg.bundle)
    nodes = _wait_for_nodes(grid, int(cfg.min_clients), float(cfg.wait))
    known = query_classes(grid, nodes)
    classes = vocabulary(known.values())
    if not classes:
        raise EdgetuneError("no device answered with its classes")
    fit_config = {"classes": json.dumps(classes), "bundle": bundle_id(bundle),
                  "local-epochs": int(cfg.local_epochs)}
    strategy = make_strategy(cfg, initial_arrays(bundle, classes), fit_config,
                             evaluate_fn and (lambda r, arrays: evaluate_fn(r, arrays, classes)))
    legacy_context = LegacyContext(context, config=ServerConfig(
        num_rounds=int(cfg.rounds), round_timeout=float(cfg.round_timeout)), strategy=strategy)
    fit_workflow = None
    if cfg.secagg:
        # shares to every device of the round; any two thirds of them unmask the sum
        fit_workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.66)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy_context)
    record = legacy_context.state.array_records[MAIN_PARAMS_RECORD]
    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
    history = legacy_context.history
    rounds = {}
    for name, series in history.metrics_distributed.items():
        for r, value in series:
            rounds.setdefault(r, {"round": r})[f"eval_{name}"] = value
    for r, loss in history.losses_distributed:
        rounds.setdefault(r, {"round": r})["eval_loss"] = loss
    for name, series in history.metrics_centralized.items():
        for r, value in series:
            rounds.setdefault(r, {"round": r})[name] = value
    for name, series in history.metrics_distributed_fit.items():
        for r, value in series:
            rounds.setdefault(r, {"round": r})[f"train_{name}"] = value
    report = {"rounds": [rounds[r] for r in sorted(rounds)], "classes": classes,
              "devices": {str(n): c for n, c in known.items()}, "strategy": cfg.strategy,
              "secagg": bool(cfg.secagg), "dp_noise": float(cfg.dp_noise),
              "dp_clip": float(cfg.dp_clip), "seconds": time.monotonic() - started,
              "param_names": param_names(bundle)}
    if cfg.output:
        info = {k: report[k] for k in ("strategy", "secagg", "dp_noise", "dp_clip")}
        info["rounds"] = int(cfg.rounds)
        info["devices"] = len(known)
        report["output"] = str(write_global_bundle(bundle, dict(zip(param_names(bundle),
                                                                      arrays)), classes,
                                                   cfg.output, info))
    report["arrays"] = arrays  # for the in-process caller; not written to the report file
    if cfg.report:
        public = {k: v for k, v in report.items() if k != "arrays"}
        atomic_write(Path(cfg.report), json.dumps(public, indent=1).encode())
    return report


def make_server_app(cfg: FleetConfig | None = None, sink: list | None = None,
                    evaluate_fn=None) -> ServerApp:
    """A ServerApp running run_fleet with `cfg` (None: from the run config); each report
    is appended to `sink` when given (in-process simulation)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg or FleetConfig.from_run_config(context.run_config)
        try:
            report = run_fleet(grid, context, config, evaluate_fn)
        except Exception as e:  # the submitter waits for a report: say why there is none
            if config.report:
                atomic_write(Path(config.report), json.dumps(
                    {"error": f"{type(e).__name__}: {e}"}).encode())
            raise
        if sink is not None:
            sink.append(report)

    return server


app = make_server_app()
