"""The README's quick start stays true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_commands_exist_in_makefile_and_ci():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_run_example_trains_and_generalizes():
    """What `make run` runs: build graphs, train on real digits, score held-out ones."""
    from edgetune.examples.quickstart import main

    result = main(epochs=30)
    assert result["accuracy"] > 0.85
    assert result["loss"] < 0.3
