"""A base edgetune builds (efficientnet.py, speech.py, text.py): cached under the build
cache by a file name that carries its build tag, and finished the same way.

- :func:`cached` is the path of a built base, built when the cache lacks it.
- :func:`finish` stamps a built graph (opset, IR version, producer, metadata: its block
  boundaries, preprocessing and source), infers its shapes, checks it and writes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
from onnx import helper

from edgetune.autodiff.builder import IR_VERSION, OPSET
from edgetune.converter.cut import META_BLOCK_BOUNDARIES
from edgetune.files import atomic_write
from edgetune.paths import cache_dir as cache_dir_of

__all__ = ["META_PREPROCESSING", "META_SOURCE", "cached", "finish"]

META_PREPROCESSING = "edgetune.preprocessing"
META_SOURCE = "edgetune.source"


def cached(cache_dir: str | os.PathLike | None, name: str,
           build: Callable[[Path], object]) -> Path:
    """``name`` in the build cache (:func:`edgetune.paths.cache_dir`, or ``cache_dir``),
    made by ``build(path)`` when missing. Put the build tag in ``name``: a changed build
    then never picks up a stale file."""
    path = cache_dir_of(cache_dir) / name
    if not path.is_file():
        build(path)
    return path


def finish(model: onnx.ModelProto, path: str | os.PathLike, *, build_tag: str,
           boundaries: Sequence[str], preprocessing: str, source: str,
           opset_imports: Sequence[onnx.OperatorSetIdProto] | None = None,
           strict: bool = True) -> Path:
    """Stamp ``model`` (opset ``OPSET`` unless ``opset_imports``, IR version
    ``IR_VERSION``, producer edgetune ``build_tag``, the metadata), infer its shapes,
    check it and write it to ``path`` atomically. ``strict``: type-checked shape
    inference and the full check (not for graphs with ops of other domains)."""
    del model.opset_import[:]
    model.opset_import.extend(opset_imports or [helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name = "edgetune"
    model.producer_version = build_tag
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict)
    del model.metadata_props[:]
    for key, value in {META_BLOCK_BOUNDARIES: json.dumps(list(boundaries)),
                       META_PREPROCESSING: preprocessing, META_SOURCE: source}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model, full_check=strict)
    return atomic_write(path, model.SerializeToString())
