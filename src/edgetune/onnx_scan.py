"""Find the external-data files an ONNX model refers to, without the onnx package.

The device must not import onnx, yet it must refuse a bundle whose graphs point at
files outside the bundle (`"location": "../../home/me/.ssh/id_rsa"`). This walks the
protobuf wire format along the paths where tensors live: graph initializers, sparse
initializers, node attributes (Constant values, subgraphs of Loop/If/Scan), functions
and training info.

    external_data_locations(open("base.onnx", "rb").read())   # ["base.weights"]
"""

from __future__ import annotations

from collections.abc import Iterator

# Field numbers from onnx.proto.
MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 20, 25
TRAINING_INIT, TRAINING_ALGORITHM = 1, 2
FUNCTION_NODE = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
MAX_DEPTH = 64  # subgraph nesting; deeper is hostile input


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated length-delimited field")
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ProtobufError("truncated fixed-size field")
        yield number, wire, value


def _children(data: bytes, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
    for number, wire, value in fields(data):
        if wire == 2 and number in wanted:
            yield number, value


def _tensor_locations(tensor: bytes) -> list[str]:
    location, external = None, False
    for number, wire, value in fields(tensor):
        if number == TENSOR_DATA_LOCATION and wire == 0:
            external = external or value == 1
        elif number == TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            entry = dict((n, v) for n, w, v in fields(value) if w == 2)
            if entry.get(ENTRY_KEY) == b"location":
                location = entry.get(ENTRY_VALUE, b"").decode("utf-8", "replace")
    if not external:
        return []
    return [location if location is not None else ""]


def _sparse_locations(sparse: bytes) -> list[str]:
    return [loc for _, t in _children(sparse, {SPARSE_VALUES, SPARSE_INDICES})
            for loc in _tensor_locations(t)]


def _node_locations(node: bytes, depth: int) -> list[str]:
    found = []
    for _, attr in _children(node, {NODE_ATTRIBUTE}):
        for number, value in _children(attr, {ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS,
                                               ATTR_SPARSE, ATTR_SPARSES}):
            if number in (ATTR_T, ATTR_TENSORS):
                found += _tensor_locations(value)
            elif number in (ATTR_SPARSE, ATTR_SPARSES):
                found += _sparse_locations(value)
            else:
                found += _graph_locations(value, depth + 1)
    return found


def _graph_locations(graph: bytes, depth: int = 0) -> list[str]:
    if depth > MAX_DEPTH:
        raise ProtobufError(f"subgraphs nested deeper than {MAX_DEPTH}")
    found = []
    for number, value in _children(graph, {GRAPH_NODE, GRAPH_INITIALIZER,
                                           GRAPH_SPARSE_INITIALIZER}):
        if number == GRAPH_INITIALIZER:
            found += _tensor_locations(value)
        elif number == GRAPH_SPARSE_INITIALIZER:
            found += _sparse_locations(value)
        else:
            found += _node_locations(value, depth)
    return found


def external_data_locations(model: bytes) -> list[str]:
    """Every external-data location in a serialized ModelProto ("" if one is missing)."""
    found = []
    for number, value in _children(model, {MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS}):
        if number == MODEL_GRAPH:
            found += _graph_locations(value)
        elif number == MODEL_TRAINING_INFO:
            for _, g in _children(value, {TRAINING_INIT, TRAINING_ALGORITHM}):
                found += _graph_locations(g)
        else:
            for _, node in _children(value, {FUNCTION_NODE}):
                found += _node_locations(node, 0)
    return found
