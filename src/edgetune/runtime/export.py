"""Compose base + infer + trained parameters into one standalone ONNX model, on the
device, without the onnx package: at the protobuf level.

The result reads raw pixels (the base's input) and returns the infer graph's outputs
(`probabilities`, `logits`); the trained parameters are initializers and the class
names are metadata. The infer graph's internal names get a `head/` prefix so they
cannot collide with the base's.

    model_bytes = compose_standalone(base, infer, "features", "features", params, meta)

A text model takes token ids and the attention mask; its tokenizer is written beside it
(:func:`tokenizer_path`: ``personal.onnx`` -> ``personal.tokenizer.json``), with the
bundle's truncation and padding to ``max_length`` set, so ``tokenizers`` alone makes the
model's input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgetune.onnx_scan import fields

# Field numbers from onnx.proto.
MODEL_IR_VERSION, MODEL_PRODUCER, MODEL_GRAPH, MODEL_OPSET, MODEL_METADATA = 1, 2, 7, 8, 14
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER = 1, 2, 5
GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 11, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_NAME = 1, 2, 3
VALUE_INFO_NAME = 1
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 8, 9
ENTRY_KEY, ENTRY_VALUE = 1, 2
FLOAT = 1
PREFIX = "head/"


def tokenizer_path(model_path: str | os.PathLike) -> Path:
    """Where the export of a text model puts its tokenizer: beside it, `NAME.tokenizer.json`
    for `NAME.onnx`."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.tokenizer.json")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _encode(number: int, wire: int, value) -> bytes:
    """Re-encode one parsed field unchanged."""
    if wire == 0:
        return _varint(number << 3) + _varint(value)
    if wire == 2:
        return _field(number, value)
    return _varint(number << 3 | wire) + value


def tensor_proto(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    return b"".join([*(_field(TENSOR_DIMS, int(d)) for d in array.shape),
                     _field(TENSOR_DATA_TYPE, FLOAT), _field(TENSOR_NAME, name),
                     _field(TENSOR_RAW_DATA, array.tobytes())])


def _rename(message: bytes, name_fields: set[int], rename) -> bytes:
    """Rewrite the string fields `name_fields` of a message through `rename`."""
    return b"".join(_field(n, rename(v.decode())) if n in name_fields and w == 2
                    else _encode(n, w, v) for n, w, v in fields(message))


def _graph_of(model: bytes) -> tuple[bytes, list[tuple[int, int, object]]]:
    graph, rest = None, []
    for number, wire, value in fields(model):
        if number == MODEL_GRAPH and wire == 2:
            graph = value
        else:
            rest.append((number, wire, value))
    if graph is None:
        raise ValueError("model has no graph")
    return graph, rest


def _name_of(message: bytes, number: int) -> str:
    return next((v.decode() for n, w, v in fields(message) if n == number and w == 2), "")


def input_metadata(spec: Mapping) -> dict[str, str]:
    """Metadata documenting the model's input for a caller without edgetune:
    ``edgetune.input`` (the manifest's input, with ``filter``, ``crop`` and ``resize``
    filled in for images) and ``edgetune.preprocessing``, one human-readable line."""
    spec = dict(spec)
    kind = spec.get("kind", "image")
    if kind != "image":
        shape = spec.get("shape")
        line = (f"{kind} input {spec.get('name')!r}: {spec.get('dtype')} {shape}; "
                f"fed as is")
        return {"edgetune.input": json.dumps(spec), "edgetune.preprocessing": line}
    spec.setdefault("filter", "lanczos")
    spec.setdefault("crop", "center")
    spec.setdefault("resize", "cover")
    shape = spec.get("shape") or [None, 224, 224, 3]
    height, width = shape[1], shape[2]
    inside = (spec.get("preprocessing") or {}).get("formula")
    line = (f"Feed uint8 RGB pixels, NHWC [batch, {height}, {width}, 3], to input "
            f"{spec.get('name')!r}: resize the image with a {spec['filter']} filter so that "
            f"it covers {width}x{height} (keep its aspect ratio; the shorter side fits), "
            f"then {spec['crop']}-crop the overflow; no stretching, no borders, no "
            f"normalization: the model normalizes inside"
            + (f" ({inside})" if inside else "") + ".")
    return {"edgetune.input": json.dumps(spec), "edgetune.preprocessing": line}


def compose_standalone(base: bytes, infer: bytes, base_features: str, infer_features: str,
                       params: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """base: image -> `base_features`; infer: `infer_features` + params -> outputs.

    An ``edgetune.input`` entry of `metadata` (the manifest's input as JSON) is completed
    by :func:`input_metadata` (resize filter, crop, and an ``edgetune.preprocessing``
    line), so the file documents how to prepare pixels."""
    base_graph, base_rest = _graph_of(base)
    infer_graph, _ = _graph_of(infer)
    output_names = {_name_of(v, VALUE_INFO_NAME)
                    for n, w, v in fields(infer_graph) if n == GRAPH_OUTPUT}

    def rename(name: str) -> str:
        if not name or name in output_names:
            return name
        if name == infer_features:
            return base_features
        return PREFIX + name

    parts = []
    for number, wire, value in fields(base_graph):
        if number == GRAPH_OUTPUT:
            continue  # the base's output feeds the head now
        parts.append(_encode(number, wire, value))
    for number, wire, value in fields(infer_graph):
        if number == GRAPH_NODE:
            parts.append(_field(GRAPH_NODE, _rename(value, {NODE_INPUT, NODE_OUTPUT, NODE_NAME},
                                                    rename)))
        elif number == GRAPH_INITIALIZER:
            parts.append(_field(GRAPH_INITIALIZER, _rename(value, {TENSOR_NAME}, rename)))
        elif number == GRAPH_OUTPUT:
            parts.append(_encode(number, wire, value))
    missing = [n for n in params if n == infer_features]
    if missing:
        raise ValueError(f"parameter names collide with the features input: {missing}")
    for name, value in params.items():
        parts.append(_field(GRAPH_INITIALIZER, tensor_proto(rename(name), value)))

    model = [_encode(n, w, v) for n, w, v in base_rest if n not in (MODEL_PRODUCER,
                                                                   MODEL_METADATA)]
    model.append(_field(MODEL_PRODUCER, "edgetune"))
    model.append(_field(MODEL_GRAPH, b"".join(parts)))
    metadata = dict(metadata)
    if "edgetune.input" in metadata:
        try:
            spec = json.loads(metadata["edgetune.input"])
        except ValueError:
            spec = None
        if isinstance(spec, dict):
            documented = input_metadata(spec)
            metadata["edgetune.input"] = documented["edgetune.input"]
            metadata.setdefault("edgetune.preprocessing", documented["edgetune.preprocessing"])
    for key, value in metadata.items():
        model.append(_field(MODEL_METADATA, _field(ENTRY_KEY, key) + _field(ENTRY_VALUE, value)))
    return b"".join(model)


def export_profile(bundle, base_role: str, infer_features: str, params: Mapping,
                   classes: list[str], input_spec: Mapping, bundle_id: str, precision: str,
                   preparer, path: str | os.PathLike) -> Path:
    """Personalizer.export: the bundle's base `base_role` and infer graph with the
    trained `params`, written atomically to `path` (and a text model's tokenizer beside
    it, tokenizer_path)."""
    from edgetune.files import atomic_write

    model = compose_standalone(bundle.graph(base_role), bundle.graph("infer"),
                               bundle.io(base_role)[1]["features"], infer_features, params,
                               {"edgetune.classes": json.dumps(classes),
                                "edgetune.input": json.dumps(input_spec),
                                "edgetune.bundle": bundle_id,
                                "edgetune.precision": precision})
    if preparer.kind == "text":
        tokenizer = preparer.tokenizer.to_str().encode("utf-8")
        atomic_write(tokenizer_path(path), tokenizer)
    return atomic_write(path, model)
