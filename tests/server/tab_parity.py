"""Shared by the tab's parity tests (test_tab_audio.py, test_tab_text.py): edgetune.js
run in a page through page.evaluate, and the checks against the Python runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

EPOCHS, BATCH = 15, 8
IMPORT = """const { Personalizer } = await import("/static/edgetune.js");"""


def js(page, body: str, arg=None):
    return page.evaluate(f"async (arg) => {{ {IMPORT} {body} }}", arg)


def orders(n: int) -> list[list[int]]:
    rng = np.random.default_rng(0)  # what Personalizer(seed=0) draws: one order per epoch
    return [rng.permutation(n).tolist() for _ in range(EPOCHS)]


def check_training(python, result) -> None:
    assert result["classes"] == python.classes()
    assert result["step"] == python.step
    for name, value in python._values.items():
        got = np.asarray(result["values"][name]["data"], np.float32).reshape(value.shape)
        diff = float(np.abs(got - value).max())
        print(f"parameters {name}: max |tab - python| = {diff:.2e}")
        assert diff < 1e-3, name


def check_open_set(mine: list[dict], theirs: list[dict], unknowns: bool = True) -> None:
    if unknowns:  # else the rule cannot reject here (text: see the test)
        assert any(t["unknown"] for t in theirs) and not all(t["unknown"] for t in theirs)
    for a, b in zip(mine, theirs):
        assert (a["label"], a["unknown"], a["class"]) == (b["label"], b["unknown"], b["class"])
        assert abs(a["distance"] - b["distance"]) < 1e-4
        assert abs(a["threshold"] - b["threshold"]) < 1e-5


def check_export(python, model: bytes, tmp_path: Path, feeds: dict) -> None:
    """The model exported in the tab and Python's agree on `feeds`, with the same metadata."""
    python.export(tmp_path / "py.onnx")
    (tmp_path / "js.onnx").write_bytes(model)
    out = {}
    for which in ("py", "js"):
        session = ort.InferenceSession(str(tmp_path / f"{which}.onnx"))
        out[which] = session.run(["probabilities"], feeds)[0]
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["edgetune.classes"]) == python.classes()
        assert json.loads(meta["edgetune.input"])["kind"] == python.preparer.kind
    assert np.abs(out["py"] - out["js"]).max() < 1e-4
    assert (out["py"].argmax(1) == out["js"].argmax(1)).all()


VALUES = """Object.fromEntries(Object.entries(p._values).map(
    ([k, t]) => [k, { dims: t.dims, data: Array.from(t.data) }]))"""
