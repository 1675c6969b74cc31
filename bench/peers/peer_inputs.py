"""Every input of a bench/peers.py run, made once in the driver (the project's venv):
the data and initial parameters (.npy, the same for every system), edgetune's graphs and
bundles, the base graph dumped for the LiteRT build, a trained profile to reopen, and
the base's FLOPs counted from its graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from common import ROOT
from peer_runs import BATCH, CLASSES_SET, FEATURES, LR, say

# the first answer: one sample per class (the first photo of each), then this query
FIRST_SAMPLES = (0, 20, 40, 60)
FIRST_QUERY = 1


def edgetune_train_config(name, graphs_or_bundle, folder: Path, params: dict, names: dict,
                          lr: float, epoch_batches: list[int]) -> dict:
    """A `train` job config for edgetune_worker: graph files, initial values, io map."""
    folder.mkdir(parents=True, exist_ok=True)
    specs, state_specs, train, epoch = graphs_or_bundle
    (folder / "train.onnx").write_bytes(train)
    (folder / "train_epoch.onnx").write_bytes(epoch)
    files = {}
    for spec in specs:
        files[spec["train_input"]] = str(folder / f"{len(files)}.npy")
        np.save(files[spec["train_input"]], params[spec["name"]].astype(np.float32))
    by_name = {s["name"]: s["train_input"] for s in specs}
    return {
        "name": name, "lr": lr, "epoch_batches": epoch_batches,
        "train_onnx": str(folder / "train.onnx"), "epoch_onnx": str(folder / "train_epoch.onnx"),
        "params": files,
        "state": {s["train_input"]: by_name[s["param"]] for s in state_specs},
        "io": {s["train_input"]: s["train_output"] for s in specs + state_specs},
        "names": {short: by_name[full] for short, full in names.items()},
    }


def _heads(tmp: Path, data: Path, rng, steps: int, inputs: dict) -> None:
    from edgetune.converter.heads import SoftmaxClassifier
    from edgetune.converter.losses import SoftmaxCrossEntropy
    from edgetune.converter.optimizers import SGD, Adam
    from edgetune.converter.train_graph import build_training_graphs

    X = rng.standard_normal((steps * BATCH, FEATURES)).astype(np.float32)
    np.save(data / "X.npy", X)
    optimizers = {"sgd": SGD, "adam": Adam}
    for classes in CLASSES_SET:
        y = rng.integers(0, classes, len(X)).astype(np.int64)
        W0 = (rng.standard_normal((classes, FEATURES)) * 0.01).astype(np.float32)
        b0 = (rng.standard_normal(classes) * 0.01).astype(np.float32)
        for key, value in (("y", y), ("W0", W0), ("b0", b0)):
            np.save(data / f"{key}{classes}.npy", value)
        model, shapes = SoftmaxClassifier(classes).build([FEATURES])
        for opt in ("sgd", "adam"):
            name = f"1280→{classes} {opt.upper() if opt == 'sgd' else 'Adam'}"
            peer = {"name": name, "classes": classes, "optimizer": opt, "lr": LR[opt],
                    "X": str(data / "X.npy"), "y": str(data / f"y{classes}.npy"),
                    "W0": str(data / f"W0{classes}.npy"), "b0": str(data / f"b0{classes}.npy"),
                    "params": {"W": str(data / f"W0{classes}.npy"),
                               "b": str(data / f"b0{classes}.npy")}}
            inputs["heads"].append(peer)
            graphs = build_training_graphs(model, SoftmaxCrossEntropy(),
                                           optimizers[opt](lr=LR[opt]), param_shapes=shapes)
            specs = [{"name": p.name, "train_input": p.train_input,
                      "train_output": p.train_output} for p in graphs.params]
            state = [{"name": s.name, "param": s.name.rsplit(".", 1)[0],
                      "train_input": s.train_input, "train_output": s.train_output}
                     for s in graphs.state]
            inputs["edgetune_heads"].append({**peer, **edgetune_train_config(
                name, (specs, state, graphs.train.SerializeToString(),
                       graphs.train_epoch.SerializeToString()),
                tmp / "edgetune" / f"head{classes}{opt}", {"head.weight": W0, "head.bias": b0},
                {"W": "head.weight", "b": "head.bias"}, LR[opt], [3, steps])})


def _last_block(tmp: Path, data: Path, images, labels, inputs: dict) -> None:
    """edgetune trains base/conv_head.* + the head on cached [320, 7, 7] activations."""
    from edgetune.bundle import Bundle
    from edgetune.converter.convert import convert
    from edgetune.converter.heads import SoftmaxClassifier
    from edgetune.converter.optimizers import SGD, Adam

    optimizers = {"sgd": SGD, "adam": Adam}
    inputs["finetune"], inputs["edgetune_finetune"] = [], []
    for opt in ("sgd", "adam"):
        path = convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                       optimizer=optimizers[opt](lr=LR[opt]),
                       trainable="last:1").save(tmp / f"last1{opt}.edgetune")
        inputs[f"bundle_last1_{opt}"] = str(path)
        bundle = Bundle.load(path)
        if opt == "sgd":
            from edgetune.runtime.trainer import make_session

            sess = make_session(bundle.graph("base"), 1)
            acts = np.concatenate([sess.run(None, {"image": images[i:i + 16]})[0]
                                   for i in range(0, len(images), 16)]).astype(np.float32)
            # 96 rows: three whole mini-batches of 32, used in turn
            np.save(data / "A.npy", np.concatenate([acts, acts[:16]]))
            np.save(data / "yA.npy", np.concatenate([labels, labels[:16]]))
        initial = bundle.initial_values()
        # a small random head (not zeros): with W = 0 no gradient reaches conv_head
        initial["head.weight"] = (np.random.default_rng(1).standard_normal((4, 1280))
                                  * 0.01).astype(np.float32)
        names = {"conv_w": "base/conv_head.weight", "conv_b": "base/conv_head.bias",
                 "W": "head.weight", "b": "head.bias"}
        files = {}
        for short, full in names.items():
            files[short] = str(data / f"ft_{opt}_{short}.npy")
            np.save(files[short], initial[full])
        name = f"last block {opt.upper() if opt == 'sgd' else 'Adam'}"
        peer = {"name": name, "optimizer": opt, "lr": LR[opt], "X": str(data / "A.npy"),
                "y": str(data / "yA.npy"), "params": files}
        inputs["finetune"].append(peer)
        specs, state = bundle.params, bundle.state
        inputs["edgetune_finetune"].append({**peer, **edgetune_train_config(
            name, (specs, state, bundle.graph("train"), bundle.graph("train_epoch")),
            tmp / "edgetune" / f"last1{opt}", initial, names, LR[opt], [3])})
        assert sorted(p["name"] for p in specs) == sorted(names.values()), specs


def _reopen_profiles(tmp: Path, bundle: str, images, labels, precisions) -> dict:
    """A personalized profile per precision (80 photos, a trained head, saved and
    closed), which the reopen workload opens again in fresh processes."""
    from edgetune.runtime.personalizer import Personalizer

    out = {}
    for precision in precisions:
        path = tmp / f"reopen-{precision}"
        with Personalizer(bundle, path, threads=1, precision=precision) as p:
            p.add_samples(list(images), [f"c{i}" for i in labels])
            p.fit(epochs=20, batch_size=BATCH, early_stop=False)
            p.save()
        out[precision] = str(path)
    return out


def prepare(tmp: Path, args) -> dict:
    """Every shared input: data, initial parameters, edgetune graphs and bundles."""
    sys.path.insert(0, str(ROOT / "tests"))
    import onnx
    from conftest import photo_crops
    from PIL import Image

    from edgetune.converter.convert import convert
    from edgetune.converter.heads import SoftmaxClassifier
    from edgetune.converter.optimizers import Adam

    rng = np.random.default_rng(0)
    data = tmp / "data"
    data.mkdir()
    inputs: dict = {"heads": [], "edgetune_heads": [], "data": str(data)}
    _heads(tmp, data, rng, args.steps, inputs)

    # photos: 4 classes x 20 augmented crops; calibration folder for the int8 bases
    images, labels = photo_crops(per_class=20, seed=0)
    np.save(data / "images.npy", images)
    np.save(data / "labels.npy", labels)
    calib = tmp / "calibration"
    for i, img in enumerate(images):
        (calib / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(calib / str(labels[i]) / f"{i}.png")
    zeros = {"W0": data / "W0zero.npy", "b0": data / "b0zero.npy"}
    np.save(zeros["W0"], np.zeros((4, FEATURES), np.float32))
    np.save(zeros["b0"], np.zeros(4, np.float32))
    inputs["personalize_head"] = {"name": "personalize", "optimizer": "adam", "lr": 1e-3,
                                  "W0": str(zeros["W0"]), "b0": str(zeros["b0"])}

    say("converting the EfficientNet-Lite0 bundles (head with int8 base; last:1) ...")
    bundle_dir = convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                         optimizer=Adam(lr=1e-3), quantize=calib).save(tmp / "head.edgetune")
    inputs["bundle"] = str(bundle_dir)
    inputs["base_fp32"] = str(bundle_dir / "base.onnx")
    inputs["base_int8"] = str(bundle_dir / "base.int8.onnx")
    inputs["base_graph"] = dump_graph(onnx, bundle_dir / "base.onnx", tmp / "base_graph")
    inputs["base_flops"] = count_flops(onnx, bundle_dir / "base.onnx")
    _last_block(tmp, data, images, labels, inputs)
    inputs["reopen"] = _reopen_profiles(tmp, inputs["bundle"], images, labels,
                                        args.precisions)
    return inputs


def dump_graph(onnx, path: Path, folder: Path) -> str:
    """The base graph as JSON + .npy initializers, for the LiteRT build (no onnx there)."""
    from onnx import numpy_helper

    folder.mkdir()
    model = onnx.load(str(path))
    inits = {}
    for i, t in enumerate(model.graph.initializer):
        inits[t.name] = f"{i}.npy"
        np.save(folder / f"{i}.npy", numpy_helper.to_array(t))
    nodes = [{"op": n.op_type, "inputs": list(n.input), "outputs": list(n.output),
              "attrs": {a.name: _attr(onnx.helper.get_attribute_value(a)) for a in n.attribute}}
             for n in model.graph.node]
    graph = {"input": model.graph.input[0].name, "output": model.graph.output[0].name,
             "nodes": nodes, "inits": inits}
    (folder / "graph.json").write_text(json.dumps(graph))
    return str(folder / "graph.json")


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [_attr(v) for v in value]
    return value


def count_flops(onnx, path: Path) -> dict:
    """FLOPs of one image through the base: 2 x multiply-adds of every Conv, Gemm and
    MatMul, from shapes inferred with the batch set to 1 (elementwise ops not counted)."""
    from onnx import shape_inference

    model = onnx.load(str(path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    per_op: dict[str, float] = {}
    per_kind: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            flops = 2 * int(np.prod(out)) * int(np.prod(w[1:]))  # Cin/group * kh * kw
            kind = ("depthwise" if w[1] == 1 and w[2] > 1 else
                    "1x1" if w[2] == w[3] == 1 else f"{w[2]}x{w[3]}")
            per_kind[kind] = per_kind.get(kind, 0) + flops
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            k = a[-2] if trans_a else a[-1]
            flops = 2 * int(np.prod(out)) * k
        else:
            continue
        per_op[node.op_type] = per_op.get(node.op_type, 0) + flops
    return {"total": float(sum(per_op.values())), "per_op": per_op, "per_kind": per_kind}
