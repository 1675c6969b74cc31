"""edgetune.js with a text bundle trained beyond its head (`trainable="last:1"` on
minilm-fp32: features are each token's activations with the mask as one more column,
layout "tokens+mask"), in headless Chromium against the Python runtime: the same cached
features, the same prototype answers (the masked token mean, prototypes.comparable)
and open-set distances, and after training the last transformer block in the tab's
worker, parameters and predictions close to Python's, on Debian fortunes quotations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

import edgetune as et  # noqa: E402
from edgetune.runtime.personalizer import Personalizer  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "text")]
import tab_parity  # noqa: E402
import text_data  # noqa: E402
from web_browser import NO_CHROMIUM, browser, has_chromium, page_of, running  # noqa: E402

del sys.path[:2]

pytestmark = pytest.mark.skipif(not has_chromium(), reason=NO_CHROMIUM)

PER_CLASS, EPOCHS, BATCH = 3, 3, 8
BLOCK = "base/encoder.layer.5.attention.self.query.weight"
IMPORT = """const { Personalizer } = await import("/static/edgetune.js");"""


@pytest.fixture(scope="module")
def pw():
    with playwright_api.sync_playwright() as p:
        yield p


def test_a_last_block_text_bundle_in_the_tab_as_in_python(pw, tmp_path):
    bundle = et.convert(base="minilm-fp32", head="softmax", classes=len(text_data.TOPICS),
                        trainable="last:1", cache_dir=text_data.session_dir() / "cache")
    path = bundle.save(tmp_path / "last1.edgetune")
    train, heldout = text_data.split(seed=2)
    train = [(t, y) for i, (t, y) in enumerate(train) if i % text_data.PER_CLASS < PER_CLASS]
    texts, labels = [t for t, _ in train], [y for _, y in train]
    tests = [t for t, _ in heldout[::20]]
    orders = tab_parity.orders(len(texts), EPOCHS)

    python = Personalizer(path, profile=tmp_path / "py", seed=0)
    python.add_samples(texts, labels)
    X = python.store.features_and_labels()[0]
    assert X.shape[1:] == (128, 385)
    before = python.predict_many(tests, open_set=True)
    python.fit(epochs=EPOCHS, batch_size=BATCH, early_stop=False)
    after = python.predict_many(tests)
    with running(path, tmp_path / "server") as (server, _), \
            browser(pw, user_data=tmp_path / "u") as ctx:
        page = page_of(ctx, errors := [])
        page.goto(server.url + "?mode=server")
        result = page.evaluate(f"""async (arg) => {{ {IMPORT}
            const p = await Personalizer.open("/bundle/", {{ profile: "last1" }});
            let first = null;
            for (const [i, t] of arg.texts.entries()) {{
                const prepared = await p.features(t);
                if (i === 0) first = Array.from(prepared.features);
                await p.addPrepared(prepared, arg.labels[i]);
            }}
            const before = [];
            for (const t of arg.tests) before.push(await p.predict(t, {{ openSet: true }}));
            await p.fit({{ epochs: arg.epochs, batchSize: arg.batch, earlyStop: false,
                           orders: arg.orders }});
            const after = [];
            for (const t of arg.tests) after.push(await p.predict(t));
            const pick = (k) => Array.from(p._values[k].data);
            return {{ first, before, after, step: p.step,
                     values: Object.fromEntries(arg.names.map((k) => [k, pick(k)])) }};
        }}""", {"texts": texts, "labels": labels, "tests": tests, "epochs": EPOCHS,
                "batch": BATCH, "orders": orders,
                "names": ["head.weight", "head.bias", BLOCK]})
        assert not errors
    diff = float(np.abs(np.asarray(result["first"], np.float32) - X[0].ravel()).max())
    print(f"tokens+mask features: max |tab - python| = {diff:.2e}")
    assert diff < 1e-4
    for a, b in zip(result["before"], before):  # prototypes over the masked token mean
        assert a["source"] == b["source"] == "prototypes"
        assert (a["label"], a["unknown"]) == (b["label"], b["unknown"])
        assert abs(a["distance"] - b["distance"]) < 1e-4
        assert abs(a["threshold"] - b["threshold"]) < 1e-5
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in b["scores"]) < 1e-4
    assert result["step"] == python.step
    for name, values in result["values"].items():
        want = python._values[name].ravel()
        d = float(np.abs(np.asarray(values, np.float32) - want).max())
        print(f"parameters {name}: max |tab - python| = {d:.2e}")
        assert d < 1e-3, name
    assert [a["label"] for a in result["after"]] == [b["label"] for b in after]
    for a, b in zip(result["after"], after):
        assert a["source"] == "head"
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in b["scores"]) < 1e-3
    python.close()
