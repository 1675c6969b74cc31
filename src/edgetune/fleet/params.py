"""What a fleet exchanges: the bundle's trainable parameters as arrays, in manifest
order, with class columns named by a shared class vocabulary.

Devices know different classes (label skew is the normal case), so the global head has
one column per class of the vocabulary, the sorted union of the devices' class names,
and every device maps its own labels into it by name. Only these arrays and a few
numbers travel; samples and features never do.

    names = param_names(bundle)                       # the order of the arrays
    arrays = initial_arrays(bundle, vocabulary)       # the global head before round 1
    values = dict(zip(names, arrays))
    write_global_bundle(bundle, values, vocabulary, "global.edgetune", info)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

from edgetune.bundle import Bundle, sha256
from edgetune.errors import BadInputError
from edgetune.names import class_name
from edgetune.runtime.columns import ClassColumns

__all__ = ["bundle_id", "initial_arrays", "param_names", "vocabulary", "write_global_bundle"]


def bundle_id(bundle: Bundle) -> str:
    """The bundle's identity as a profile records it: the hash of its manifest."""
    return sha256(json.dumps(bundle.manifest, sort_keys=True).encode())


def param_names(bundle: Bundle) -> list[str]:
    """The manifest names of the trainable parameters: the order of every array list."""
    return [p["name"] for p in bundle.params]


def vocabulary(class_lists: Iterable[Sequence[str]]) -> list[str]:
    """The fleet's classes: the sorted union of the devices' class names."""
    return sorted({class_name(c) for classes in class_lists for c in classes})


def initial_arrays(bundle: Bundle, classes: Sequence[str]) -> list[np.ndarray]:
    """The bundle's initial parameters with one class column per vocabulary class."""
    cols = ClassColumns(bundle)
    values = cols.fresh(len(classes))
    return [values[p["train_input"]] for p in bundle.params]


def check_arrays(bundle: Bundle, arrays: Sequence[np.ndarray], classes: Sequence[str]) -> None:
    """Refuse arrays that are not this bundle's parameters over these classes."""
    specs = bundle.params
    if len(arrays) != len(specs):
        raise BadInputError(f"got {len(arrays)} parameter arrays; the bundle has {len(specs)}")
    for spec, value in zip(specs, arrays):
        want = [len(classes) if d == "classes" else d for d in spec["shape"]]
        if list(np.shape(value)) != want:
            raise BadInputError(f"parameter {spec['name']!r} has shape {list(np.shape(value))}, "
                                f"not {want} ({len(classes)} classes)")


def write_global_bundle(bundle: Bundle, params: Mapping[str, np.ndarray],
                        classes: Sequence[str], out: str | os.PathLike,
                        info: Mapping | None = None) -> Path:
    """The bundle with the federated parameters as its initial ones (one column per class
    of `classes`, named in the manifest's `fleet.classes`), written atomically."""
    check_arrays(bundle, [params[n] for n in param_names(bundle)], classes)
    if bundle.path is None:
        raise BadInputError("the bundle must be on disk to write the global bundle from it")
    copy = Bundle.load(bundle.path)  # a fresh copy: save() links its unchanged files
    copy.manifest["fleet"] = {"classes": list(classes), **dict(info or {})}
    # a new profile takes the federated columns by class name (runtime/columns.py)
    copy.manifest.setdefault("classes", {})["names"] = list(classes)
    copy.files[copy.manifest["init"]["file"]] = save_safetensors(
        {n: np.ascontiguousarray(params[n], np.float32) for n in param_names(bundle)})
    return copy.save(out, overwrite=True)
