"""CLI tests on real data: crops of scikit-image's photos as 64x64 PNG files, trained
with a tiny image base (tests/conftest.py) so every command runs in a second."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from edgetune.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/conftest.py helpers

EXE = Path(sys.executable).with_name("edgetune")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    from conftest import tiny_base

    from edgetune.converter.convert import convert

    root = tmp_path_factory.mktemp("bundle")
    built = convert(tiny_base(root / "tiny.onnx", size=64, features=16), "softmax", "adam")
    return str(built.save(root / "tiny.edgetune"))


def image_folder(root: Path, classes=("chelsea", "coffee"), per_class: int = 6,
                 seed: int = 0, size: int = 64, suffix: str = ".png") -> Path:
    """DIR/<class>/<i><suffix>: real photos (random size x size crops of scikit-image's
    pictures, tests/conftest.py photo_crops), one class per picture."""
    from conftest import photo_crops
    from PIL import Image

    images, labels = photo_crops(per_class, size=size, seed=seed, classes=classes)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{seed}-{i}{suffix}")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    """The command in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out, parse_constant=_no_constant), err


def _no_constant(name):
    raise AssertionError(f"JSON output holds {name}")


def tree_bytes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, except SQLite's own -wal/-shm files."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture
def trained(bundle, tmp_path, capsys):
    """A profile trained on two photos; returns (profile, data folder)."""
    data = image_folder(tmp_path / "data")
    profile = tmp_path / "profile"
    code, out, err = run(capsys, "train", bundle, "--data", data, "--profile", profile,
                         "--epochs", "20")
    assert code == 0, (out, err)
    return profile, data
