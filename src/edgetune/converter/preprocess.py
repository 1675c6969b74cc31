"""The base's input: detect what a model expects, and put pixel preprocessing inside it.

A bundle's base takes raw pixels (uint8 ``[N, H, W, 3]``, RGB), so no device can get
the scaling wrong. A model exported the usual way from PyTorch takes float32
``[N, 3, H, W]`` normalized outside the graph; :func:`wrap` puts that normalization in
front of it (Cast, Sub offset, Div scale, Transpose NHWC -> NCHW)::

    plan = plan_input(model, preprocess=None, input_size=None)  # detect, or ValueError
    model = wrap(model, plan)                                   # uint8 NHWC pixels in
    manifest["input"]["preprocessing"] = plan.section()

``preprocess`` names (:data:`PRESETS`; mean and std are on 0..1 pixels, i.e. the model
sees ``(pixel / 255 - mean) / std``):

- ``imagenet``: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) — torchvision's;
- ``unit``: ``pixel / 255``; ``symmetric``: ``(pixel - 127.5) / 127.5``;
- ``raw``: float pixels 0..255;
- ``none``: the model takes uint8 NHWC pixels already (its preprocessing is inside);
- ``tensor``: no image at all: the base takes a plain array (bundle input kind
  ``tensor``);
- ``audio`` (or ``audio:RATE``, default 16000 Hz): the base takes float32 mono PCM
  ``[N, samples]`` in [-1, 1] with a fixed ``samples`` (bundle input kind ``audio``;
  its preprocessing must be inside the model). Never detected: ask for it;
- or a mapping ``{"mean": [r, g, b], "std": [r, g, b]}`` (on 0..1 pixels).

Detection when ``preprocess`` is not given: uint8 NHWC -> ``none``; a float 3-channel
image (NCHW or NHWC) -> ``imagenet``, stated by a warning and in the manifest
(``input.preprocessing.chosen == "detected"``); an input that is not 4-D -> ``tensor``.
An image input that cannot be fed is a ValueError at convert time: more than one input,
a channel count other than 3, a dtype other than uint8/float, a dynamic height or width
without ``input_size=(H, W)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.autodiff.builder import value_dims
from edgetune.converter.cleanup import all_tensor_names

__all__ = ["PRESETS", "InputPlan", "plan_input", "wrap"]

#: name -> (mean, std) on 0..1 pixels; None for the presets that add no arithmetic.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "raw": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
    "none": None,
    "tensor": None,
    "audio": None,
}
DEFAULT_SAMPLE_RATE = 16000
_FLOATS = {"float32", "float16", "float64"}
_NAMES = ", ".join(PRESETS)


@dataclass
class InputPlan:
    """What the base's input is and how pixels reach it (see :func:`plan_input`)."""

    name: str                      # the model's input tensor
    dtype: str                     # its numpy dtype name
    dims: list                     # its dims as declared (None: dynamic)
    preset: str                    # a PRESETS name or "custom"
    layout: str | None = None      # the model's layout: "NCHW", "NHWC" or None (tensor)
    size: tuple[int, int] | None = None  # (height, width) of the image
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    detected: bool = False         # chosen by detection, not by the caller
    sample_rate: int | None = None  # audio: the rate the base's PCM is at
    notes: list[str] = field(default_factory=list)

    @property
    def is_image(self) -> bool:
        return self.layout is not None

    @property
    def changes_model(self) -> bool:
        """Whether :func:`wrap` rewrites the model's input."""
        if not self.is_image:
            return False
        return (self.dtype != "uint8" or self.layout != "NHWC" or self.dims[0] is not None
                or self.dims[1:3] != list(self.size))

    def formula(self) -> str:
        to = "float32 NCHW" if self.layout == "NCHW" else "float32 NHWC"
        if self.mean is None:
            moved = "" if self.layout == "NHWC" else "; uint8 NHWC -> uint8 NCHW"
            return f"raw uint8 RGB pixels (any preprocessing is inside the model){moved}"
        return (f"x = (pixel / 255 - mean) / std per RGB channel, mean {list(self.mean)}, "
                f"std {[round(s, 6) for s in self.std]}; uint8 NHWC RGB -> {to}")

    def section(self) -> dict | None:
        """The manifest's ``input.preprocessing`` (None for a tensor input)."""
        if not self.is_image:
            return None
        return {"name": self.preset, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None, "layout": self.layout,
                "formula": self.formula(), "chosen": "detected" if self.detected else "given"}


def _error(source: str, text: str) -> ValueError:
    return ValueError(f"{source}: {text}")


def _resolve(preprocess, source: str) -> tuple[str | None, tuple | None, tuple | None]:
    if preprocess is None:
        return None, None, None
    if isinstance(preprocess, Mapping):
        try:
            mean = tuple(float(v) for v in preprocess["mean"])
            std = tuple(float(v) for v in preprocess["std"])
        except (KeyError, TypeError, ValueError):
            raise _error(source, f"preprocess {dict(preprocess)!r} needs 'mean' and 'std', "
                                 f"3 numbers each on 0..1 pixels") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise _error(source, "preprocess mean and std need 3 numbers each, std > 0")
        return "custom", mean, std
    name = str(preprocess).strip().lower()
    if name.startswith("audio:"):
        name = "audio"
    if name not in PRESETS:
        raise _error(source, f"preprocess {preprocess!r} is not one of: {_NAMES} "
                             f"(or {{'mean': [...], 'std': [...]}})")
    preset = PRESETS[name]
    return name, *(preset if preset else (None, None))


def plan_input(model: onnx.ModelProto, preprocess=None,
               input_size: tuple[int, int] | int | None = None, *,
               source: str = "the base") -> InputPlan:
    """Detect the base's input and how to feed it; ValueError when it cannot be fed."""
    name, mean, std = _resolve(preprocess, source)
    rate = _sample_rate(preprocess, source) if name == "audio" else None
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise _error(source, f"the base has {len(inputs)} inputs "
                             f"({[i.name for i in inputs]}); edgetune feeds exactly one "
                             f"(an image or an array): give the others values "
                             f"(initializers) or cut them away")
    vi = inputs[0]
    if not vi.type.HasField("tensor_type"):
        raise _error(source, f"input {vi.name!r} is not a tensor")
    elem = vi.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem).name
    except Exception:  # noqa: BLE001 - an exotic element type
        dtype = onnx.TensorProto.DataType.Name(elem).lower()
    dims = value_dims(vi, symbolic=False)
    if dims is None:
        raise _error(source, f"input {vi.name!r} has no declared shape; edgetune needs its "
                             f"rank (e.g. [N, 3, H, W])")
    if input_size is not None:
        size = (input_size, input_size) if isinstance(input_size, int) else \
            tuple(int(v) for v in input_size)
        if len(size) != 2 or min(size) < 1:
            raise _error(source, f"input_size {input_size!r} must be (height, width)")
    else:
        size = None

    if name == "audio":
        if size is not None:
            raise _error(source, "input_size applies to image inputs, not audio")
        if dtype != "float32" or len(dims) != 2 or not isinstance(dims[1], int):
            raise _error(source, f"preprocess 'audio' needs a float32 [N, samples] input with "
                                 f"a fixed number of samples; input {vi.name!r} is {dtype} "
                                 f"{_show(dims)}")
        return InputPlan(vi.name, dtype, dims, "audio", sample_rate=rate)
    if name == "tensor" or (name is None and len(dims) != 4):
        if size is not None:
            raise _error(source, f"input_size applies to image inputs; input {vi.name!r} "
                                 f"has shape {_show(dims)}")
        return InputPlan(vi.name, dtype, dims, "tensor")
    if len(dims) != 4:
        raise _error(source, f"preprocess {name!r} applies to image inputs [N, 3, H, W] or "
                             f"[N, H, W, 3]; input {vi.name!r} has shape {_show(dims)} "
                             f"(use preprocess='tensor' to feed raw arrays)")
    if dtype != "uint8" and dtype not in _FLOATS:
        raise _error(source, f"input {vi.name!r} is {dtype}; an image input must be uint8 "
                             f"or float (use preprocess='tensor' to feed raw arrays)")
    layout = _layout(dims, dtype)
    if layout is None:
        raise _error(source, f"input {vi.name!r} {_show(dims)} is not a 3-channel image "
                             f"([N, 3, H, W] or [N, H, W, 3]); edgetune feeds RGB pixels "
                             f"(use preprocess='tensor' to feed raw arrays)")
    hw = dims[2:4] if layout == "NCHW" else dims[1:3]
    if size is None:
        if None in hw:
            raise _error(source, f"input {vi.name!r} {_show(dims)} has a dynamic height or "
                                 f"width: give the image size (input_size=(H, W), "
                                 f"CLI --input-size HxW)")
        size = (hw[0], hw[1])
    elif any(d is not None and d != s for d, s in zip(hw, size)):
        raise _error(source, f"input_size {size} differs from the input's {_show(dims)}")

    if dtype == "uint8":
        if name not in (None, "none"):
            raise _error(source, f"input {vi.name!r} takes uint8 pixels: its preprocessing "
                                 f"is inside the model, so preprocess must be 'none', not "
                                 f"{name!r}")
        return InputPlan(vi.name, dtype, dims, "none", layout, size)
    detected = name is None
    if detected:
        name, mean, std = "imagenet", *PRESETS["imagenet"]
    elif name == "none":
        raise _error(source, f"input {vi.name!r} is {dtype} {layout}, not uint8 pixels: "
                             f"choose how pixels are scaled, preprocess= one of "
                             f"{', '.join(n for n in PRESETS if n not in ('none', 'tensor'))}")
    plan = InputPlan(vi.name, dtype, dims, name, layout, size, mean, std, detected)
    if detected:
        warnings.warn(f"{source}: input {vi.name!r} is {dtype} {layout} {_show(dims)}; "
                      f"assuming ImageNet mean/std normalization of 0..1 pixels "
                      f"(preprocess='imagenet'). If the model was trained otherwise pass "
                      f"preprocess= one of unit, symmetric, raw (CLI --preprocess NAME)",
                      UserWarning, stacklevel=3)
    return plan


def _sample_rate(preprocess, source: str) -> int:
    _, _, text = str(preprocess).strip().partition(":")
    try:
        rate = int(text) if text else DEFAULT_SAMPLE_RATE
    except ValueError:
        rate = 0
    if not 1000 <= rate <= 384000:
        raise _error(source, f"preprocess {preprocess!r}: the sample rate must be a number "
                             f"of Hz, e.g. audio:16000")
    return rate


def _show(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _layout(dims: list, dtype: str) -> str | None:
    nchw, nhwc = dims[1] == 3, dims[3] == 3
    if nchw and nhwc:
        return "NHWC" if dtype == "uint8" else "NCHW"
    return "NCHW" if nchw else "NHWC" if nhwc else None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def wrap(model: onnx.ModelProto, plan: InputPlan, *, input_name: str = "image"
         ) -> onnx.ModelProto:
    """The model taking uint8 ``[N, H, W, 3]`` RGB pixels (a new input, `input_name`
    unless taken), with the plan's preprocessing as its first nodes. The batch dimension
    becomes symbolic (``N``). A plan that changes nothing returns `model` itself."""
    if not plan.changes_model:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    height, width = plan.size
    if plan.dtype == "uint8" and plan.layout == "NHWC":  # only the dims change
        vi = next(i for i in graph.input if i.name == plan.name)
        vi.CopyFrom(helper.make_tensor_value_info(plan.name, onnx.TensorProto.UINT8,
                                                  ["N", height, width, 3]))
        _free_batch(graph, plan)
        return out
    taken = set(all_tensor_names(graph)) | {o.name for o in graph.output}
    fp = np.dtype(plan.dtype) if plan.dtype != "uint8" else None
    pixels = input_name if input_name not in taken or input_name == plan.name \
        else _unique(input_name, taken)
    taken.add(pixels)
    nodes, inits = [], []
    x = pixels
    if pixels == plan.name:  # the model's own input keeps its name: rename the inside
        inner = _unique(plan.name + ".inside", taken)
        taken.add(inner)
        _rename_input(graph, plan.name, inner)
        target = inner
    else:
        target = plan.name

    def step(op, inputs, suffix, **attrs):
        nonlocal x
        name = _unique(f"edgetune.preprocess/{suffix}", taken)
        taken.add(name)
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        x = name

    if fp is not None:
        step("Cast", [x], "float", to=onnx.TensorProto.FLOAT)
        offset = np.asarray(plan.mean, np.float32) * 255
        divisor = np.asarray(plan.std, np.float32) * 255
        if offset.any():
            const = _unique("edgetune.preprocess.offset", taken)
            taken.add(const)
            inits.append(numpy_helper.from_array(offset, const))
            step("Sub", [x, const], "centered")
        if not np.allclose(divisor, 1.0):
            const = _unique("edgetune.preprocess.scale", taken)
            taken.add(const)
            inits.append(numpy_helper.from_array(divisor, const))
            step("Div", [x, const], "scaled")
    if plan.layout == "NCHW":
        step("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    if fp is not None and fp != np.float32:
        step("Cast", [x], "dtype", to=helper.np_dtype_to_tensor_dtype(fp))
    nodes[-1].output[0] = target
    nodes[-1].name = f"edgetune.preprocess/{target}"
    new_input = helper.make_tensor_value_info(pixels, onnx.TensorProto.UINT8,
                                              ["N", height, width, 3])
    kept = [i for i in graph.input if i.name != plan.name]
    del graph.input[:]
    graph.input.extend([new_input, *kept])
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old_nodes])
    graph.initializer.extend(inits)
    _free_batch(graph, plan)
    return out


def _free_batch(graph: onnx.GraphProto, plan: InputPlan) -> None:
    if plan.dims[0] is not None:  # a fixed batch (often 1) becomes N everywhere
        for output in graph.output:
            dims = output.type.tensor_type.shape.dim
            if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == plan.dims[0]:
                dims[0].Clear()
                dims[0].dim_param = "N"
    del graph.value_info[:]  # re-inferred from the new input


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for output in graph.output:
        if output.name == old:
            raise ValueError(f"the input {old!r} is also an output")
