"""The runtime's import rule: no build-time framework is ever imported on the device.

Nothing under ``edgetune.runtime`` (nor what it imports) may import torch, tensorflow,
onnx, onnxscript or onnx_ir; it may not import ``edgetune.converter`` or
``edgetune.autodiff`` either.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import edgetune.runtime

FORBIDDEN = ("torch", "tensorflow", "onnx", "onnxscript", "onnx_ir")
FORBIDDEN_EDGETUNE = ("edgetune.converter", "edgetune.autodiff")
RUNTIME_DIR = Path(edgetune.runtime.__file__).parent


def _forbidden(module: str) -> bool:
    top = module.split(".")[0]
    return top in FORBIDDEN or any(
        module == f or module.startswith(f + ".") for f in FORBIDDEN_EDGETUNE
    )


def test_importing_the_runtime_loads_no_build_framework():
    code = (
        "import json, sys\n"
        "import edgetune.runtime\n"
        "import edgetune.inputs.image, edgetune.runtime.store\n"
        "import edgetune.runtime.checkpoint, edgetune.runtime.prototypes\n"
        "import edgetune.runtime.personalizer, edgetune.runtime.export, edgetune.bundle\n"
        "import edgetune.runtime.trainer, edgetune.onnx_scan, edgetune.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if _forbidden(m)]
    assert not bad, f"importing edgetune.runtime loaded {bad}"


def _package_of(path: Path) -> str:
    rel = path.relative_to(RUNTIME_DIR).with_suffix("")
    return ".".join(["edgetune", "runtime", *rel.parts[:-1]])


def _imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``, relative ones resolved."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_runtime_sources_import_nothing_forbidden():
    files = sorted(RUNTIME_DIR.rglob("*.py"))
    assert files, f"no sources found under {RUNTIME_DIR}"
    bad = [
        f"{f.relative_to(RUNTIME_DIR.parent)}:{line}: {module}"
        for f in files
        for line, module in _imports_of(f.read_text(encoding="utf-8"), _package_of(f))
        if _forbidden(module)
    ]
    assert not bad, "forbidden imports in edgetune.runtime:\n" + "\n".join(bad)


def test_the_scanner_catches_forbidden_imports():
    # Guard against a scanner that silently finds nothing.
    source = (
        "import onnx\nfrom torch import nn\nimport numpy\nfrom ..converter import convert\n"
        "from . import images\n__import__('tensorflow')\nimport onnx_ir as ir\n"
    )
    found = [m for _, m in _imports_of(source, "edgetune.runtime") if _forbidden(m)]
    assert {"onnx", "torch", "tensorflow", "onnx_ir", "edgetune.converter"} <= set(found)
    assert not any(m.startswith(("numpy", "edgetune.runtime")) for m in found)
