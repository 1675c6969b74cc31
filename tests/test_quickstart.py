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


def test_readme_layout_matches_the_tree():
    """Every module of the package is named in the README's layout, and every file the
    layout names exists."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout.*?```\n(.*?)```", readme, re.S).group(1)
    named = set(re.findall(r"([a-z_]+\.py)\b", block))
    package = ROOT / "src" / "edgetune"
    modules = {p.name for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and "examples" not in p.parts}
    assert modules - named == set(), f"modules missing from the README layout: {modules - named}"
    assert named - modules == set(), f"the README layout names missing files: {named - modules}"
    folders = {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {f for f in folders if f != "examples"} <= set(re.findall(r"([a-z_]+)/", block))
