"""convert(): a base and a head become a bundle that any ONNX runtime can train.

The base is cut where training starts. With `trainable="head"` the cut is the base's
output (features are cached once per sample); with `"last:K"` or `"bias:K"` the cut
moves before the last K blocks, whose input activations are cached instead, and those
blocks join the head in the training graphs (all their weights, or only their biases
and normalization scales).

    bundle = convert(base="efficientnet-lite0", head=SoftmaxClassifier(4),
                     optimizer=Adam(lr=1e-3), trainable="last:1")
    bundle.save("model.edgetune")
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgetune import __version__, defaults
from edgetune.autodiff import GraphBuilder
from edgetune.autodiff.builder import OPSET, value_dims
from edgetune.bundle import TEXT_BASE_ROLES, Bundle
from edgetune.converter import quantize as int8
from edgetune.converter.cut import block_boundaries, extract, onnx_file_base
from edgetune.converter.efficientnet import efficientnet_lite0
from edgetune.converter.heads import HEADS, MLP, Head, SoftmaxClassifier
from edgetune.converter.losses import Loss, resolve_loss
from edgetune.converter.modelfile import load_model
from edgetune.converter.optimizers import OPTIMIZERS, Optimizer
from edgetune.converter.preprocess import InputPlan, plan_input, wrap
from edgetune.converter.rewrite import pointwise_head_as_gemm
from edgetune.converter.speech import audio_input_section, speech_embedding
from edgetune.converter.text import DEFAULT_MAX_LENGTH, minilm, text_input_section, tokenizer_json
from edgetune.converter.text_blocks import CUT as TEXT_CUT
from edgetune.converter.text_blocks import minilm_split
from edgetune.converter.train_graph import TrainingGraphs, build_training_graphs
from edgetune.hyperparams import check_classes, check_lr, check_non_negative

ZOO = {"efficientnet-lite0": efficientnet_lite0, "speech-embedding": speech_embedding}
# Text bases (token ids and mask in): name -> precision of all-MiniLM-L6-v2 (text.py).
TEXT_ZOO = {"minilm": "int8", "minilm-fp32": "fp32"}
# How a zoo base's input is planned when the caller does not say (see preprocess.py).
ZOO_PREPROCESS = {"speech-embedding": "audio"}

# Which inputs of which ops hold trainable tensors, and of what kind; "bias:K" trains
# only the "bias" and "scale" kinds. BatchNorm statistics are never trained.
TRAINABLE_INPUTS = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "BatchNormalization": {1: "scale", 2: "bias"},
    "LayerNormalization": {1: "scale", 2: "bias"},
}


@dataclass(frozen=True)
class Trainable:
    """What is trained: "head", "last:K" or "bias:K"."""

    mode: str = "head"
    blocks: int = 0

    @classmethod
    def parse(cls, text: str | Trainable) -> Trainable:
        if isinstance(text, Trainable):
            return text
        match = re.fullmatch(r"(head)|(last|bias):([1-9][0-9]*)", str(text).strip())
        if not match:
            raise ValueError(f"trainable {text!r} is not one of: head, last:K, bias:K "
                             f"(K a positive number of blocks, e.g. last:1)")
        return cls("head") if match.group(1) else cls(match.group(2), int(match.group(3)))

    def __str__(self) -> str:
        return self.mode if self.mode == "head" else f"{self.mode}:{self.blocks}"


def resolve_head(head: Head | str | os.PathLike | None, classes: int | None) -> Head | Path:
    """A Head, or the path of a user's ONNX head graph, from an object or CLI text."""
    if isinstance(head, Head):
        return head
    text = "softmax" if head is None else os.fspath(head)
    n = classes or 2
    if re.fullmatch(r"mlp(:\d+)?", text):
        return MLP(n, hidden=int(text.split(":")[1]) if ":" in text else 128)
    if text in HEADS:
        return HEADS[text](n)
    if text.endswith(".onnx"):
        if not Path(text).is_file():
            raise ValueError(f"head graph {text} does not exist")
        return Path(text)
    raise ValueError(f"head {text!r} is not one of: softmax, mlp:HIDDEN, svm, HEAD.onnx")


def resolve_optimizer(optimizer: Optimizer | str | None, lr: float | None,
                      weight_decay: float | None, trainable: str = "head",
                      head_lrs: Mapping[str, float] | None = None) -> Optimizer:
    """An Optimizer from an object or a name of OPTIMIZERS (none: `defaults.OPTIMIZER`).
    Without `lr`, a head trains at the head's own `head_lrs` (Head.default_lrs), else at
    `defaults.HEAD_LR` (measured to converge); deeper training at the optimizer's own
    default."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    name = optimizer or defaults.OPTIMIZER
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {sorted(OPTIMIZERS)}")
    kwargs = {}
    if lr is not None:
        kwargs["lr"] = check_lr(lr)
    elif str(trainable) == "head":
        measured = {**defaults.HEAD_LR, **(head_lrs or {})}
        if name in measured:
            kwargs["lr"] = measured[name]
    if weight_decay is not None:
        kwargs["weight_decay"] = check_non_negative(weight_decay, "weight decay")
    return OPTIMIZERS[name](**kwargs)


def prepare_base(base: str | os.PathLike | onnx.ModelProto, cut: str | None = None,
                 cache_dir: str | os.PathLike | None = None, *, preprocess=None,
                 input_size: tuple[int, int] | int | None = None
                 ) -> tuple[onnx.ModelProto, str, InputPlan, list[str]]:
    """(model, name, input plan, repairs): the base loaded (an ONNX file is checked and
    repaired, see :mod:`edgetune.converter.modelfile`), its input planned and wrapped
    so that it takes uint8 NHWC pixels (see :mod:`edgetune.converter.preprocess`), then
    cut at `cut` (default: its first output). Every problem is a one-line ValueError."""
    if isinstance(base, onnx.ModelProto):
        model, name, source = base, "model", "the base model"
    else:
        text = os.fspath(base)
        if text in ZOO:
            model, name, source = onnx.load(os.fspath(ZOO[text](cache_dir))), text, text
        elif text.endswith(".onnx") or Path(text).is_file():
            if not Path(text).is_file():
                raise ValueError(f"base model {text} does not exist")
            model, name, source = None, Path(text).name, text
        else:
            raise ValueError(f"base {text!r} is neither a known base "
                             f"({', '.join([*ZOO, *TEXT_ZOO])}) nor an ONNX file")
    repairs: list[str] = []
    if name in ZOO and preprocess is None:
        preprocess = ZOO_PREPROCESS.get(name)
    if name not in ZOO:
        model, repairs = load_model(base if model is None else model, source=source)
        for repair in repairs:
            warnings.warn(f"{source}: {repair}", UserWarning, stacklevel=3)
    plan = plan_input(model, preprocess, input_size, source=source)
    wrapped = wrap(model, plan)
    model = onnx_file_base(wrapped, cut, source=source)
    if plan.changes_model:
        _check_runs(model, source)
    return model, name, plan, repairs


def _check_runs(model: onnx.ModelProto, source: str) -> None:
    """Run the prepared base on two black images: a base that cannot take a batch (a
    fixed batch of 1 in a Reshape, ...) fails here, at convert time, not on the device."""
    import onnxruntime as ort

    image = model.graph.input[0]
    dims = value_dims(image, symbolic=False)
    feed = np.zeros([2, *dims[1:]], np.uint8)
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        session.run(None, {image.name: feed})
    except Exception as e:  # noqa: BLE001 - one line for every runtime error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{source}: the base with its preprocessing does not run on a "
                         f"batch of 2 images {list(feed.shape)} ({first[:300]}); export it "
                         f"with a dynamic batch dimension") from None


def _inferred_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The type of every tensor of `model`, from one shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {vi.name: vi for vi in [*inferred.input, *inferred.value_info, *inferred.output]}


def _tensor_dims(types: dict[str, onnx.ValueInfoProto], name: str) -> list:
    if name not in types:
        raise ValueError(f"cannot infer the shape of {name!r}")
    return value_dims(types[name]) or []


def _trainable_tensors(graph: onnx.GraphProto, kinds: set[str]) -> list[str]:
    inits = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    found: list[str] = []
    for node in graph.node:
        for index, kind in TRAINABLE_INPUTS.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in inits and kind in kinds:
                if node.input[index] not in found:
                    found.append(node.input[index])
    return found


def _head_model(head: Head | Path, features_shape: list) -> tuple[onnx.ModelProto, dict, list]:
    """The head graph, its declared parameter shapes and its parameter names."""
    if isinstance(head, Head):
        model, shapes = head.build(features_shape)
        return model, shapes, [t.name for t in model.graph.initializer]
    model = onnx.load(os.fspath(head))
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not model.graph.output:
        raise ValueError(f"head graph {head} needs one input (the features) and an output "
                         f"(the logits); it has inputs {[i.name for i in inputs]}")
    names = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    return model, {}, names


def _compose(tail: onnx.ModelProto | None, cut: str, cut_shape: list,
             head_model: onnx.ModelProto) -> onnx.ModelProto:
    """One head graph: the base's trained blocks (if any) followed by the head."""
    b = GraphBuilder()
    x = b.input("features", np.float32, ["N", *cut_shape])
    if tail is not None:
        (x,) = b.inline(pointwise_head_as_gemm(tail).graph, {cut: x}, prefix="base/")
    head_input = next(i.name for i in head_model.graph.input
                      if i.name not in {t.name for t in head_model.graph.initializer})
    logits = b.inline(head_model.graph, {head_input: x}, prefix="")[0]
    return b.model({"logits": logits}, name="head")


def _io_names(model: onnx.ModelProto) -> tuple[str, str]:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits), \
        model.graph.output[0].name


def _serialize(model: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def convert(base: str | os.PathLike | onnx.ModelProto = "efficientnet-lite0",
            head: Head | str | os.PathLike | None = None,
            optimizer: Optimizer | str | None = None, *, loss: Loss | str | None = None,
            trainable: str | Trainable = "head", cut: str | None = None,
            classes: int | None = None, lr: float | None = None,
            weight_decay: float | None = None, l2: float | None = None,
            quantize: str | os.PathLike | bool | None = None,
            cache_dir: str | os.PathLike | None = None, preprocess=None,
            input_size: tuple[int, int] | int | None = None,
            max_length: int | None = None) -> Bundle:
    """Build a bundle: base (cut where training starts), training graphs, parameters.

    base: "efficientnet-lite0", "speech-embedding" (16 kHz PCM clips of 1.5 s, see
    edgetune.converter.speech) or an ONNX file (cut at `cut`, default its first output).
    head: a Head, "softmax", "mlp:HIDDEN", "svm" or a HEAD.onnx graph.
    optimizer: an Optimizer or a name of OPTIMIZERS (default: edgetune.defaults).
    loss: a Loss or a name of LOSSES (default: the head's).
    trainable: "head", "last:K" (also train the base's last K blocks) or "bias:K"
    (only their biases and normalization scales). quantize: also write an int8 base
    (graph role `base_int8`, file base.int8.onnx) calibrated on a folder of images, or
    with True on the images that ship with edgetune (edgetune.converter.calibration;
    True skips bases where int8 does not apply: text and audio). Default None: no int8
    base (quantizing takes about ten seconds; `edgetune convert` and the server's
    default bundle do it by default).
    preprocess: how pixels become the base's input when it does not take uint8 NHWC
    pixels itself: "imagenet", "unit", "symmetric", "raw", "none", "tensor", "audio"
    (float32 PCM [N, samples]; "audio:RATE" for a rate other than 16000 Hz) or
    {"mean": [...], "std": [...]} (see edgetune.converter.preprocess); detected when
    not given (a float image input: "imagenet", with a warning) and recorded in
    manifest["input"]["preprocessing"]. input_size: (height, width) for a base whose
    height and width are dynamic.
    base "minilm" (int8) or "minilm-fp32": all-MiniLM-L6-v2 sentence embeddings of texts
    of at most `max_length` tokens (default 128), with the tokenizer in the bundle
    (edgetune.converter.text); the head only, or with "minilm-fp32" also its last K
    transformer blocks (trainable="last:K", edgetune.converter.text_blocks).
    """
    mode = Trainable.parse(trainable)
    if classes is not None:
        classes = check_classes(classes)
    if l2 is not None:
        l2 = check_non_negative(l2, "l2")
    loss = resolve_loss(loss)
    head = resolve_head(head, classes)
    if optimizer is None and isinstance(head, Head):
        optimizer = head.default_optimizer
    optimizer = resolve_optimizer(optimizer, lr, weight_decay, str(mode),
                                  head.default_lrs if isinstance(head, Head) else None)
    if l2 is None:  # the head's own, for training the head alone
        l2 = head.default_l2 if isinstance(head, Head) and mode.mode == "head" else 0.0
    text_base = None if isinstance(base, onnx.ModelProto) else TEXT_ZOO.get(os.fspath(base))
    text_split = None
    if text_base is not None:
        max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
        if cut is not None or quantize not in (None, False, True) or preprocess is not None:
            raise ValueError(f"base {os.fspath(base)!r} takes no cut, quantize or preprocess")
        if mode.mode == "bias" or (mode.mode == "last" and text_base != "fp32"):
            raise ValueError(f"base {os.fspath(base)!r} trains the head only; trainable "
                             f"last:K (its last transformer blocks) needs base 'minilm-fp32'")
        base_model = onnx.load(os.fspath(minilm(cache_dir, max_length=max_length,
                                                precision=text_base)))
        if mode.mode == "last":  # the cut and tail are rebuilt: edgetune.converter.text_blocks
            text_split = minilm_split(cache_dir, mode.blocks, max_length)
        base_name, plan, repairs = os.fspath(base), None, []
    else:
        if max_length is not None:
            raise ValueError("max_length is for text bases (minilm, minilm-fp32)")
        base_model, base_name, plan, repairs = prepare_base(
            base, cut, cache_dir, preprocess=preprocess, input_size=input_size)
    image_name, features_name = _io_names(base_model)

    types = _inferred_types(base_model)  # once, before the cut
    tail, cut_name = None, features_name
    if text_split is not None:
        base_model, tail = text_split
        cut_name = TEXT_CUT
        types = {**types, **{o.name: o for o in base_model.graph.output}}
    elif mode.mode != "head":
        boundaries = block_boundaries(base_model)
        if mode.blocks > len(boundaries):
            raise ValueError(f"trainable {mode}: the base has only {len(boundaries)} blocks")
        cut_name = boundaries[-mode.blocks]
        if cut_name in types and cut_name not in {v.name for v in base_model.graph.value_info}:
            # typed here, both cuts below need no shape inference of their own
            base_model.graph.value_info.append(types[cut_name])
        tail = extract(base_model, [features_name], [cut_name])
        base_model = extract(base_model, [cut_name])
    cut_shape = _tensor_dims(types, cut_name)[1:]
    if not all(isinstance(d, int) for d in cut_shape):
        raise ValueError(f"the cached tensor {cut_name!r} needs a static shape per sample, "
                         f"got {cut_shape}")
    features_shape = _tensor_dims(types, features_name)[1:] if tail else cut_shape
    head_model, param_shapes, head_params = _head_model(head, features_shape)
    composite = _compose(tail, cut_name, cut_shape, head_model)
    trained = list(head_params)
    if tail is not None:
        kinds = {"weight", "bias", "scale"} if mode.mode == "last" else {"bias", "scale"}
        trained = ["base/" + n for n in _trainable_tensors(tail.graph, kinds)] + trained
    loss = loss or (head.default_loss() if isinstance(head, Head) else
                    SoftmaxClassifier().default_loss())
    graphs = build_training_graphs(composite, loss, optimizer, trainable=trained, l2=l2,
                                   param_shapes=param_shapes)
    for model in (graphs.train, graphs.train_epoch, graphs.infer):
        onnx.checker.check_model(model, full_check=True)
    files = {"base.onnx": _serialize(_base_with_features_output(base_model, cut_name)),
             **graphs.files()}
    if text_base is not None:
        input_section = text_input_section(max_length)
        base_inputs = {role: input_section[role] for role in TEXT_BASE_ROLES}
    elif plan.preset == "audio":
        input_section = audio_input_section(image_name, plan.dims[1], plan.sample_rate)
        base_inputs = {"image": image_name}
    else:
        input_section = _input_section(base_model, image_name)
        base_inputs = {"image": image_name}
    manifest = _manifest(input_section, base_inputs, base_name, cut_shape, graphs, mode, head,
                         classes, _output_layer(head, head_model, [p.name for p in graphs.params]))
    if text_base is not None:
        files["tokenizer.json"] = tokenizer_json(max_length)
        manifest["files"] = {"tokenizer": {"file": "tokenizer.json", "sha256": "0" * 64}}
        if text_split is not None:  # [L, H + 1]: token activations, the mask last
            manifest["features"]["layout"] = "tokens+mask"
    if plan is not None and (plan.changes_model or plan.detected or preprocess is not None):
        if plan.section() is not None:
            manifest["input"]["preprocessing"] = plan.section()
    if repairs:
        manifest["base_repairs"] = repairs
    if quantize is True and manifest["input"].get("kind", "image") != "image":
        quantize = None  # int8 here is for image bases (minilm is int8 already)
    if quantize not in (None, False):
        files["base.int8.onnx"], manifest["quantization"] = _quantized_base(
            files["base.onnx"], quantize)
        manifest["graphs"]["base_int8"] = {**manifest["graphs"]["base"], "file": "base.int8.onnx"}
    return Bundle(manifest, files)


def _base_with_features_output(model: onnx.ModelProto, cut_name: str) -> onnx.ModelProto:
    """The base with its output named `features`, so every bundle reads the same."""
    if cut_name == "features":
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(onnx.helper.make_node("Identity", [cut_name], ["features"],
                                                name="edgetune_features"))
    out.graph.output[0].name = "features"
    return out


def _input_section(base_model: onnx.ModelProto, image_name: str) -> dict:
    """The manifest's `input`: kind "image" for uint8 NHWC RGB input (with how the device
    resizes: see edgetune.inputs.image.prepare), else kind "tensor"."""
    image = next(i for i in base_model.graph.input if i.name == image_name)
    elem = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type).name
    shape = value_dims(image, symbolic=False) or []
    is_image = elem == "uint8" and len(shape) == 4 and shape[-1] == 3
    section = {"kind": "image" if is_image else "tensor", "name": image_name, "dtype": elem,
               "shape": shape, "layout": "NHWC" if is_image else None,
               "color": "RGB" if is_image else None}
    if is_image:
        section.update(filter="lanczos", crop="center")
    return section


def _output_layer(head: Head | Path, head_model: onnx.ModelProto,
                  params: list[str]) -> tuple[str, str] | None:
    """(weight, bias) parameter names of the layer that makes the logits: the head's
    own `output_params`, or for a user's graph the last Gemm, or MatMul + Add, whose
    constants are trained parameters; None when not found."""
    if isinstance(head, Head):
        found = head.output_params
    else:
        graph = head_model.graph
        inits = {t.name for t in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output if o}
        node = producer.get(graph.output[0].name) if graph.output else None
        while node is not None and node.op_type == "Identity":
            node = producer.get(node.input[0])
        found = None
        if node is not None and node.op_type == "Gemm" and len(node.input) > 2:
            found = (node.input[1], node.input[2])
        elif node is not None and node.op_type == "Add":
            bias = [i for i in node.input if i in inits]
            product = [producer.get(i) for i in node.input if i not in inits]
            if len(bias) == 1 and len(product) == 1 and product[0] is not None \
                    and product[0].op_type in ("MatMul", "Gemm"):
                weight = [i for i in product[0].input if i in inits]
                found = (weight[0], bias[0]) if len(weight) == 1 else None
    return found if found and all(name in params for name in found) else None


def _manifest(input_section: dict, base_inputs: dict, base_name, cut_shape,
              graphs: TrainingGraphs, mode: Trainable, head, classes, output_layer) -> dict:
    sections = graphs.manifest_sections()
    initial_classes = next((v.shape[d] for p in graphs.params for d, dim in enumerate(p.shape)
                            if dim == "classes" for v in [graphs.initial[p.name]]), classes)
    classes_section = {"dimension": "classes", "initial": initial_classes}
    if output_layer is not None:
        classes_section.update(weight=output_layer[0], bias=output_layer[1])
    return {
        "format": "edgetune.bundle",
        "version": 1,
        "opset": OPSET,
        "created_by": f"edgetune {__version__}",
        "input": input_section,
        "features": {"shape": cut_shape, "dtype": "float32"},
        "graphs": {
            "base": {"file": "base.onnx", "sha256": "0" * 64, "inputs": base_inputs,
                     "outputs": {"features": "features"}},
            **sections.pop("graphs"),
        },
        **sections,
        "classes": classes_section,
        "base": base_name,
        "head": head.config() if isinstance(head, Head) else {"name": "onnx",
                                                               "file": Path(head).name},
        "trainable": {"mode": mode.mode, "blocks": mode.blocks,
                      "params": [p.name for p in graphs.params]},
    }


def _quantized_base(base_bytes: bytes, calibration) -> tuple[bytes, dict]:
    """base.int8.onnx calibrated on a folder, or with True on the shipped images."""
    if calibration is True:
        from edgetune.converter.calibration import describe, shipped_images

        images = given = shipped_images()
        source = describe(len(images))
    else:
        given, images = calibration, int8.calibration_files(calibration)
        source = "the images of the given folder (--quantize CALIB_DIR)"
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8_path = Path(tmp) / "base.onnx", Path(tmp) / "base.int8.onnx"
        fp32.write_bytes(base_bytes)
        report = int8.quantize_base(fp32, given, int8_path)
        report.update(int8.feature_agreement(fp32, int8_path, images[:64]),
                      calibration=source)
        data = int8_path.read_bytes()
    return data, {k: v for k, v in report.items()
                  if isinstance(v, int | float | str) and not k.endswith("_path")}


__all__ = ["Trainable", "convert", "prepare_base", "resolve_head",
           "resolve_optimizer"]
