"""Shared by the tab's parity tests (test_tab_audio.py, test_tab_text.py): edgetune.js
run in a page of the real server through page.evaluate, and the checks against the
Python runtime. Import it with this folder on sys.path (it imports web_browser)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from web_browser import browser, page_of, running

from edgetune.runtime.shuffle import Shuffle

EPOCHS, BATCH = 15, 8
IMPORT = """const { Personalizer } = await import("/static/edgetune.js");"""


def js(page, body: str, arg=None):
    return page.evaluate(f"async (arg) => {{ {IMPORT} {body} }}", arg)


def run_in_tab(pw, bundle, tmp_path: Path, body: str, arg) -> dict:
    """What `body` returns, run (as js) in a page of the real server on `bundle`, in
    server mode so that the page itself opens no Personalizer; no uncaught error."""
    with running(bundle, tmp_path / "server") as (server, _), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        result = js(page, body, arg)
        assert not errors
    return result


# JavaScript, after a Personalizer `p` with samples and an `input(x)` of arg.tests' items:
# `before` and `after` are the open-set predictions of arg.tests around a fit with arg's
# epochs, batch and orders (Python's: orders(n)) and no early stop
FIT_BETWEEN_PREDICTIONS = """
            const predictAll = async () => {
                const out = [];
                for (const x of arg.tests) out.push(await p.predict(input(x), { openSet: true }));
                return out;
            };
            const before = await predictAll();
            await p.fit({ epochs: arg.epochs, batchSize: arg.batch, earlyStop: false,
                          orders: arg.orders });
            const after = await predictAll();"""


def orders(n: int, epochs: int = EPOCHS) -> list[list[int]]:
    """The rows' order in each epoch, as Personalizer(seed=0) draws them (fit.js draws
    the same from seed 0; passed anyway, so a parity failure cannot be an order's)."""
    shuffle = Shuffle(0)
    return [shuffle.permutation(n).tolist() for _ in range(epochs)]


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
