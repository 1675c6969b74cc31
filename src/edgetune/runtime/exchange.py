"""A profile's head by class name, read and adopted whole: what federation exchanges.

    params, classes = head(p)            # param name -> value; class names of the columns
    adopt_head(p, params, classes)       # the profile now answers with these parameters
    p.save()                             # ... and keeps them (an atomic checkpoint)

Parameters travel by their manifest name (`params[i]["name"]`), their class columns by
class name: a head trained elsewhere over other classes (a union of several devices')
is remapped to this profile's class order, and its classes the profile lacks are added
to its class table (empty: the profile can now predict them, as the head can). The
optimizer state restarts at zero, since it belonged to another trajectory. A friend of
the Personalizer (same package): it changes the parameters under the Personalizer's
lock, as its own methods do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgetune.errors import BadInputError
from edgetune.names import class_name
from edgetune.runtime.columns import CLASSES

__all__ = ["adopt_head", "head"]


def head(p) -> tuple[dict[str, np.ndarray], list[str]]:
    """The Personalizer's current trainable parameters (copies) by manifest name, and the
    class names of their columns."""
    with p._lock:
        return ({s["name"]: np.array(p._values[s["train_input"]]) for s in p.bundle.params},
                list(p._columns))


def adopt_head(p, params: Mapping[str, np.ndarray], classes: Sequence[str]) -> None:
    """Make `params` (manifest name -> value, class columns named by `classes`) the
    Personalizer's parameters; not saved until p.save()."""
    p._writable("adopt a head")
    classes = [class_name(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise BadInputError(f"the head names a class twice: {classes}")
    values = {}
    for spec in p.bundle.params:
        if spec["name"] not in params:
            raise BadInputError(f"the head lacks parameter {spec['name']!r} of the bundle")
        value = np.asarray(params[spec["name"]], np.float32)
        want = [len(classes) if d == CLASSES else d for d in spec["shape"]]
        if list(value.shape) != want:
            raise BadInputError(f"parameter {spec['name']!r} has shape {list(value.shape)}, "
                                f"not {want} ({len(classes)} classes)")
        values[spec["train_input"]] = value
    shapes = {s["name"]: values[s["train_input"]].shape for s in p.bundle.params}
    for s in p.bundle.state:
        values[s["train_input"]] = np.zeros(shapes[s["param"]], np.float32)
    with p._lock:
        known = p.store.class_names()
        for name in classes:
            if name not in known:
                p.store.add_class(name)
        values, columns = p._cols.remap(values, classes, p.store.class_names())
        p._values, p._columns, p._trained, p.step = values, columns, True, 0
        p._prototypes_stale = True
        p._publish()
