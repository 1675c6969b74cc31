"""The import rules between edgetune's layers, checked on the real source tree.

- The shared layer (bundle format, errors, input preparers, file and path helpers)
  imports neither the build side (converter, autodiff) nor the device side (runtime)
  nor the applications (server, fleet, cli).
- The build side never imports the runtime; the runtime never imports the build side.
- Nothing under ``edgetune.runtime`` (nor what it imports) imports torch, tensorflow,
  onnx, onnxscript or onnx_ir.
- ``python -m edgetune.server`` does not go through the CLI module; nothing imports it.
- No import circle anywhere (function-level imports count: they are circles too).

Each rule is a function over an import graph, so the tests below also show that each
rule fails on a synthetic graph that breaks it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import edgetune

SRC = Path(edgetune.__file__).parent
FORBIDDEN_ON_DEVICE = ("torch", "tensorflow", "onnx", "onnxscript", "onnx_ir")

SHARED = ("edgetune", "edgetune.bundle", "edgetune.errors", "edgetune.onnx_scan",
          "edgetune.hyperparams", "edgetune.inputs", "edgetune.files", "edgetune.paths",
          "edgetune.names", "edgetune.defaults", "edgetune.verified")
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "shared": set(),
    "autodiff": {"shared"},
    "converter": {"shared", "autodiff"},
    "runtime": {"shared"},
    "fleet": {"shared", "runtime"},
    "server": {"shared", "runtime", "converter"},  # the converter: to build the default bundle
    "examples": {"shared", "runtime", "converter", "autodiff"},
    "cli": {"shared", "runtime", "converter", "autodiff", "server", "fleet"},
}


def layer_of(module: str) -> str | None:
    """The layer of an edgetune module (None for third-party modules)."""
    if any(module == s or module.startswith(s + ".") for s in SHARED[1:]) \
            or module == "edgetune":
        return "shared"
    parts = module.split(".")
    if parts[0] != "edgetune":
        return None
    return {"cli": "cli", "__main__": "cli"}.get(parts[1], parts[1])


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source`` (at any depth), relative ones
    resolved against ``package``; ``from X import Y`` yields X and X.Y."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if name in ("__import__", "import_module"):
                found.append((node.lineno, str(node.args[0].value)))
    return found


def import_graph(root: Path = SRC) -> dict[str, dict[str, int]]:
    """edgetune module -> {imported edgetune module: line} over the source tree."""
    files = {module_name(f, root): f for f in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for line, target in imports_of(path.read_text(encoding="utf-8"), package):
            if target.split(".")[0] != "edgetune":
                edges.setdefault(target, line)  # third-party: kept for the device rule
                continue
            while target not in files and "." in target:  # `from pkg import name`
                target = target.rpartition(".")[0]
            if target != module:
                edges.setdefault(target, line)
    return graph


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, edges in graph.items():
        mine = layer_of(module)
        for target, line in edges.items():
            theirs = layer_of(target)
            if theirs is None or theirs == mine:
                continue
            if theirs not in ALLOWED.get(mine, set()):
                bad.append(f"{module}:{line} imports {target} ({mine} -> {theirs})")
    return bad


def device_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Build-time frameworks imported by the runtime or the shared layer it uses."""
    return [f"{module}:{line} imports {target}"
            for module, edges in graph.items() if layer_of(module) in ("runtime", "shared")
            for target, line in edges.items()
            if target.split(".")[0] in FORBIDDEN_ON_DEVICE]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Import circles among edgetune modules (a package importing its own submodules
    is not one unless a submodule imports the package back)."""
    inner = {m: [t for t in edges if t in graph] for m, edges in graph.items()}
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in inner[node]:
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(inner):
        if node not in state:
            visit(node, [])
    return found


# -- the rules hold on the real tree --------------------------------------------------------
def test_layers_import_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "wrong-way imports:\n" + "\n".join(bad)


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_runtime_and_shared_layer_import_no_build_framework():
    bad = device_violations(import_graph())
    assert not bad, "build-time frameworks on the device side:\n" + "\n".join(bad)


def test_importing_the_runtime_loads_no_build_framework():
    code = (
        "import json, sys, pkgutil, importlib\n"
        "import edgetune.runtime, edgetune.inputs, edgetune.bundle\n"
        "for m in pkgutil.walk_packages(edgetune.runtime.__path__, 'edgetune.runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "for m in pkgutil.walk_packages(edgetune.inputs.__path__, 'edgetune.inputs.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN_ON_DEVICE
           or layer_of(m) in ("converter", "autodiff")]
    assert not bad, f"importing edgetune.runtime loaded {bad}"


def test_python_m_edgetune_server_does_not_load_the_cli():
    code = ("import runpy, sys, json\n"
            "sys.argv = ['edgetune.server', '--help']\n"
            "try:\n"
            "    runpy.run_module('edgetune.server', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(json.dumps('edgetune.cli' in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert "--port" in out.stdout, out.stdout + out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


# -- each rule fails when broken (synthetic graphs) -----------------------------------------
def test_rules_catch_wrong_way_imports():
    graph = {
        "edgetune.bundle": {"edgetune.runtime.errors": 3},            # shared -> runtime
        "edgetune.converter.train_graph": {"edgetune.runtime.trainer": 62},  # build -> device
        "edgetune.runtime.trainer": {"edgetune.converter.heads": 5},  # device -> build
        "edgetune.server.__main__": {"edgetune.cli": 8},              # server -> cli
        "edgetune.runtime.store": {"onnx": 2, "numpy": 1},            # framework on device
        "edgetune.runtime.personalizer": {"edgetune.bundle": 1, "edgetune.errors": 2},  # fine
    }
    bad = layer_violations(graph)
    assert len(bad) == 4, bad
    assert any("edgetune.bundle:3" in b for b in bad)
    assert any("train_graph:62" in b for b in bad)
    assert any("server.__main__:8" in b for b in bad)
    assert device_violations(graph) == ["edgetune.runtime.store:2 imports onnx"]


def test_rules_catch_import_circles():
    graph = {"edgetune.autodiff.rules": {"edgetune.autodiff.traversal": 18},
             "edgetune.autodiff.traversal": {"edgetune.autodiff.rules": 135},
             "edgetune.autodiff.builder": {}}
    assert cycles(graph) == [["edgetune.autodiff.rules", "edgetune.autodiff.traversal",
                              "edgetune.autodiff.rules"]]


def test_scanner_sees_every_form_of_import(tmp_path):
    # A temporary package with each form of import: the graph must contain all of them.
    pkg = tmp_path / "edgetune"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "runtime" / "bad.py").write_text(
        "import onnx\nfrom torch import nn\nfrom ..converter import convert\n"
        "def later():\n    import importlib\n    importlib.import_module('edgetune.cli')\n"
        "    __import__('tensorflow')\n")
    (pkg / "converter").mkdir()
    (pkg / "converter" / "__init__.py").write_text("from . import convert\n")
    (pkg / "converter" / "convert.py").write_text("from edgetune.runtime import bad\n")
    graph = import_graph(pkg)
    edges = graph["edgetune.runtime.bad"]
    assert {"onnx", "torch", "tensorflow", "edgetune.converter.convert",
            "edgetune.cli"} <= set(edges)
    arrows = {b.rsplit("(", 1)[1].rstrip(")") for b in layer_violations(graph)}
    assert arrows == {"runtime -> converter", "runtime -> cli", "converter -> runtime"}
    assert cycles(graph)  # bad -> converter.convert -> bad
