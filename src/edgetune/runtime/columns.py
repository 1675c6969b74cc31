"""Class columns: the class dimension of the parameters, kept aligned with the classes.

Every parameter (and optimizer slot) whose manifest shape holds the symbolic dimension
``"classes"`` has one column per class. Classes are added, removed and renamed while
the head lives on, so the columns follow the class names:

    columns = ClassColumns(bundle)
    values = columns.fresh(n_classes)                    # initial values, resized
    values = columns.initial(classes)                    # ... by name, if the bundle names them
    values, names = columns.remap(values, names, new)    # reorder by name; new ones zero
    values, names = columns.restore(checkpoint, classes) # a checkpoint's, checked
    columns.imprint(values, X, y, fresh=[3])             # column 3 starts at its class mean

Which parameters are the head's class weight and bias (for imprinting) is the
manifest's ``classes.weight`` / ``classes.bias``; bundles made before those keys fall
back to parameters named ``head.weight`` / ``head.bias``, else imprinting is skipped.
A bundle whose head was trained already (a fleet's global bundle) names its initial
columns in ``classes.names``: a new profile takes those columns by class name and
imprints only the classes the bundle does not name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from edgetune.bundle import Bundle
from edgetune.errors import IncompatibleCheckpointError
from edgetune.runtime.prototypes import imprint_weights

__all__ = ["CLASSES", "ClassColumns", "class_axis", "resize_classes"]

CLASSES = "classes"
_LEGACY = {"weight": "head.weight", "bias": "head.bias"}


class ClassColumns:
    """The class columns of a bundle's parameters and optimizer state (module doc)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.features_shape = tuple(bundle.manifest["features"]["shape"])
        #: train_input name -> index of its class axis (None: not class-sized)
        self.axis = {s["train_input"]: class_axis(s["shape"])
                     for s in bundle.params + bundle.state}
        self.weight, self.bias = (self._class_param(role) for role in ("weight", "bias"))
        declared = bundle.manifest.get("classes")
        names = declared.get("names") if isinstance(declared, dict) else None
        #: the class names of the initial parameters' columns; empty: no class's yet
        self.initial_names = [str(n) for n in names] if isinstance(names, list) else []

    def _class_param(self, role: str) -> dict | None:
        """The param spec the manifest names for `role` (weight, bias), or the legacy
        `head.<role>`; None when the bundle has no such parameter."""
        declared = self.bundle.manifest.get("classes")
        name = declared.get(role) if isinstance(declared, dict) else None
        name = name if isinstance(name, str) else _LEGACY[role]
        return next((p for p in self.bundle.params if p["name"] == name), None)

    def fresh(self, n_classes: int) -> dict[str, np.ndarray]:
        """The bundle's initial parameters with `n_classes` columns; optimizer state zero."""
        initial = self.bundle.initial_values()
        values = {p["train_input"]: resize_classes(initial[p["name"]],
                                                   self.axis[p["train_input"]], n_classes)
                  for p in self.bundle.params}
        shapes = {p["name"]: values[p["train_input"]].shape for p in self.bundle.params}
        for s in self.bundle.state:
            values[s["train_input"]] = np.zeros(shapes[s["param"]], np.float32)
        return values

    def initial(self, classes: Sequence[str]) -> dict[str, np.ndarray]:
        """The bundle's initial parameters for `classes`: by name when the bundle names
        its initial columns (a class it does not name gets a zero column), else `fresh`."""
        if not self.initial_names:
            return self.fresh(len(classes))
        values = self.fresh(len(self.initial_names))
        return self.remap(values, self.initial_names, list(classes))[0]

    def follow(self, values: dict[str, np.ndarray], columns: Sequence[str],
               classes: Sequence[str], trained: bool) -> tuple[dict[str, np.ndarray], list[str]]:
        """`values` (columns `columns`) for `classes` by name; an untrained head of a bundle
        that names its initial columns starts again from them."""
        if self.initial_names and not trained:
            return self.initial(classes), list(classes)
        return self.remap(values, columns, classes)

    def unnamed(self, classes: Sequence[str]) -> list[int]:
        """The columns of `classes` that the bundle's initial columns do not name."""
        return [i for i, c in enumerate(classes) if c not in self.initial_names]

    def remap(self, values: dict[str, np.ndarray], columns: Sequence[str],
              classes: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Reorder the class columns of every class-sized tensor from `columns` to
        `classes` (by name); a class not in `columns` gets a zero column."""
        if list(columns) == list(classes):
            return values, list(columns)
        index = {name: i for i, name in enumerate(columns)}
        out = {}
        for name, value in values.items():
            axis = self.axis.get(name)
            if axis is None:
                out[name] = value
                continue
            shape = list(value.shape)
            shape[axis] = len(classes)
            new = np.zeros(shape, np.float32)
            for j, cls in enumerate(classes):
                if cls in index:
                    np.moveaxis(new, axis, 0)[j] = np.moveaxis(value, axis, 0)[index[cls]]
            out[name] = new
        return out, list(classes)

    def restore(self, ckpt, classes: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Parameters and state from a checkpoint (its meta `classes` names the columns),
        remapped to `classes`; IncompatibleCheckpointError if they do not fit."""
        names = list(self.axis)
        missing = [n for n in names if n not in ckpt.tensors]
        if missing:
            raise IncompatibleCheckpointError(f"checkpoint {ckpt.path} lacks {missing}")
        columns = json.loads(ckpt.meta.get("classes", "[]"))
        values = {n: ckpt.tensors[n] for n in names}
        for name, value in values.items():
            axis = self.axis[name]
            if axis is not None and value.shape[axis] != len(columns):
                raise IncompatibleCheckpointError(
                    f"checkpoint {ckpt.path}: {name} has {value.shape[axis]} class columns but "
                    f"the checkpoint lists {len(columns)} classes")
        return self.remap(values, columns, classes)

    @property
    def can_imprint(self) -> bool:
        """Whether the head is linear on the features: a weight of shape features x
        classes (any order) and a bias of shape [classes]."""
        w, b = self.weight, self.bias
        return (w is not None and b is not None and list(b["shape"]) == [CLASSES]
                and sorted(map(str, w["shape"])) == sorted(map(str, [*self.features_shape,
                                                                     CLASSES])))

    def imprint(self, values: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray,
                fresh: Iterable[int]) -> None:
        """Start the class columns `fresh` of a linear head at the class means of the
        samples X, y (weight imprinting), in place; a no-op for other heads."""
        fresh = list(fresh)
        if not fresh or not self.can_imprint:
            return
        weight, bias = self.weight["train_input"], self.bias["train_input"]
        W, b = imprint_weights(X.reshape(len(X), -1), y, values[bias].shape[0])
        view = np.moveaxis(values[weight], self.weight["shape"].index(CLASSES), -1)
        for c in fresh:  # a view: this writes the weight, whatever its layout
            view[..., c] = W[:, c].reshape(view.shape[:-1])
            values[bias][c] = b[c]


def class_axis(shape: Sequence) -> int | None:
    """Where the symbolic class dimension is in a manifest shape, or None."""
    return list(shape).index(CLASSES) if CLASSES in shape else None


def resize_classes(value: np.ndarray, axis: int | None, n: int) -> np.ndarray:
    """`value` (float32) cut or zero-padded to `n` entries along the class axis."""
    if axis is None:
        return np.array(value, np.float32)
    value = np.moveaxis(np.asarray(value, np.float32), axis, 0)[:n]
    if len(value) < n:
        value = np.concatenate([value, np.zeros((n - len(value), *value.shape[1:]), np.float32)])
    return np.ascontiguousarray(np.moveaxis(value, 0, axis))
