"""A fit's epoch orders: Python's Shuffle draws what the tab's fit.js draws from the same
seed (so a seeded fit orders its samples alike in both), and each order is a permutation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetune.runtime.shuffle import Shuffle

FIT_JS = (Path(__file__).parents[2] / "src" / "edgetune" / "server" / "static" / "edgetune"
          / "fit.js")
SEEDS, SIZES = (0, 1, 7, 2**31 + 5), (1, 2, 5, 80, 1000)


def _js_orders() -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js (>= 18)")
    script = (f"import('{FIT_JS.as_uri()}').then((m) => {{ const out = {{}};"
              f" for (const s of {list(SEEDS)}) {{ const r = m.mulberry32(s);"
              f" out[s] = {list(SIZES)}.map((n) => m.permutation(n, r)); }}"
              f" console.log(JSON.stringify(out)); }});")
    done = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_python_draws_the_tabs_orders():
    js = _js_orders()
    for seed in SEEDS:
        shuffle = Shuffle(seed)  # one generator across the sizes, as one fit's epochs
        for n, expected in zip(SIZES, js[str(seed)]):
            assert shuffle.permutation(n).tolist() == expected, (seed, n)


def test_orders_are_permutations_and_differ_by_epoch():
    shuffle = Shuffle(3)
    first, second = shuffle.permutation(500), shuffle.permutation(500)
    assert sorted(first.tolist()) == list(range(500)) == sorted(second.tolist())
    assert first.dtype == np.int64 and not np.array_equal(first, second)
    assert Shuffle(3).permutation(500).tolist() == first.tolist()  # seeded
    assert Shuffle(0).permutation(0).tolist() == [] and Shuffle(0).permutation(1).tolist() == [0]
