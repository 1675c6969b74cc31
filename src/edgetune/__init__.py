"""edgetune: personalize neural networks on the device that uses them.

Build time (`edgetune.converter`, needs onnx and torch) turns a base and a head into plain
ONNX training graphs; run time (`edgetune.runtime`, needs only numpy, onnxruntime,
Pillow and safetensors) runs them. Names load lazily, so a device that has only the
runtime never imports a build-time library.

    import edgetune as et
    head = et.heads.SoftmaxClassifier(4)
    optimizer = et.optim.Adam(lr=1e-3)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "heads": ("edgetune.converter.heads", None),
    "losses": ("edgetune.converter.losses", None),
    "optim": ("edgetune.converter.optimizers", None),
    "build_training_graphs": ("edgetune.converter.train_graph", "build_training_graphs"),
    "convert": ("edgetune.converter.convert", "convert"),
    "Bundle": ("edgetune.bundle", "Bundle"),
    "Personalizer": ("edgetune.runtime.personalizer", "Personalizer"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgetune' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
