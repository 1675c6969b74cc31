"""The bundle format (v1): a directory of plain ONNX graphs, initial parameters and a
manifest that says how to run them. See docs/bundle-format.md.

This module is read on the device, so it imports no build-time library: a bundle is a
manifest (a dict) plus the bytes of its files. `Bundle.load` verifies everything
before anything runs: the manifest's structure and version, every file's sha256, that
no file escapes the directory, that no ONNX graph points at external data outside
it, and that the initial parameters match their declared shapes. A file verified
before and unchanged since (same inode, size and modification time: edgetune.verified)
skips the hash and the scan when the caller passes the record (`verified=`).

    bundle = Bundle.load("model.edgetune")
    bundle.graph("train")            # verified bytes for onnxruntime.InferenceSession
    bundle.initial_values()          # {"head.weight": array, ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors

from edgetune.errors import BundleError
from edgetune.files import fsync_dir, temporary_dir
from edgetune.inputs import known_kinds, unknown_kind_message
from edgetune.onnx_scan import ProtobufError, external_data_locations, fields
from edgetune.verified import VerifiedFiles

FORMAT = "edgetune.bundle"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_ELEMENTS = 1 << 28  # one declared tensor; larger is a hostile or broken manifest
REQUIRED_GRAPHS = ("base", "train", "infer")
GRAPH_ROLES = {
    "base": ({"image"}, {"features"}),
    "train": ({"features", "labels", "sample_weight", "lr", "step"}, {"loss"}),
    "train_epoch": ({"features", "labels", "sample_weight", "lr", "step"}, {"losses"}),
    "infer": ({"features"}, {"probabilities"}),
}
# A text base takes token ids and their mask (graph roles = the manifest's input fields).
TEXT_BASE_ROLES = ("input_ids", "attention_mask")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- manifest validation ---------------------------------------------------------------
def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise BundleError(f"manifest.json: {where} {what}")


def _check_str(obj: Mapping, key: str, where: str) -> str:
    value = obj.get(key)
    _need(isinstance(value, str) and value != "", f"{where}.{key}", "must be a non-empty string")
    return value


def _check_shape(shape, where: str, allow_null: bool = False) -> None:
    _need(isinstance(shape, list) and len(shape) <= 8, where, "must be a list of at most 8 dims")
    elements = 1
    for dim in shape:
        ok = (isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < 2**31) or \
             (isinstance(dim, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dim)) or \
             (dim is None and allow_null)
        _need(bool(ok), where, f"has a bad dimension {dim!r} (an int, a symbolic name"
              f"{' or null' if allow_null else ''})")
        if isinstance(dim, int):
            elements *= dim
    _need(elements <= MAX_ELEMENTS, where, f"declares {elements} elements; at most "
          f"{MAX_ELEMENTS} are allowed")


def _numeric_dtype(name: str) -> bool:
    try:
        return np.dtype(name).kind in "biuf"
    except Exception:  # numpy raises TypeError, ValueError or SyntaxError on odd strings
        return False


def _check_file_entry(entry, where: str) -> None:
    _need(isinstance(entry, dict), where, "must be an object")
    name = _check_str(entry, "file", where)
    _need("/" not in name and "\\" not in name and name not in (".", "..")
          and not name.startswith(".") and "\x00" not in name and len(name) <= 200,
          f"{where}.file", f"must be a plain file name inside the bundle, got {name!r}")
    _need(isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"])),
          f"{where}.sha256", "must be 64 lowercase hex digits")


def _check_tensor_specs(specs, where: str, keys: tuple[str, ...]) -> None:
    _need(isinstance(specs, list), where, "must be a list")
    names = set()
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        _need(isinstance(spec, dict), at, "must be an object")
        name = _check_str(spec, "name", at)
        _need(name not in names, at, f"repeats the name {name!r}")
        names.add(name)
        for key in keys:
            _check_str(spec, key, at)
        _need(spec.get("dtype") == "float32", f"{at}.dtype", "must be \"float32\"")
        _check_shape(spec.get("shape"), f"{at}.shape")


def validate_manifest(manifest) -> None:
    """Raise BundleError naming the first problem in a manifest (a parsed JSON value)."""
    _need(isinstance(manifest, dict), "the top level", "must be a JSON object")
    _need(manifest.get("format") == FORMAT, "format", f"must be {FORMAT!r}; this is not an "
          f"edgetune bundle")
    version = manifest.get("version")
    _need(isinstance(version, int) and not isinstance(version, bool) and version >= 1,
          "version", "must be a positive integer")
    if version > VERSION:
        raise BundleError(f"bundle format version {version} is newer than this edgetune "
                          f"reads (version {VERSION}); upgrade edgetune to use it")
    inp = manifest.get("input")
    _need(isinstance(inp, dict), "input", "must be an object")
    if "kind" in inp:  # absent: an image bundle (edgetune.inputs.kind_of)
        _check_str(inp, "kind", "input")
        if inp["kind"] not in known_kinds():
            raise BundleError(unknown_kind_message(inp["kind"]))
    _check_str(inp, "name", "input")
    _check_str(inp, "dtype", "input")
    _need(_numeric_dtype(inp["dtype"]), "input.dtype", "must name a numeric dtype, e.g. uint8")
    _check_shape(inp.get("shape"), "input.shape", allow_null=True)
    _need(inp.get("layout") != "NHWC" or len(inp["shape"]) == 4, "input.shape",
          "must be [batch, height, width, channels] for layout NHWC")
    feats = manifest.get("features")
    _need(isinstance(feats, dict), "features", "must be an object")
    _check_shape(feats.get("shape"), "features.shape")
    graphs = manifest.get("graphs")
    _need(isinstance(graphs, dict), "graphs", "must be an object")
    for role in REQUIRED_GRAPHS:
        _need(role in graphs, "graphs", f"has no {role!r} graph")
    for role, entry in graphs.items():
        where = f"graphs.{role}"
        _check_file_entry(entry, where)
        for side in ("inputs", "outputs"):
            io = entry.get(side)
            _need(isinstance(io, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in io.items()),
                  f"{where}.{side}", "must map role names to tensor names")
        wanted_in, wanted_out = GRAPH_ROLES.get(role, (set(), set()))
        if role in ("base", "base_int8") and inp.get("kind") == "text":
            wanted_in = set(TEXT_BASE_ROLES)
        missing = (wanted_in - set(entry["inputs"])) | (wanted_out - set(entry["outputs"]))
        _need(not missing, where, f"lacks the roles {sorted(missing)}")
    _check_tensor_specs(manifest.get("params"), "params",
                        ("train_input", "train_output", "infer_input"))
    _need(len(manifest["params"]) > 0, "params", "must list at least one parameter")
    _check_tensor_specs(manifest.get("state", []), "state", ("train_input", "train_output",
                                                             "param"))
    names = {spec["name"] for spec in manifest["params"]}
    for i, spec in enumerate(manifest.get("state", [])):
        _need(spec["param"] in names, f"state[{i}].param", f"names no parameter: "
              f"{spec['param']!r}")
    _check_file_entry(manifest.get("init"), "init")
    extra = manifest.get("files", {})
    _need(isinstance(extra, dict), "files", "must map names to {file, sha256} objects")
    for key, entry in extra.items():
        _check_file_entry(entry, f"files.{key}")
    if inp.get("kind") == "text":
        tokenizer = _check_str(inp, "tokenizer", "input")
        _need(any(e["file"] == tokenizer for e in extra.values()), "input.tokenizer",
              f"names {tokenizer!r}, which is not a file of the bundle (files.*.file)")


# -- the bundle --------------------------------------------------------------------------
class Bundle:
    """A manifest plus the bytes of every file it names; loaded, built or saved whole."""

    def __init__(self, manifest: dict, files: Mapping[str, bytes], path: Path | None = None):
        self.manifest = manifest
        self.files = dict(files)
        self.path = path
        # file name -> (the bytes read, their sha256, the file's identity) for files read
        # by `load`: `save` reuses the hash and hard-links the file while both still hold.
        self._sources: dict[str, tuple[bytes, str, Path, tuple]] = {}
        self._verified: VerifiedFiles | None = None  # for files read again (`_bytes`)

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verified: VerifiedFiles | None | bool = False
             ) -> Bundle:
        """Read and verify a bundle directory; raise BundleError on any problem.
        verified: the record of files verified before, to trust unchanged files
        (True: the cache's, as the runtime's profiles do; False: hash every file and
        open nothing outside the bundle directory)."""
        if verified is True:
            verified = VerifiedFiles()
        verified = verified or None
        root = Path(path)
        manifest = cls.read_manifest(root)
        files, sources, known = {}, {}, {}
        for where, entry in cls._file_entries(manifest):
            data, identity, known[entry["file"]] = cls._read_verified(
                root, entry, where, verified, lazy=where.startswith("graphs."))
            if data is not None:
                files[entry["file"]] = data
            sources[entry["file"]] = (data, entry["sha256"], root / entry["file"], identity)
        bundle = cls(manifest, files, root.resolve())
        bundle._sources = sources
        bundle._verified = verified
        for role, entry in manifest["graphs"].items():
            bundle._check_external_data(role, entry["file"], root, known[entry["file"]])
        bundle._check_initial_values()
        if verified is not None:
            verified.flush()
        return bundle

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict:
        """The validated manifest of a bundle directory, without reading its files."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root} is not a bundle directory (expected NAME.edgetune/ "
                              f"with {MANIFEST}); build one with `edgetune convert`")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{root} has no {MANIFEST}; it is not an edgetune bundle")
        if not manifest_path.resolve().is_relative_to(root.resolve()):
            raise BundleError(f"{manifest_path} resolves outside the bundle directory")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{manifest_path} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except (ValueError, RecursionError) as e:  # also too deep, or a too long integer
            raise BundleError(f"{manifest_path} is not valid JSON: {e}") from None
        validate_manifest(manifest)
        return manifest

    @staticmethod
    def _file_entries(manifest: dict):
        for role, entry in manifest["graphs"].items():
            yield f"graphs.{role}", entry
        yield "init", manifest["init"]
        for key, entry in manifest.get("files", {}).items():
            yield f"files.{key}", entry

    @staticmethod
    def _read_verified(root: Path, entry: dict, where: str,
                       verified: VerifiedFiles | None = None, lazy: bool = False
                       ) -> tuple[bytes | None, tuple, dict]:
        """The file's verified bytes, its identity (device, inode, size, mtime) and what
        `verified` knows of it ({} for a file just hashed, recorded as it passes).
        lazy: a trusted graph whose scan is known is not read (bytes None): the base is
        13 MB that a session from its saved optimized form (runtime.optimized) never
        needs; `graph()` reads it when asked."""
        file = root / entry["file"]
        real_root = root.resolve()
        try:
            if not file.resolve().is_relative_to(real_root):
                raise BundleError(f"{where}: {entry['file']} resolves outside the bundle "
                                  f"directory")
            if not file.is_file():
                raise BundleError(f"{where}: {entry['file']} is missing from {root}")
            with open(file, "rb") as f:
                before = os.fstat(f.fileno())
                known = (verified.trusted(before, entry["sha256"]) if verified is not None
                         else None)
                if known is not None and lazy and isinstance(known.get("external"), list):
                    return None, _identity(before), known
                data = f.read()
                st = os.fstat(f.fileno())
        except OSError as e:
            raise BundleError(f"{where}: cannot read {entry['file']!r} ({e})") from None
        if known is not None and _identity(st) == _identity(before):  # unchanged meanwhile
            return data, _identity(st), known
        if sha256(data) != entry["sha256"]:
            raise BundleError(f"{where}: sha256 of {entry['file']} does not match the manifest; "
                              f"the file changed after the bundle was written (re-copy or "
                              f"rebuild the bundle)")
        if verified is not None:
            verified.remember(st, entry["sha256"], None)
        return data, _identity(st), {}

    def _check_external_data(self, role: str, name: str, root: Path,
                             known: dict | None = None) -> None:
        """No external data outside the bundle; `known`: what the record of verified
        files kept of an earlier scan of the same bytes (then not scanned again)."""
        locations = (known or {}).get("external")
        if not isinstance(locations, list) or not all(isinstance(x, str) for x in locations):
            try:
                locations = external_data_locations(self.files[name])
            except ProtobufError as e:
                raise BundleError(f"graphs.{role}: {name} is not a valid ONNX file "
                                  f"({e})") from None
            if known is not None and self._verified is not None:
                self._verified.annotate(self._sources[name][3], {"external": locations})
        real_root = root.resolve()
        for location in locations:
            try:
                inside = (root / location).resolve().is_relative_to(real_root)
            except (OSError, ValueError):  # a NUL byte, a name too long for the system
                inside = False
            if not location or os.path.isabs(location) or not inside:
                raise BundleError(f"graphs.{role}: {name} refers to external data "
                                  f"{location!r} outside the bundle directory; refusing to "
                                  f"load it")

    def _check_initial_values(self) -> None:
        values = self.initial_values()
        for spec in self.manifest["params"]:
            if spec["name"] not in values:
                raise BundleError(f"init: {self.manifest['init']['file']} has no value for "
                                  f"parameter {spec['name']!r}")
            declared, actual = spec["shape"], values[spec["name"]].shape
            if len(declared) != len(actual) or any(isinstance(d, int) and d != a
                                                   for d, a in zip(declared, actual)):
                raise BundleError(f"init: {spec['name']!r} has shape {list(actual)}, the "
                                  f"manifest declares {declared}")

    def initial_values(self) -> dict[str, np.ndarray]:
        name = self.manifest["init"]["file"]
        try:
            return load_safetensors(self.files[name])
        except Exception as e:  # safetensors raises its own error types
            raise BundleError(f"init: {name} is not a valid safetensors file ({e})") from None

    # -- using ----------------------------------------------------------------------------
    def graph(self, role: str) -> bytes:
        """The verified ONNX bytes of a graph role (base, train, train_epoch, infer, ...)."""
        graphs = self.manifest["graphs"]
        if role not in graphs:
            raise BundleError(f"this bundle has no {role!r} graph; it has {sorted(graphs)}")
        return self._bytes(graphs[role], f"graphs.{role}")

    def release(self, role: str) -> None:
        """Drop a graph's bytes from memory once a session holds what it needs (the base:
        13 MB less at the peak of feature extraction); `graph(role)` reads and verifies
        them again from the bundle directory. No-op for a bundle not on disk."""
        if self.path is not None and self.has_graph(role):
            name = self.manifest["graphs"][role]["file"]
            self.files.pop(name, None)
            self._sources.pop(name, None)

    def _bytes(self, entry: dict, where: str) -> bytes:
        data = self.files.get(entry["file"])  # one lookup: another thread may release it
        if data is not None:
            return data
        if self.path is None:
            raise BundleError(f"{where}: {entry['file']} is not in memory and the bundle has "
                              f"no directory to read it from")
        return self._read_verified(self.path, entry, where, self._verified)[0]

    def file(self, name: str) -> bytes:
        """The verified bytes of a file of the bundle listed under the manifest's
        ``files`` (e.g. ``tokenizer.json`` of a text bundle), or of a graph or the init
        file; BundleError for a name the manifest does not list."""
        for where, entry in self._file_entries(self.manifest):
            if entry["file"] == name:
                return self._bytes(entry, where)
        raise BundleError(f"the bundle has no file {name!r}")

    def has_graph(self, role: str) -> bool:
        return role in self.manifest["graphs"]

    def io(self, role: str) -> tuple[dict[str, str], dict[str, str]]:
        entry = self.manifest["graphs"][role]
        return entry["inputs"], entry["outputs"]

    @property
    def params(self) -> list[dict]:
        return self.manifest["params"]

    @property
    def state(self) -> list[dict]:
        return self.manifest.get("state", [])

    def describe(self) -> dict:
        """What the bundle holds, for `edgetune inspect`."""
        m = self.manifest
        graphs = {}
        for role, entry in m["graphs"].items():
            data = self._bytes(entry, f"graphs.{role}")
            graphs[role] = {"file": entry["file"], "bytes": len(data), "sha256": entry["sha256"],
                            "nodes": _count_nodes(data), "inputs": entry["inputs"],
                            "outputs": entry["outputs"]}
        params = [{"name": p["name"], "shape": p["shape"],
                   "elements": int(np.prod([d for d in p["shape"] if isinstance(d, int)]))}
                  for p in m["params"]]
        return {"path": str(self.path) if self.path else None, "format": m["format"],
                "version": m["version"], "created_by": m.get("created_by"),
                "opset": m.get("opset"), "input": m["input"], "features": m["features"],
                "trainable": m.get("trainable"), "head": m.get("head"), "loss": m.get("loss"),
                "optimizer": m.get("optimizer"), "classes": m.get("classes"),
                "graphs": graphs, "params": params, "state_slots": len(self.state),
                "total_bytes": sum(graphs[w[len("graphs."):]]["bytes"] if w.startswith("graphs.")
                                   else len(self._bytes(e, w)) for w, e in self._file_entries(m)),
                "verified": True}

    # -- writing --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bundle directory atomically (a temp dir renamed into place)."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise BundleError(f"{target} exists; pass overwrite=True (--force) to replace it")
        entries = {e["file"]: (where, e) for where, e in self._file_entries(self.manifest)}
        for name, (where, entry) in entries.items():  # released: read them again
            if name not in self.files and not self._unread(name):
                self.files[name] = self._bytes(entry, where)
        unchanged = {name for name, (data, *_) in self._sources.items()
                     if self.files.get(name) is data}  # data None: trusted, never read
        for _, entry in self._file_entries(self.manifest):
            name = entry["file"]
            entry["sha256"] = (self._sources[name][1] if name in unchanged
                               else sha256(self.files[name]))
        validate_manifest(self.manifest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_dir(target)
        try:
            for name in dict.fromkeys([*self.files, *entries, MANIFEST]):
                if name in unchanged and self._link(name, tmp / name):
                    continue
                data = (json.dumps(self.manifest, indent=2).encode() if name == MANIFEST
                        else self.files.get(name))
                if data is None:  # not read at load, and cannot be linked: read it now
                    data = self._bytes(entries[name][1], entries[name][0])
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                _remove_tree(old)
                os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            if old is not None:
                _remove_tree(old)
        except BaseException:
            _remove_tree(tmp)
            raise
        self.path = target.resolve()
        return target

    def at(self, path: str | os.PathLike) -> Bundle:
        """This verified bundle, its files read from `path` from now on (a copy `save`
        wrote); files not read yet are verified as they are read."""
        moved = Bundle(self.manifest, self.files, Path(path).resolve())
        moved._verified = self._verified
        return moved

    @property
    def verified_files(self) -> VerifiedFiles | None:
        """The record of verified files this bundle was loaded with (None: every file
        hashed)."""
        return self._verified

    def _unread(self, name: str) -> bool:
        """Whether `load` left this file unread (trusted, read when used)."""
        return name in self._sources and self._sources[name][0] is None

    def _link(self, name: str, to: Path) -> bool:
        """Hard-link the file `load` read (already on disk, no copy), if it is still the
        very file that was read and verified; False: write the bytes instead."""
        _, _, source, identity = self._sources[name]
        try:
            os.link(source, to)
            if _identity(os.stat(to)) == identity:
                return True
            to.unlink()
        except OSError:  # another file system, no hard links, or the source is gone
            to.unlink(missing_ok=True)
        return False


def _remove_tree(path: Path) -> None:
    import shutil  # rarely needed: not imported with the runtime

    shutil.rmtree(path, ignore_errors=True)


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _count_nodes(model: bytes) -> int:
    for number, wire, value in fields(model):
        if number == 7 and wire == 2:  # ModelProto.graph
            return sum(1 for n, w, _ in fields(value) if n == 1 and w == 2)
    return 0
