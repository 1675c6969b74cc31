"""The `edgetune` command. Each subcommand prints JSON with --json, text otherwise.

    edgetune convert --base efficientnet-lite0 --head softmax --classes 4 -o m.edgetune
    edgetune inspect m.edgetune --json
    edgetune serve --profile me/        # the teachable camera on http://127.0.0.1:8321/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from edgetune import __version__, defaults
from edgetune.errors import EdgetuneError

COMMANDS: dict[str, Callable] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _print(args, data: dict | list, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@command("convert")
def cmd_convert(args) -> int:
    from edgetune.converter.convert import convert

    bundle = convert(base=args.base, head=args.head, optimizer=args.optimizer, lr=args.lr,
                     loss=args.loss, weight_decay=args.weight_decay, classes=args.classes,
                     cut=args.cut,
                     trainable=args.train, quantize=args.quantize, l2=args.l2)
    path = bundle.save(args.output, overwrite=args.force)
    info = bundle.describe()
    text = (f"wrote {path} ({_size(info['total_bytes'])}): trains {info['trainable']['mode']}"
            f"{':' + str(info['trainable']['blocks']) if info['trainable']['blocks'] else ''}, "
            f"{len(info['params'])} parameter tensors, features {info['features']['shape']}")
    if "quantization" in bundle.manifest:
        q = bundle.manifest["quantization"]
        text += f"\nint8 base: {json.dumps(q)}"
    _print(args, {"path": str(path), **info, "quantization": bundle.manifest.get("quantization")},
           text)
    return 0


@command("inspect")
def cmd_inspect(args) -> int:
    from edgetune.bundle import Bundle

    info = Bundle.load(args.bundle).describe()
    lines = [f"{info['path']}: edgetune bundle v{info['version']} ({info['created_by']}), "
             f"opset {info['opset']}, all hashes verified",
             f"input     {info['input']['name']} {info['input']['dtype']} "
             f"{info['input']['shape']} {info['input'].get('layout') or ''}",
             f"features  {info['features']['shape']} (cached per sample)",
             f"trainable {info['trainable']['mode']}"
             + (f":{info['trainable']['blocks']}" if info['trainable']['blocks'] else ""),
             f"head      {info['head']}",
             f"loss      {info['loss']}",
             f"optimizer {info['optimizer']}",
             "graphs:"]
    for role, g in info["graphs"].items():
        lines.append(f"  {role:12s} {g['file']:18s} {_size(g['bytes']):>9s} {g['nodes']:5d} nodes")
    lines.append(f"params ({len(info['params'])} tensors, {info['state_slots']} optimizer slots):")
    for p in info["params"]:
        lines.append(f"  {p['name']:40s} {p['shape']}")
    lines.append(f"total {_size(info['total_bytes'])}")
    _print(args, info, "\n".join(lines))
    return 0


def _progress(args, total: int, description: str):
    """A rich progress bar on a terminal (unless --json); None otherwise."""
    if args.json or not sys.stderr.isatty():
        return None
    try:
        from rich.progress import Progress
    except ImportError:
        return None
    progress = Progress(transient=True)
    progress.start()
    task = progress.add_task(description, total=total)
    return progress, task


def _advance(bar, **fields) -> None:
    if bar is not None:
        bar[0].update(bar[1], advance=1, **fields)


def _finish(bar) -> None:
    if bar is not None:
        bar[0].stop()


@command("train")
def cmd_train(args) -> int:
    from edgetune.bundle import Bundle
    from edgetune.inputs import preparer_for
    from edgetune.runtime.personalizer import Personalizer

    bundle = Bundle.load(args.bundle)  # the data is listed before the profile is touched
    items = preparer_for(bundle.manifest["input"]).list_folder(args.data)
    with Personalizer(bundle, profile=args.profile, wait=args.wait) as p:
        seen = {s.source for s in p.store.samples() if s.source}
        new = [(path, label) for path, label in items if str(path.resolve()) not in seen]
        bar = _progress(args, len(new), "features")
        for i in range(0, len(new), 16):
            chunk = new[i:i + 16]
            p.add_samples([path for path, _ in chunk], [label for _, label in chunk],
                          [str(path.resolve()) for path, _ in chunk])
            for _ in chunk:
                _advance(bar)
        _finish(bar)
        bar = _progress(args, args.epochs, "training")
        try:
            history = p.fit(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            callback=lambda r: _advance(bar) if "loss" in r and "event" not in r
                            else None)
        except KeyboardInterrupt:  # keep the epochs that finished: they were accepted
            _finish(bar)
            if p.trained:
                p.save()
            raise
        _finish(bar)
        epochs = [r for r in history if "event" not in r]
        events = [r for r in history if "event" in r]
        result = {"profile": str(p.profile), "samples_added": len(new), "samples": len(p.store),
                  "counts": p.counts(), "epochs": len(epochs),
                  "loss": epochs[-1]["loss"] if epochs else None,
                  "history": [{"epoch": r["epoch"], "loss": r["loss"]} for r in epochs],
                  "events": events}
    text = (f"added {len(new)} samples ({result['samples']} in the profile: "
            f"{', '.join(f'{k} {v}' for k, v in result['counts'].items())}); trained "
            f"{len(epochs)} epochs, loss {result['loss']:.4f}" if epochs else "no training")
    for event in events:
        text += f"\n{event['event']}: {event.get('message', '')}"
    _print(args, result, text)
    return 0


@command("eval")
def cmd_eval(args) -> int:
    from edgetune.runtime.personalizer import Personalizer

    with Personalizer(profile=args.profile, read_only=True) as p:
        result = p.evaluate(args.data)
    lines = [f"accuracy {result['accuracy']:.3f} on {result['n']} images"]
    for name, entry in result["per_class"].items():
        lines.append(f"  {name:20s} {entry['accuracy']:.3f} ({entry['correct']}/{entry['n']})")
    if result["skipped_classes"]:
        lines.append(f"skipped unknown classes: {', '.join(result['skipped_classes'])}")
    _print(args, result, "\n".join(lines))
    return 0


@command("predict")
def cmd_predict(args) -> int:
    from edgetune.runtime.personalizer import Personalizer

    with Personalizer(profile=args.profile, read_only=True) as p:
        results = [{"path": path, **p.predict(path)} for path in args.images]
    lines = [f"{r['path']}: {r['label']} ({r['scores'][r['label']]:.3f})" for r in results]
    _print(args, [{k: r[k] for k in ("path", "label", "scores")} for r in results],
           "\n".join(lines))
    return 0


@command("export")
def cmd_export(args) -> int:
    from edgetune.runtime.personalizer import Personalizer

    with Personalizer(profile=args.profile, read_only=True) as p:
        path = p.export(args.output)
        classes = p.classes()
    _print(args, {"path": str(path), "bytes": path.stat().st_size, "classes": classes},
           f"wrote {path} ({_size(path.stat().st_size)}), classes {', '.join(classes)}")
    return 0


@command("serve")
def cmd_serve(args) -> int:
    from edgetune.server.options import run_from_args

    return run_from_args(args)


PROFILE_HELP = ("profile directory (default: $EDGETUNE_PROFILE, else "
                "$XDG_DATA_HOME/edgetune/profile or ~/.local/share/edgetune/profile)")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetune", description="Personalize neural networks "
                                     "on the device: build bundles, train, predict, export.")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    def add(name, **kwargs):
        return sub.add_parser(name, formatter_class=_DefaultsFormatter, **kwargs)

    p = add("convert", help="build a bundle from a base and a head")
    p.add_argument("--base", default="efficientnet-lite0",
                   help="efficientnet-lite0 or MODEL.onnx (default: efficientnet-lite0)")
    p.add_argument("--cut", help="tensor of an ONNX base to use as features "
                   "(default: its first output)")
    p.add_argument("--head", default="softmax", help="softmax | mlp:HIDDEN | svm | HEAD.onnx")
    p.add_argument("--classes", type=int, default=2,
                   help="initial number of classes (more can be added later)")
    p.add_argument("--optimizer", default=defaults.OPTIMIZER,
                   help="sgd | momentum | adam | adamw")
    p.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    p.add_argument("--loss", help="the loss by name, e.g. cross-entropy or hinge (default: "
                   "the head's own; an unknown name lists the choices)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--l2", type=float, default=0.0, help="L2 regularization in the loss")
    p.add_argument("--train", "--trainable", dest="train", default="head",
                   help="what trains: head | last:K | bias:K (the API's trainable=)")
    p.add_argument("--quantize", metavar="CALIB_DIR",
                   help="also write an int8 base calibrated on the images in CALIB_DIR")
    p.add_argument("-o", "--output", required=True, help="OUT.edgetune directory")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true")

    p = add("inspect", help="show what a bundle holds and verify its hashes")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = add("train", help="add a folder of samples to a profile and train")
    p.add_argument("bundle", help="the bundle (copied into the profile the first time)")
    p.add_argument("--data", required=True, help="DIR/<class>/<file> folders")
    p.add_argument("--profile", default=None, help=PROFILE_HELP)
    p.add_argument("--epochs", type=int, default=defaults.EPOCHS,
                   help="at most this many epochs (training stops early on a plateau)")
    p.add_argument("--batch-size", type=int, help="samples per step (default: 32)")
    p.add_argument("--lr", type=float, help="learning rate (default: the bundle's)")
    p.add_argument("--wait", nargs="?", type=float, const=True, default=False,
                   metavar="SECONDS", help="if another process writes to the profile, wait "
                   "for it (at most SECONDS) instead of failing")
    p.add_argument("--json", action="store_true")

    p = add("eval", help="accuracy of a profile on a folder of class folders")
    p.add_argument("--profile", default=None, help=PROFILE_HELP)
    p.add_argument("--data", required=True)
    p.add_argument("--json", action="store_true")

    p = add("predict", help="classify inputs with a profile")
    p.add_argument("--profile", default=None, help=PROFILE_HELP)
    p.add_argument("images", nargs="+")
    p.add_argument("--json", action="store_true")

    p = add("export", help="write one standalone ONNX model")
    p.add_argument("--profile", default=None, help=PROFILE_HELP)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--json", action="store_true")

    from edgetune.server.options import add_serve_arguments

    add_serve_arguments(add("serve", help="the teachable camera: a local web app that records "
                            "samples, trains and predicts live"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "profile") and args.command != "serve" and args.profile is None:
        from edgetune.paths import default_profile

        args.profile = default_profile()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"edgetune {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgetune predict ... | head`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (EdgetuneError, ValueError, FileNotFoundError) as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e), "type": type(e).__name__}))
        else:
            print(f"edgetune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
