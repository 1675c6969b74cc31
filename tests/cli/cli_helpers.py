"""CLI tests on real data: scikit-learn's digits rendered as 64x64 PNG files, trained
with a tiny image base (tests/conftest.py) so every command runs in a second."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetune.cli import main

EXE = Path(sys.executable).with_name("edgetune")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_base

    from edgetune.converter.convert import convert

    root = tmp_path_factory.mktemp("bundle")
    built = convert(tiny_base(root / "tiny.onnx", size=64, features=16), "softmax", "adam")
    return str(built.save(root / "tiny.edgetune"))


def digit_folder(root: Path, digits=(0, 1), per_class: int = 6, offset: int = 0) -> Path:
    """DIR/<digit name>/<i>.png: real handwritten digits, 8x8 scaled to 64x64 RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit in digits:
        folder = root / names[digit]
        folder.mkdir(parents=True, exist_ok=True)
        picked = np.flatnonzero(data.target == digit)[offset:offset + per_class]
        for i in picked:
            pixels = (data.images[i] * 255 / 16).astype(np.uint8)
            image = Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST)
            image.convert("RGB").save(folder / f"{i}.png")
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
    """A profile trained on digits 0 and 1; returns (profile, data folder)."""
    data = digit_folder(tmp_path / "data")
    profile = tmp_path / "profile"
    code, out, err = run(capsys, "train", bundle, "--data", data, "--profile", profile,
                         "--epochs", "20")
    assert code == 0, (out, err)
    return profile, data
