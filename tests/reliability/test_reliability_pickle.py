"""No pickle anywhere in what edgetune reads from a bundle, a checkpoint or a profile.

Statically: no module of src/edgetune imports a pickle-based loader (pickle, marshal,
shelve, joblib, dill, ...), calls `torch.load` without `weights_only=True` or `np.load`
with `allow_pickle=True`. Behaviourally: files crafted to run code when unpickled (a
pickle, a `torch.save` archive, an object `.npy`) are refused where a checkpoint, the
bundle's parameters or a stored sample is expected, and their code never runs."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_base

import edgetune
from edgetune.bundle import Bundle, BundleError
from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Adam
from edgetune.runtime import (
    CheckpointDir,
    CorruptCheckpointError,
    EdgetuneError,
    load_checkpoint,
    save_checkpoint,
)
from edgetune.runtime.personalizer import Personalizer

SRC = Path(edgetune.__file__).parent
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "pickletools", "marshal", "shelve", "dill",
                  "cloudpickle", "joblib", "copyreg"}


# -- static scan -------------------------------------------------------------------------------
def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for every way `source` could unpickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            name = node.func.attr
            if name == "load" and owner == "torch" and not _is_true(_keyword(node, "weights_only")):
                found.append((node.lineno, "torch.load without weights_only=True"))
            if _is_true(_keyword(node, "allow_pickle")):
                found.append((node.lineno, f"{owner}.{name}(allow_pickle=True)"))
            if name in ("read_pickle", "loads") and owner in ("pd", "pandas", "pickle"):
                found.append((node.lineno, f"{owner}.{name}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "__import__" and node.args and isinstance(
                    node.args[0], ast.Constant) and node.args[0].value in PICKLE_MODULES:
                found.append((node.lineno, f"__import__({node.args[0].value!r})"))
    return found


def test_no_source_file_can_unpickle():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    found = [f"{f.relative_to(SRC.parent)}:{line}: {what}" for f in files
             for line, what in pickle_uses(f.read_text(encoding="utf-8"))]
    assert not found, "pickle-capable loading in edgetune:\n" + "\n".join(found)


def test_the_scan_catches_each_way_to_unpickle():
    source = (
        "import pickle\nimport joblib.numpy_pickle\nfrom marshal import loads\n"
        "import shelve\nimport dill as d\n__import__('cloudpickle')\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)\n"
        "numpy.load(f, mmap_mode='r', allow_pickle=True)\npd.read_pickle(f)\n"
        # allowed:
        "torch.load(f, weights_only=True)\nnp.load(f)\njson.loads(s)\nimport pickled_names\n"
    )
    lines = sorted({line for line, _ in pickle_uses(source)})
    assert lines == list(range(1, 12))


# -- crafted payloads --------------------------------------------------------------------------
class Payload:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payloads(marker: Path) -> dict[str, bytes]:
    evil = Payload(marker)
    out = {
        "pickle": pickle.dumps({"head.weight": evil}),
        "pickle-protocol-0": pickle.dumps(evil, protocol=0),
    }
    buf = io.BytesIO()
    np.save(buf, np.array([evil, 1], dtype=object), allow_pickle=True)
    out["npy-object"] = buf.getvalue()
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3, 8), "evil": evil}, buf)
    out["torch-save"] = buf.getvalue()
    # Sanity: each payload really runs its code when unpickled the unsafe way.
    probe = marker.with_name("probe")
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()
    probe.unlink()
    return out


KINDS = ["pickle", "pickle-protocol-0", "npy-object", "torch-save"]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "a crafted payload was unpickled: its code ran"


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickled_checkpoint_is_refused(tmp_path, marker, kind):
    ckpts = CheckpointDir(tmp_path / "ckpts")
    good = ckpts.save({"W": np.ones((3, 8), np.float32)}, {"n": "1"})
    evil = tmp_path / "ckpts" / "ckpt-000002.safetensors"
    evil.write_bytes(payloads(marker)[kind])
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(evil)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint ckpt-000002"):
        latest = ckpts.latest()
    assert latest.path == good and latest.meta == {"n": "1"}


def test_pickle_bytes_inside_a_valid_checkpoint_stay_bytes(tmp_path, marker):
    """A pickle as a uint8 tensor and as a metadata string: loaded as data, never run."""
    raw = pickle.dumps(Payload(marker))
    path = save_checkpoint(tmp_path / "c.safetensors",
                           {"blob": np.frombuffer(raw, np.uint8)}, {"note": raw.hex()})
    tensors, meta = load_checkpoint(path)
    assert tensors["blob"].tobytes() == raw and meta["note"] == raw.hex()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return convert(tiny_base(root / "tiny.onnx"), SoftmaxClassifier(2),
                   Adam(lr=0.01)).save(root / "t.edgetune")


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickled_bundle_parameter_file_is_refused(bundle_path, tmp_path, marker, kind):
    root = shutil.copytree(bundle_path, tmp_path / "b.edgetune")
    data = payloads(marker)[kind]
    (root / "params.safetensors").write_bytes(data)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["init"]["sha256"] = hashlib.sha256(data).hexdigest()  # a re-signed bundle
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        Bundle.load(root)


@pytest.mark.parametrize("kind", KINDS)
def test_a_profile_with_pickled_checkpoints_or_samples_runs_no_code(bundle_path, tmp_path,
                                                                     marker, kind):
    import sqlite3

    data = payloads(marker)[kind]
    profile = tmp_path / "me"
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    p = Personalizer(bundle_path, profile=profile, threads=1)
    p.add_samples(images, ["a", "b", "c"] * 2)
    p.fit(epochs=2)
    expected = p.predict(images[0])
    p.close()
    # The newest checkpoint replaced by the payload: the previous one is used.
    newest = max((profile / "checkpoints").glob("ckpt-*.safetensors"))
    shutil.copy(newest, newest.with_name("ckpt-999998.safetensors"))
    newest.with_name("ckpt-999999.safetensors").write_bytes(data)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint ckpt-999999"):
        q = Personalizer(profile=profile, threads=1)
    assert q.predict(images[0]) == expected
    q.close()
    # Every checkpoint a payload: a clear error.
    for path in (profile / "checkpoints").glob("ckpt-*.safetensors"):
        path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCheckpointError):
            Personalizer(profile=profile, threads=1)
    # A stored sample's features replaced by the payload: reported, not run.
    shutil.rmtree(profile / "checkpoints")
    with sqlite3.connect(profile / "samples.sqlite") as db:
        db.execute("UPDATE samples SET features=? WHERE id=1", (data,))
    q = Personalizer(profile=profile, threads=1)
    with pytest.raises(EdgetuneError, match="damaged: samples with ids \\[1\\]"):
        q.fit(epochs=1)
    q.close()
