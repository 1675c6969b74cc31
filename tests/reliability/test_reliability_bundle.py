"""Hostile bundles: whatever a bundle directory holds, `Bundle.load` answers with a
`BundleError` (never another exception, never a crash) or a verified bundle, and it
never opens a file outside the bundle directory. The protobuf scanner that looks for
external-data paths takes any bytes: it answers or raises `ProtobufError`, with work
bounded by the input's size.

Fast versions for the test suite; `python bench/soak.py --fuzz N` runs more cases."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import tiny_base
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import external_data_helper, numpy_helper

from edgetune import onnx_scan
from edgetune.bundle import MAX_ELEMENTS, Bundle, BundleError
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Adam
from edgetune.onnx_scan import ProtobufError, external_data_locations

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- every `open` while a bundle loads, through the interpreter's audit hooks ---------------
_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # permanent, but idle (one comparison) outside `load_audited`


def _python_module(path: str) -> bool:
    """A lazy import while loading (e.g. the utf-8-sig codec) opens a module file of the
    interpreter: that is not a read of bundle data."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    real = os.path.realpath(path)
    return real.endswith((".py", ".pyc", ".so")) and any(
        real.startswith(prefix + os.sep) for prefix in prefixes)


def load_audited(root: Path):
    """Bundle.load(root) -> the bundle, or the BundleError it raised. Fails the test on
    any other exception and on any file opened outside `root`."""
    global _opened
    _opened = []
    try:
        try:
            result = Bundle.load(root)
        except BundleError as e:
            result = e
    finally:
        opened, _opened = _opened, None
    inside = root.resolve()
    outside = [p for p in opened if not Path(p).resolve().is_relative_to(inside)
               and not _python_module(p)]
    assert not outside, f"Bundle.load opened files outside the bundle: {outside}"
    return result


# -- a small real bundle, copied fresh for every example ----------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    base = tiny_base(root / "tiny.onnx")
    return convert(base, SoftmaxClassifier(3), Adam(lr=0.01)).save(root / "t.edgetune")


@contextmanager
def fresh_copy(pristine: Path):
    """A private copy of the bundle inside an otherwise empty folder, plus a canary file
    next to it (outside the bundle) that must never be opened."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "b.edgetune"
        shutil.copytree(pristine, root)
        (Path(tmp) / "canary.bin").write_bytes(b"\x00" * 64)
        yield root


def read_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_bytes())


def write_manifest(root: Path, manifest) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def rehash(root: Path, name: str) -> None:
    """Make the manifest agree with the current bytes of file `name` (a hostile author
    who rewrites the manifest too)."""
    manifest = read_manifest(root)
    for entry in [*manifest["graphs"].values(), manifest["init"]]:
        if entry["file"] == name:
            entry["sha256"] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    write_manifest(root, manifest)


FILES = ["manifest.json", "base.onnx", "train.onnx", "train_epoch.onnx", "infer.onnx",
         "params.safetensors"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)


# -- manifest.json ------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=3000) | st.text(max_size=1000).map(str.encode))
def test_manifest_of_random_bytes_is_refused(pristine, data):
    with fresh_copy(pristine) as root:
        (root / "manifest.json").write_bytes(data)
        assert isinstance(load_audited(root), BundleError)


@FUZZ
@given(cut=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_truncated_manifest_is_refused(pristine, cut):
    with fresh_copy(pristine) as root:
        data = (root / "manifest.json").read_bytes()
        (root / "manifest.json").write_bytes(data[:int(len(data) * cut)])
        assert isinstance(load_audited(root), BundleError)


@FUZZ
@given(value=json_values)
def test_manifest_of_any_json_value_is_refused(pristine, value):
    with fresh_copy(pristine) as root:
        write_manifest(root, value)
        assert isinstance(load_audited(root), BundleError)


@pytest.mark.parametrize("text", [
    "[" * 100_000,                                    # nesting deeper than the parser's stack
    '{"format": "edgetune.bundle", "version": ' + "9" * 5000 + "}",  # int beyond str limit
    '{"a": NaN, "b": Infinity}',
    "\ufeff{}",                                       # a byte-order mark
    '{"format": "edgetune.bundle"}\x00',
])
def test_manifest_json_edge_cases_are_refused(pristine, text):
    with fresh_copy(pristine) as root:
        (root / "manifest.json").write_bytes(text.encode("utf-8"))
        assert isinstance(load_audited(root), BundleError)


def _paths(value, prefix=()):
    """Every (path to a value) in a JSON tree, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(data=st.data())
def test_mutated_manifest_loads_verified_or_is_refused(pristine, data):
    """One random change anywhere in a real manifest (a value replaced by any JSON value,
    a key deleted, a value wrapped in a list): a BundleError, or a bundle whose files
    still match their hashes (e.g. a changed `created_by` is harmless)."""
    with fresh_copy(pristine) as root:
        manifest = read_manifest(root)
        path = data.draw(st.sampled_from(list(_paths(manifest))[1:]), label="path")
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        how = data.draw(st.sampled_from(["replace", "delete", "wrap"]), label="how")
        if how == "replace":
            parent[path[-1]] = data.draw(json_values, label="value")
        elif how == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = [parent[path[-1]]]
        write_manifest(root, manifest)
        result = load_audited(root)
        if isinstance(result, Bundle):
            for entry in [*result.manifest["graphs"].values(), result.manifest["init"]]:
                assert hashlib.sha256(result.files[entry["file"]]).hexdigest() == entry["sha256"]


@FUZZ
@given(dtype=st.text(alphabet="iufbcSUVOMm0123456789<>|=[](),: -", min_size=1, max_size=8))
def test_any_input_dtype_string_is_checked(pristine, dtype):
    """numpy parses dtype strings with TypeError, ValueError or SyntaxError on bad ones."""
    with fresh_copy(pristine) as root:
        manifest = read_manifest(root)
        manifest["input"]["dtype"] = dtype
        write_manifest(root, manifest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            result = load_audited(root)
        assert isinstance(result, (Bundle, BundleError))


@FUZZ
@given(where=st.sampled_from(["params", "state", "features", "input"]),
       dims=st.lists(st.integers(min_value=1, max_value=2**31 - 1), min_size=1, max_size=8))
def test_huge_declared_shapes_are_refused_before_any_allocation(pristine, where, dims):
    assume(int(np.prod(dims, dtype=object)) > MAX_ELEMENTS)
    with fresh_copy(pristine) as root:
        manifest = read_manifest(root)
        target = manifest[where][0] if where in ("params", "state") else manifest[where]
        target["shape"] = dims
        write_manifest(root, manifest)
        error = load_audited(root)
        assert isinstance(error, BundleError) and "elements" in str(error)


file_names = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["../canary.bin", "/etc/passwd", "..", ".", "", "a/b", "a\\b",
                     "a\x00b", "x" * 256, "x" * 5000, ".manifest.json", "ok\n.onnx",
                     "base.onnx/", "C:\\x"]))


@FUZZ
@given(entry=st.sampled_from(["base", "train", "infer", "init"]), name=file_names)
def test_hostile_file_names_are_refused(pristine, entry, name):
    assume(name not in FILES)
    with fresh_copy(pristine) as root:
        manifest = read_manifest(root)
        (manifest["init"] if entry == "init" else manifest["graphs"][entry])["file"] = name
        write_manifest(root, manifest)
        assert isinstance(load_audited(root), BundleError)


@pytest.mark.parametrize("link", ["manifest.json", "base.onnx", "params.safetensors"])
def test_symlinks_pointing_outside_are_not_followed(pristine, link):
    with fresh_copy(pristine) as root:
        canary = root.parent / "canary.bin"
        canary.write_bytes((root / link).read_bytes())  # identical bytes: the hash agrees
        (root / link).unlink()
        (root / link).symlink_to(canary)
        error = load_audited(root)
        assert isinstance(error, BundleError) and "outside the bundle" in str(error)


# -- the files the manifest names -----------------------------------------------------------
@FUZZ
@given(name=st.sampled_from(FILES[1:]), position=st.floats(0, 1, exclude_max=True),
       xor=st.integers(1, 255))
def test_any_changed_byte_is_refused(pristine, name, position, xor):
    with fresh_copy(pristine) as root:
        data = bytearray((root / name).read_bytes())
        data[int(len(data) * position)] ^= xor
        (root / name).write_bytes(bytes(data))
        error = load_audited(root)
        assert isinstance(error, BundleError) and "sha256" in str(error)


@FUZZ
@given(name=st.sampled_from(FILES[1:]), cut=st.floats(0, 1, exclude_max=True),
       rehashed=st.booleans())
def test_truncated_files_are_refused(pristine, name, cut, rehashed):
    """Cut short; the manifest's hash updated too or not. A protobuf cut exactly between
    two fields is still well-formed protobuf, so a rehashed ONNX file may load; the
    safetensors parameters never do."""
    with fresh_copy(pristine) as root:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[:int(len(data) * cut)])
        if rehashed:
            rehash(root, name)
        result = load_audited(root)
        if not rehashed or name == "params.safetensors":
            assert isinstance(result, BundleError)


@FUZZ
@given(payload=st.binary(max_size=2000), rehashed=st.booleans())
def test_parameters_file_of_random_bytes_is_refused(pristine, payload, rehashed):
    with fresh_copy(pristine) as root:
        (root / "params.safetensors").write_bytes(payload)
        if rehashed:
            rehash(root, "params.safetensors")
        assert isinstance(load_audited(root), BundleError)


def _set_external(model: onnx.ModelProto, location: str) -> None:
    """Point every initializer at external data in `location`."""
    assert len(model.graph.initializer) > 0
    for tensor in model.graph.initializer:
        raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        tensor.CopyFrom(raw)
        external_data_helper.set_external_data(tensor, location=location, offset=0,
                                               length=len(raw.raw_data))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")


def _escapes(root: Path, location: str) -> bool:
    if not location or "\x00" in location or os.path.isabs(location):
        return True
    try:
        return not (root / location).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        return True


locations = st.one_of(
    st.text(max_size=80),
    st.builds(lambda up, rest: "../" * up + rest, st.integers(1, 8),
              st.sampled_from(["canary.bin", "etc/passwd", "b.edgetune/base.onnx", ""])),
    st.sampled_from(["/etc/passwd", "link.bin", "sub/../../canary.bin", "./../canary.bin",
                     "base.weights", "sub/base.weights", "a\x00b", "x" * 5000, "//x",
                     "\\\\server\\share", "..\\canary.bin", "link.bin/../x"]))


@FUZZ
@given(role=st.sampled_from(["base", "train", "train_epoch"]), location=locations)
def test_external_data_that_escapes_the_bundle_is_refused(pristine, role, location):
    """Initializers moved to external data at `location` (rehashed, so only the path can
    give it away). `link.bin` is a symlink inside the bundle that points at the canary
    outside it. The audit hook proves nothing outside was opened either way."""
    with fresh_copy(pristine) as root:
        (root / "link.bin").symlink_to(root.parent / "canary.bin")
        name = read_manifest(root)["graphs"][role]["file"]
        model = onnx.load(root / name, load_external_data=False)
        _set_external(model, location)
        (root / name).write_bytes(model.SerializeToString())
        rehash(root, name)
        result = load_audited(root)
        if _escapes(root, location):
            assert isinstance(result, BundleError), f"{location!r} escapes but was accepted"
            assert "outside the bundle" in str(result)
        else:
            assert isinstance(result, Bundle)


# -- the protobuf scanner -------------------------------------------------------------------
SCANNER = settings(max_examples=300, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _scan(data: bytes) -> list[str] | None:
    """Scan and check the work done: every nesting level reads its bytes once, so the
    bytes read stay below (levels) x len(data)."""
    counted = [0]
    original = onnx_scan.fields

    def counting(message):
        counted[0] += len(message)
        return original(message)

    onnx_scan.fields = counting
    try:
        try:
            result = external_data_locations(data)
            assert all(isinstance(loc, str) for loc in result)
        except ProtobufError:
            result = None
    finally:
        onnx_scan.fields = original
    levels = 3 * (onnx_scan.MAX_DEPTH + 2) + 6
    assert counted[0] <= levels * max(len(data), 1), (counted[0], len(data))
    return result


@SCANNER
@given(data=st.binary(max_size=4096))
def test_scanner_takes_random_bytes(data):
    _scan(data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# Messages built from the field numbers the scanner follows, so random input reaches
# deep paths (graphs in attributes, sparse tensors, functions) and not only the top.
protobuf = st.recursive(
    st.binary(max_size=12) | st.just(_field(1, b"location") + _field(2, b"../x")),
    lambda inner: st.lists(
        st.tuples(st.sampled_from([1, 2, 5, 6, 7, 10, 11, 13, 14, 15, 20, 22, 23, 25]),
                  inner).map(lambda t: _field(*t))
        | st.builds(lambda n: _varint(14 << 3) + _varint(n), st.integers(0, 2**64 - 1)),
        max_size=4).map(b"".join),
    max_leaves=40)


@SCANNER
@given(data=protobuf)
def test_scanner_takes_structured_random_messages(data):
    _scan(data)


@pytest.fixture(scope="module")
def onnx_files(pristine):
    return [(pristine / name).read_bytes() for name in FILES[1:5]]


@SCANNER
@given(which=st.integers(0, 3), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]),
              st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_scanner_takes_mutated_onnx_files(onnx_files, which, edits):
    data = bytearray(onnx_files[which])
    for how, where, byte in edits:
        at = int(len(data) * where)
        if how == "flip" and data:
            data[at] ^= byte or 1
        elif how == "insert":
            data[at:at] = bytes([byte])
        elif how == "delete":
            del data[at:at + 1 + byte % 8]
        else:
            del data[at:]
    _scan(bytes(data))


def _nested(depth: int, location: bytes) -> bytes:
    """A model whose graph holds a node whose attribute holds a graph ... `depth` times,
    with one external-data tensor at the bottom."""
    entry = _field(1, b"location") + _field(2, location)
    graph = _field(onnx_scan.GRAPH_INITIALIZER, _field(onnx_scan.TENSOR_EXTERNAL_DATA, entry))
    for _ in range(depth):
        attr = _field(onnx_scan.ATTR_G, graph)
        node = _field(onnx_scan.NODE_ATTRIBUTE, attr)
        graph = _field(onnx_scan.GRAPH_NODE, node)
    return _field(onnx_scan.MODEL_GRAPH, graph)


def test_scanner_nesting_is_bounded_not_a_recursion_error():
    assert _scan(_nested(onnx_scan.MAX_DEPTH, b"../deep")) == ["../deep"]
    for depth in (onnx_scan.MAX_DEPTH + 1, 1_000, 5_000):
        with pytest.raises(ProtobufError, match="nested deeper"):
            external_data_locations(_nested(depth, b"../deep"))


def test_scanner_finds_locations_that_are_not_utf8():
    found = external_data_locations(_nested(2, b"\xff\xfe../x"))
    assert len(found) == 1 and found[0].endswith("../x")


def test_scanner_refuses_truncated_varints_and_lengths():
    for data in (b"\x80", b"\x3a\xff\xff\xff\xff\x0f", b"\x3a\x05ab", b"\x39\x00",
                 b"\x3b", b"\xff" * 11):
        with pytest.raises(ProtobufError):
            external_data_locations(data)


@pytest.mark.parametrize("change,match", [
    (lambda m: m["state"][0].update(param="nope"), r"state\[0\].param names no parameter"),
    (lambda m: m["params"].pop(0), r"state\[0\].param names no parameter"),
    (lambda m: m["input"].update(dtype="no-such-dtype"), "input.dtype must name a numeric"),
    (lambda m: m["input"].update(dtype="object"), "input.dtype must name a numeric"),
    (lambda m: m["input"].update(dtype="2-O7O"), "input.dtype must name a numeric"),
    (lambda m: m["input"].update(dtype="<27)S"), "input.dtype must name a numeric"),
    (lambda m: m["input"].update(shape=[16]), "for layout NHWC"),
])
def test_manifest_cross_references_are_checked(pristine, change, match):
    with fresh_copy(pristine) as root:
        manifest = read_manifest(root)
        change(manifest)
        write_manifest(root, manifest)
        error = load_audited(root)
        assert isinstance(error, BundleError), error
        assert re.search(match, str(error)), str(error)


def _all_finite_scores(result: dict) -> bool:
    return all(np.isfinite(v) for v in result["scores"].values())


def _drop_a_node_input(root: Path) -> None:
    model = onnx.load(root / "infer.onnx")
    model.graph.node[0].input[0] = "no_such_tensor"
    (root / "infer.onnx").write_bytes(model.SerializeToString())
    rehash(root, "infer.onnx")


@pytest.mark.parametrize("case", ["graph onnxruntime rejects", "tensor name the graph lacks",
                                  "no optimizer.lr"])
def test_an_inconsistent_resigned_bundle_is_an_edgetune_error_in_the_personalizer(
        pristine, tmp_path, case):
    from edgetune.errors import EdgetuneError
    from edgetune.runtime.personalizer import Personalizer

    root = shutil.copytree(pristine, tmp_path / "b.edgetune")
    manifest = read_manifest(root)
    if case == "graph onnxruntime rejects":
        _drop_a_node_input(root)
    elif case == "tensor name the graph lacks":
        manifest["params"][1]["infer_input"] = "no_such_input"
        write_manifest(root, manifest)
    else:
        del manifest["optimizer"]["lr"]
        write_manifest(root, manifest)
    bundle = Bundle.load(root)  # well-formed, hashes agree: loading cannot tell
    images = list(np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), np.uint8))
    if case == "no optimizer.lr":  # only a suggestion: training uses a default
        p = Personalizer(bundle, profile=tmp_path / "p", threads=1)
        p.add_samples(images, ["a", "b", "c"] * 2)
        assert p.fit(epochs=1)[0]["lr"] == 0.01
        assert _all_finite_scores(p.predict(images[0]))
        p.close()
        return
    with pytest.raises(EdgetuneError):
        p = Personalizer(bundle, profile=tmp_path / "p", threads=1)
        p.add_samples(images, ["a", "b", "c"] * 2)
        p.fit(epochs=1)
        p.predict(images[0])
