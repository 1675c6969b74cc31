"""`edgetune fleet server|join|simulate`: federated personalization on Flower
(edgetune.fleet; `pip install 'edgetune[fleet]'`)."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from edgetune.cli.failures import output_file
from edgetune.cli.options import DefaultsFormatter
from edgetune.cli.output import emit, note
from edgetune.errors import BadInputError, EdgetuneError

__all__ = ["add_commands"]

ADDRESS = "127.0.0.1:9092"


def _fleet():
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise EdgetuneError("edgetune fleet needs Flower: pip install 'edgetune[fleet]'") \
            from None


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text}: must be > 0")
        return value
    return parse


def _privacy(args) -> tuple[float, float]:
    noise, clip = args.dp_noise or 0.0, args.dp_clip or 0.0
    if (noise > 0) != (clip > 0):
        raise BadInputError("differential privacy needs both --dp-noise and --dp-clip")
    return noise, clip


def _rounds_text(rounds: list[dict]) -> str:
    lines = []
    for r in rounds:
        parts = [f"round {r['round']}"]
        for key, label in (("test_accuracy", "test"), ("eval_accuracy", "devices' held-out"),
                           ("train_train_loss", "train loss")):
            if r.get(key) is not None:
                parts.append(f"{label} {r[key]:.3f}")
        lines.append("  " + ", ".join(parts))
    return "\n".join(lines)


def server(args) -> int:
    _fleet()
    from edgetune.bundle import Bundle
    from edgetune.fleet.deploy import SuperLink
    from edgetune.fleet.server_app import FleetConfig

    out = output_file(args.output)
    bundle = Bundle.load(args.bundle)  # a bad bundle fails before anything starts
    noise, clip = _privacy(args)
    cfg = FleetConfig(bundle=str(Path(bundle.path).resolve()), rounds=args.rounds,
                      min_clients=args.min_clients, strategy=args.strategy,
                      local_epochs=args.local_epochs, secagg=args.secagg, dp_noise=noise,
                      dp_clip=clip, output=str(out.resolve()), wait=args.wait)
    cfg.check()
    with tempfile.TemporaryDirectory(prefix="edgetune-fleet-") as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        with SuperLink(args.address, home) as link:
            note(f"edgetune fleet: SuperLink on {link.address}; waiting for "
                 f"{args.min_clients} devices (edgetune fleet join --profile P --server "
                 f"{link.address})")
            report = link.run(cfg, timeout=args.timeout)
    report.pop("param_names", None)
    emit(args, report, f"{len(report['devices'])} devices, classes "
         f"{', '.join(report['classes'])}\n{_rounds_text(report['rounds'])}\n"
         f"global bundle: {report['output']}")
    return 0


def join(args) -> int:
    _fleet()
    from edgetune.fleet.deploy import split_address, start_supernode
    from edgetune.runtime.personalizer import Personalizer

    split_address(args.server)
    with Personalizer(profile=args.profile, read_only=True) as p:
        counts = p.counts()
    if not sum(counts.values()):
        raise BadInputError(f"profile {args.profile} has no samples to train on; add some "
                            f"first (edgetune train BUNDLE --data DIR --profile ...)")
    with tempfile.TemporaryDirectory(prefix="edgetune-node-") as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        node = start_supernode(args.server, args.profile, home, args.local_epochs,
                               audit=args.audit, log=args.log, session=False)
        note(f"edgetune fleet: device {args.profile} ({len(counts)} classes, "
             f"{sum(counts.values())} samples) joined {args.server}; Ctrl-C to leave")
        stop = signal.signal(signal.SIGTERM, lambda *_: node.terminate())
        try:
            code = node.wait()
        except KeyboardInterrupt:
            node.terminate()
            code = node.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, stop)
    emit(args, {"profile": str(args.profile), "server": args.server, "exit_code": code},
         f"the device left the fleet (exit code {code})")
    return 0 if code in (0, -signal.SIGTERM) else 1


def simulate(args) -> int:
    _fleet()
    from edgetune.fleet.simulate import central_accuracy, folder_features, partition
    from edgetune.fleet.simulate import simulate as run

    noise, clip = _privacy(args)
    started = time.monotonic()
    note("edgetune fleet: computing the features of the training and test folders")
    X, labels = folder_features(args.bundle, args.data)
    X_test, test_labels = folder_features(args.bundle, args.test)
    shards = partition(labels, args.clients, args.partition, args.seed)
    central = central_accuracy(args.bundle, X, labels, X_test, test_labels)
    note(f"edgetune fleet: central head {central:.3f}; {args.clients} virtual devices, "
         f"{args.rounds} rounds")
    report = run(args.bundle, X, labels, X_test, test_labels, shards, rounds=args.rounds,
                 local_epochs=args.local_epochs, strategy=args.strategy, secagg=args.secagg,
                 dp_noise=noise, dp_clip=clip)
    final = [r["test_accuracy"] for r in report["rounds"] if r.get("test_accuracy") is not None
             and r["round"] > 0]
    result = {"rounds": [r for r in report["rounds"] if r["round"] > 0],
              "initial_accuracy": next((r.get("test_accuracy") for r in report["rounds"]
                                        if r["round"] == 0), None),
              "final_accuracy": final[-1] if final else None, "central_accuracy": central,
              "ratio": final[-1] / central if final and central else None,
              "clients": args.clients, "partition": args.partition,
              "samples_per_client": [int(len(s)) for s in shards],
              "classes": report["classes"], "strategy": args.strategy,
              "secagg": args.secagg, "dp_noise": noise, "dp_clip": clip,
              "train_samples": len(labels), "test_samples": len(test_labels),
              "seconds": time.monotonic() - started}
    emit(args, result, f"{_rounds_text(result['rounds'])}\nfederated {result['final_accuracy']}"
         f", central {central:.3f}")
    return 0


def _common(p) -> None:
    p.add_argument("--strategy", choices=("fedavg", "fedadam", "fedprox"), default="fedavg",
                   help="Flower's aggregation strategy (FedAvg weighs devices by samples)")
    p.add_argument("--local-epochs", type=_positive(int), default=1,
                   help="epochs each device trains per round")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation (Flower's SecAgg+): the server sees only the sum")
    p.add_argument("--dp-noise", type=_positive(float), default=None,
                   help="differential privacy: the server's Gaussian noise multiplier")
    p.add_argument("--dp-clip", type=_positive(float), default=None,
                   help="differential privacy: the norm each device clips its update to")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_commands(add) -> None:
    fleet = add("fleet", help="federated personalization on Flower: many devices train one "
                "head without moving their samples")
    sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")

    def child(name, **kwargs):
        return sub.add_parser(name, formatter_class=DefaultsFormatter, **kwargs)

    p = child("server", help="run Flower's SuperLink and the federated rounds; write the "
              "global bundle")
    p.add_argument("bundle", help="the bundle every device's profile was made with")
    p.add_argument("--rounds", type=_positive(int), required=True)
    p.add_argument("--min-clients", type=_positive(int), required=True,
                   help="devices that must join before round 1 (and take part in each)")
    p.add_argument("--address", default=ADDRESS, help="HOST:PORT devices join")
    p.add_argument("-o", "--output", required=True, help="the global bundle to write")
    p.add_argument("--wait", type=_positive(float), default=600.0,
                   help="seconds to wait for --min-clients devices")
    p.add_argument("--timeout", type=_positive(float), default=3600.0,
                   help="seconds the whole run may take")
    p.add_argument("--home", default=None, help="Flower's state folder (default: a temporary "
                   "one)")
    _common(p)
    p.set_defaults(run=server)

    p = child("join", help="join a fleet as one device: a Flower SuperNode for a profile")
    p.add_argument("--profile", required=True, help="this device's profile")
    p.add_argument("--server", default=ADDRESS, help="the server's HOST:PORT")
    p.add_argument("--local-epochs", type=_positive(int), default=1,
                   help="epochs per round unless the server says otherwise")
    p.add_argument("--audit", default=None, help="append a JSON line per message sent: array "
                   "names, shapes and sizes, metric names (what left the device)")
    p.add_argument("--log", default=None, help="write Flower's log to this file")
    p.add_argument("--home", default=None, help="Flower's state folder (default: a temporary "
                   "one)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=join)

    p = child("simulate", help="what would a fleet reach: a labelled folder split into "
              "virtual devices on Flower's simulation engine")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="training folder DIR/<class>/<file>")
    p.add_argument("--test", required=True, help="test folder DIR/<class>/<file>")
    p.add_argument("--clients", type=_positive(int), required=True)
    p.add_argument("--rounds", type=_positive(int), required=True)
    p.add_argument("--partition", default="iid",
                   help="iid or dirichlet:ALPHA (label skew; 0.5 is strong)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    _common(p)
    p.set_defaults(run=simulate)

