"""Build time: `edgetune convert` writes a bundle, `edgetune inspect` shows one."""

from __future__ import annotations

import edgetune.cli.options as options
from edgetune import defaults
from edgetune.cli.failures import writing
from edgetune.cli.output import emit, size
from edgetune.errors import EdgetuneError

__all__ = ["add_commands"]


def convert(args) -> int:
    from pathlib import Path

    from edgetune.bundle import BundleError
    from edgetune.converter.convert import convert as build

    quantize = _quantize(args)
    if Path(args.output).exists() and not args.force:  # before the build's seconds
        raise BundleError(f"{args.output} exists; pass --force to replace it, or name "
                          f"another output (-o)")
    bundle = build(base=args.base, head=args.head, optimizer=args.optimizer, lr=args.lr,
                   loss=args.loss, weight_decay=args.weight_decay, classes=args.classes,
                   cut=args.cut, trainable=args.train, quantize=quantize, l2=args.l2,
                   preprocess=args.preprocess, input_size=args.input_size,
                   max_length=args.max_length)
    with writing(args.output):
        path = bundle.save(args.output, overwrite=args.force)
    info = bundle.describe()
    trains = info["trainable"]
    text = (f"wrote {path} ({size(info['total_bytes'])}): trains {trains['mode']}"
            f"{':' + str(trains['blocks']) if trains['blocks'] else ''}, "
            f"{len(info['params'])} parameter tensors, features {info['features']['shape']}")
    quantization = bundle.manifest.get("quantization")
    if quantization:
        text += (f"\nint8 base: base.int8.onnx ({size(quantization['int8_bytes'])}), "
                 f"calibrated on {quantization['calibration']}; features' mean cosine "
                 f"to fp32 {quantization['mean_cosine']:.4f}; new profiles use it (train "
                 f"--precision fp32 for the fp32 base)")
    else:
        text += f"\nno int8 base: {_why_no_int8(args, bundle.manifest)}"
    emit(args, {"path": str(path), **info, "quantization": quantization,
                "int8_base": "base.int8.onnx" if quantization else None}, text)
    return 0


def _quantize(args):
    """convert()'s quantize: the user's folder, none, or (default) the shipped images."""
    if args.no_quantize:
        if args.quantize:
            raise EdgetuneError("give --quantize CALIB_DIR or --no-quantize, not both")
        return None
    return args.quantize or True


def _why_no_int8(args, manifest: dict) -> str:
    if args.no_quantize:
        return "--no-quantize"
    kind = manifest["input"].get("kind", "image")
    if manifest.get("base") == "minilm":
        return "the minilm base is int8 already"
    return f"int8 quantization is for image bases; this base takes {kind} input"


def inspect(args) -> int:
    from pathlib import Path

    if Path(args.bundle).is_file():  # an ONNX model: what it takes, where it can be cut
        from edgetune.converter.inspect import describe_model

        info = describe_model(args.bundle, tensors=args.tensors)
        emit(args, info, "\n".join(_model_lines(info)))
        return 0
    from edgetune.bundle import Bundle

    info = Bundle.load(args.bundle).describe()
    emit(args, info, "\n".join(_inspect_lines(info)))
    return 0


def _model_lines(info: dict) -> list[str]:
    lines = [f"{info['file']}: ONNX model, opset {info['opset']}, {info['node_count']} nodes "
             f"({info.get('producer') or 'unknown producer'})"]
    lines += [f"input     {i['name']} {i['dtype']} {i['shape']}" for i in info["inputs"]]
    lines += [f"output    {o['name']} {o['dtype']} {o['shape']}" for o in info["outputs"]]
    plan = info.get("input") or {}
    if plan.get("kind"):
        pre = plan.get("preprocessing") or {}
        lines.append(f"as a base {plan['kind']}; preprocessing {pre.get('name', 'none')} "
                     f"({pre.get('chosen', 'given')}): {pre.get('formula', '')}".rstrip(": "))
    else:
        lines.append(f"as a base: cannot be fed as is: {plan.get('problem')}")
    lines += [f"repaired  {r}" for r in info.get("repairs", [])]
    if info.get("block_boundaries"):
        lines.append(f"blocks    {len(info['block_boundaries'])} boundaries for last:K, the "
                     f"last {info['block_boundaries'][-1]}")
    elif info.get("block_problem"):
        lines.append(f"blocks    {info['block_problem']}")
    if info.get("suggested_cut"):
        lines.append(f"cut       --cut {info['suggested_cut']} (suggested)")
    if info.get("tensors"):
        lines.append("candidate cut tensors (--cut NAME), by depth:")
        for t in info["tensors"]:
            mark = "*" if t.get("good_cut") else ("|" if t.get("boundary") else " ")
            lines.append(f" {mark} {t['name']:28s} {str(t['shape']):24s} {t['op']:18s} "
                         f"depth {t['depth']}")
        lines.append("(* a good cut: pooled features; | a block boundary)")
    else:
        lines.append("--tensors lists the candidate cut tensors")
    return lines


def _inspect_lines(info: dict) -> list[str]:
    trains = info["trainable"]
    lines = [f"{info['path']}: edgetune bundle v{info['version']} ({info['created_by']}), "
             f"opset {info['opset']}, all hashes verified",
             f"input     {info['input']['name']} {info['input']['dtype']} "
             f"{info['input']['shape']} {info['input'].get('layout') or ''}",
             f"features  {info['features']['shape']} (cached per sample)",
             f"trainable {trains['mode']}" + (f":{trains['blocks']}" if trains['blocks'] else ""),
             f"head      {info['head']}",
             f"loss      {info['loss']}",
             f"optimizer {info['optimizer']}",
             "graphs:"]
    for role, g in info["graphs"].items():
        lines.append(f"  {role:12s} {g['file']:18s} {size(g['bytes']):>9s} {g['nodes']:5d} nodes")
    lines.append(f"params ({len(info['params'])} tensors, {info['state_slots']} optimizer slots):")
    lines += [f"  {p['name']:40s} {p['shape']}" for p in info["params"]]
    lines.append(f"total {size(info['total_bytes'])}")
    return lines


def add_commands(add) -> None:
    p = add("convert", help="build a bundle from a base and a head")
    p.add_argument("--base", default="efficientnet-lite0",
                   help="efficientnet-lite0 (images), speech-embedding (16 kHz speech), "
                   "minilm or minilm-fp32 (sentences), or "
                   "MODEL.onnx (default: efficientnet-lite0)")
    p.add_argument("--cut", help="tensor of an ONNX base to use as features "
                   "(default: its first output)")
    p.add_argument("--head", default="softmax", help="softmax | mlp:HIDDEN | svm | HEAD.onnx")
    p.add_argument("--classes", type=options.classes, default=2,
                   help="initial number of classes (more can be added later)")
    p.add_argument("--optimizer", help=f"sgd | momentum | adam | adamw (default: "
                   f"{defaults.OPTIMIZER})")
    p.add_argument("--lr", type=options.lr, help="learning rate (default, training a "
                   "head: 0.01 with Adam or AdamW, 0.1 with SGD or momentum; the mlp head "
                   "0.003 with Adam or AdamW; the svm head 0.001 with Adam, AdamW or "
                   "momentum, 0.01 with SGD; else the optimizer's own)")
    p.add_argument("--loss", help="the loss by name, e.g. cross-entropy or hinge (default: "
                   "the head's own; an unknown name lists the choices)")
    p.add_argument("--weight-decay", type=options.non_negative("weight decay"),
                   help="weight decay of adamw (default: the optimizer's)")
    p.add_argument("--l2", type=options.non_negative("l2"),
                   help="L2 regularization in the loss (default: 0.03 for the svm head "
                   "trained alone, else 0)")
    p.add_argument("--train", "--trainable", dest="train", default="head",
                   help="what trains: head | last:K | bias:K (the API's trainable=)")
    p.add_argument("--quantize", metavar="CALIB_DIR",
                   help="calibrate the int8 base (base.int8.onnx, which new profiles use) "
                   "on the images in CALIB_DIR (default: on the calibration images that "
                   "ship with edgetune; image bases only)")
    p.add_argument("--no-quantize", action="store_true",
                   help="write no int8 base: fp32 only (default: an image base also gets "
                   "an int8 base)")
    p.add_argument("--preprocess", metavar="NAME",
                   help="how the base wants its input, wrapped into the base graph: imagenet "
                   "| unit | symmetric | raw | none (images), audio[:RATE] (float PCM), tensor "
                   "(default: detected for images and stated)")
    p.add_argument("--input-size", type=options.input_size, metavar="HxW",
                   help="height and width for a base whose input size is dynamic")
    p.add_argument("--max-length", type=options.max_length, metavar="N",
                   help="tokens per text for a text base (minilm, minilm-fp32): longer texts "
                   "are truncated, shorter ones padded (default: 128)")
    p.add_argument("-o", "--output", required=True, help="OUT.edgetune directory (required)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists "
                   "(default: refuse)")
    options.add_json(p)
    p.set_defaults(run=convert)

    p = add("inspect", help="show what a bundle holds and verify its hashes, or what an ONNX "
            "model takes and where it can be cut")
    p.add_argument("bundle", metavar="BUNDLE|MODEL.onnx",
                   help="a bundle directory (NAME.edgetune) or an ONNX model file")
    p.add_argument("--tensors", action="store_true",
                   help="for an ONNX model: list the candidate cut tensors")
    options.add_json(p)
    p.set_defaults(run=inspect)
