"""Reading a user's ONNX file as a base: one-line errors, and repairs of common faults.

    model, repairs = load_model("model.onnx")   # ValueError naming the file and problem

What is repaired (each listed in ``repairs``, a sentence each):

- initializers also listed as graph inputs (old exporters, IR version < 4): dropped from
  the inputs, so the model has one real input;
- weights computed from constants (``Constant``, ``ConstantOfShape`` of initializers):
  folded into initializers, so ``last:K`` finds them as trainable tensors;
- an opset older than edgetune's (17): converted with onnx's version converter, IR
  version raised to the bundle's (8), so its nodes can join the training graphs.

A file that is not ONNX, is truncated, refers to missing external data or that onnx's
checker rejects after the repairs is a ``ValueError`` of one line: ``"<file>: <problem>"``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx

from edgetune.autodiff.builder import IR_VERSION, OPSET
from edgetune.converter.cleanup import fold_constants

__all__ = ["check_model", "load_model", "repair_model"]

_CONSTANT_OPS = {"Constant", "ConstantOfShape"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_model(path: str | os.PathLike | onnx.ModelProto, *, repair: bool = True,
               source: str | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX model at `path` (or the ModelProto given), checked and repaired.

    Returns the model and the repairs made (sentences; empty when none). Raises
    ``ValueError("<file>: <problem>")`` when the file does not exist, is not an ONNX
    model, is truncated, or the checker rejects it after the repairs."""
    if isinstance(path, onnx.ModelProto):
        model, name = path, source or "the model"
    else:
        file = Path(os.fspath(path))
        name = source or str(file)
        if not file.is_file():
            raise ValueError(f"{name}: no such file")
        if file.stat().st_size == 0:
            raise ValueError(f"{name}: empty file, not an ONNX model")
        try:
            model = onnx.load(str(file))
        except Exception as e:  # noqa: BLE001 - protobuf, external data, OS errors: one line
            kind = "not an ONNX model or truncated" if "pars" in str(e).lower() or \
                "DecodeError" in type(e).__name__ else "cannot be read"
            raise ValueError(f"{name}: {kind} ({_first_line(e)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ValueError(f"{name}: not an ONNX model or truncated (no graph nodes)")
    if not model.graph.output:
        raise ValueError(f"{name}: the model has no outputs")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    repairs = repair_model(copy, name) if repair else []
    check_model(copy, name)
    return copy, repairs


def check_model(model: onnx.ModelProto, name: str = "the model") -> None:
    """onnx's checker (full check: types and shapes) as a one-line ValueError."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError, InferenceError, ...
        raise ValueError(f"{name}: rejected by the ONNX checker ({_first_line(e)})") from None


def repair_model(model: onnx.ModelProto, name: str = "the model") -> list[str]:
    """Repair `model` in place (see the module docstring); return what was done."""
    repairs: list[str] = []
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    listed = [i for i in graph.input if i.name in inits]
    if listed:
        keep = [i for i in graph.input if i.name not in inits]
        del graph.input[:]
        graph.input.extend(keep)
        repairs.append(f"dropped {len(listed)} initializers listed as graph inputs "
                       f"(an old exporter's pattern)")
    if model.ir_version < 4:
        model.ir_version = 4  # initializers need not be inputs from IR version 4 on
    if any(n.op_type in _CONSTANT_OPS and n.domain in ("", "ai.onnx") for n in graph.node):
        before = len(graph.node)
        try:
            fold_constants(model)
        except Exception as e:  # noqa: BLE001 - folding is an improvement, not a need
            warnings.warn(f"{name}: constants not folded ({_first_line(e)})", stacklevel=3)
        else:
            if len(graph.node) < before:
                repairs.append(f"folded {before - len(graph.node)} constant nodes into "
                               f"initializers")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < OPSET:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, OPSET)
        except Exception as e:  # noqa: BLE001 - keep the old opset, say so
            warnings.warn(f"{name}: opset {opset} kept, not converted to {OPSET} "
                          f"({_first_line(e)})", stacklevel=3)
        else:
            converted.ir_version = IR_VERSION  # what edgetune writes, whatever the converter chose
            model.CopyFrom(converted)
            repairs.append(f"converted from opset {opset} to {OPSET}")
    return repairs
