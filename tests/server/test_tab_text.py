"""edgetune.js with a text bundle (MiniLM int8, head only) in headless Chromium
(Playwright) against the Python runtime, on Debian fortunes quotations and sentences
that stress the tokenizer: the same token ids, mask and truncation as Python's preparer
(the bundle's tokenizer.json read by @huggingface/tokenizers), features within 1e-4,
the same open-set answers and predictions before and after training, parameters
within 1e-3, an exported model that agrees with Python's; empty texts refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
ort = pytest.importorskip("onnxruntime")

from edgetune.runtime.personalizer import Personalizer  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "text")]
import text_data  # noqa: E402
from tab_parity import (  # noqa: E402
    BATCH,
    EPOCHS,
    FIT_BETWEEN_PREDICTIONS,
    VALUES,
    check_open_set,
    check_training,
    orders,
    run_in_tab,
)
from web_browser import NEEDS_CHROMIUM, playwright_driver  # noqa: E402

del sys.path[:2]

pytestmark = NEEDS_CHROMIUM
pw = playwright_driver  # the fixture


HARD = [
    "Café au lait — naïve résumé, s'il vous plaît!",
    "日本語のテキストと中文字符 mixed with English.",
    "Emoji 🤖🎉 and symbols: ©®™ ½ → ∞ ≠ ≤",
    "tabs\tand\nnewlines\r\nand\u3000ideographic\u00a0no-break\x1cfile-separator\x85next-line",
    "Straße ǅemal İstanbul ﬁne ﬂight",
    " ".join(["Debugging is twice as hard as writing the code in the first place."] * 20),
]


def test_text_bundles_in_the_tab_as_in_python(pw, tmp_path):
    train, heldout = text_data.split(seed=4)
    texts, labels = [t for t, _ in train], [y for _, y in train]
    tests = [t for t, _ in heldout[::10]] + HARD
    python = Personalizer(text_data.text_bundle(), profile=tmp_path / "py", seed=0)
    rows = python_rows = np.stack([python.preparer.encode(t)[0] for t in texts + tests])
    python.add_samples(texts, labels)
    X = python.store.features_and_labels()[0]
    before = python.predict_many(tests, open_set=True)
    python.fit(epochs=EPOCHS, batch_size=BATCH, early_stop=False)
    after = python.predict_many(tests, open_set=True)
    result = run_in_tab(pw, text_data.text_bundle(), tmp_path, f"""
        const p = await Personalizer.open("/bundle/", {{ profile: "text" }});
        const input = (t) => t;
        const rows = [];
        for (const t of [...arg.texts, ...arg.tests]) {{
            rows.push(Array.from(await p.prepare(t), Number));
        }}
        const features = [];
        for (const [i, t] of arg.texts.entries()) {{
            const prepared = await p.features(t);  // what addSample does
            features.push(Array.from(prepared.features));
            await p.addPrepared(prepared, arg.labels[i]);
        }}
        {FIT_BETWEEN_PREDICTIONS}
        const exported = [];  // the exported model, run in the tab on Python's rows
        {{
            const ort = await import("/static/ort/ort.wasm.min.mjs");
            const session = await ort.InferenceSession.create(await p.exportOnnx());
            const L = arg.rows[0].length / 2;
            for (const row of arg.rows) {{
                const ids = BigInt64Array.from(row.slice(0, L), BigInt);
                const mask = BigInt64Array.from(row.slice(L), BigInt);
                const out = await session.run({{
                    input_ids: new ort.Tensor("int64", ids, [1, L]),
                    attention_mask: new ort.Tensor("int64", mask, [1, L]) }});
                exported.push(Array.from(out.probabilities.data));
            }}
            await session.release();
        }}
        const file = new File([arg.tests[0]], "quote.txt", {{ type: "text/plain" }});
        const fromFile = Array.from(await p.prepare(file), Number);
        const refused = [];
        for (const t of ["", " \\n\\t\\u3000 "]) {{
            try {{ await p.predict(t); }} catch (e) {{ refused.push(e.code); }}
        }}
        return {{ rows, features, before, after, refused, exported, fromFile, values: {VALUES},
                 step: p.step, classes: p.classes() }};
    """, {"texts": texts, "labels": labels, "tests": tests, "epochs": EPOCHS,
          "batch": BATCH, "orders": orders(len(texts)),
          "rows": python_rows[len(texts):].reshape(len(tests), -1).tolist()})
    got = np.asarray(result["rows"], np.int64).reshape(rows.shape)
    assert np.array_equal(got, rows)  # token ids and mask
    diff = float(np.abs(np.asarray(result["features"], np.float32) - X).max())
    print(f"text features: max |tab - python| = {diff:.2e}")
    assert diff < 1e-4
    assert [r["truncated"] for r in result["after"]] == [r["truncated"] for r in after]
    assert sum(r["truncated"] for r in after) == 1  # the long one
    # 8 quotations per topic are so diverse that every threshold (1.4-1.8) is beyond any
    # distance (at most about 1.1): nothing is unknown here, in Python as in the tab
    check_open_set(result["before"], before, unknowns=False)
    check_open_set(result["after"], after, unknowns=False)
    for a, b in zip(result["after"], after):
        assert a["source"] == b["source"] == "head"
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in b["scores"]) < 1e-3
    check_training(python, result)
    assert result["refused"] == ["bad_input", "bad_input"]
    assert result["fromFile"] == result["rows"][len(texts)]  # a .txt file: one example
    python.export(tmp_path / "py.onnx")  # the tab's export matches Python's on the same rows
    session = ort.InferenceSession(str(tmp_path / "py.onnx"))
    names = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    want = session.run(["probabilities"], python.preparer.feeds(python_rows[len(texts):], names))[0]
    assert np.abs(np.asarray(result["exported"], np.float32) - want).max() < 1e-4
    python.close()
