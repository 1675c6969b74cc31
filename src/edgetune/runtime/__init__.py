"""edgetune.runtime: the device side of edgetune.

Runs on the device with numpy, onnxruntime, Pillow, safetensors and the standard
library only — never torch, tensorflow or onnx (a test enforces it). It owns what
the graphs of a bundle cannot: turning user images into the base's input pixels,
the sample store, checkpoints, and the prototype classifier usable from the first
sample::

    from edgetune.runtime import SampleStore, prepare
    with SampleStore("me/samples.sqlite") as store:
        pixels = prepare("mug.jpg", (224, 224))      # uint8 [224, 224, 3], RGB
        store.add(base_features(pixels[None])[0], "mug")

Modules: :mod:`.store`, :mod:`.checkpoint`, :mod:`.prototypes`, :mod:`.trainer`
(runs the training graphs), :mod:`.fitting` (the fit loop), :mod:`.columns` (class
columns), :mod:`.lock` (one writer per profile), :mod:`.export`; the ``Personalizer``
(:mod:`.personalizer`) combines them.
"""

from edgetune.errors import (
    BadInputError,
    CorruptCheckpointError,
    EdgetuneError,
    IncompatibleCheckpointError,
)
from edgetune.inputs.image import list_image_folder, load_image, prepare, prepare_batch

from .checkpoint import Checkpoint, CheckpointDir, load_checkpoint, save_checkpoint
from .prototypes import PrototypeClassifier, imprint_weights
from .store import SampleInfo, SampleStore

__all__ = [
    "BadInputError",
    "Checkpoint",
    "CheckpointDir",
    "CorruptCheckpointError",
    "EdgetuneError",
    "IncompatibleCheckpointError",
    "PrototypeClassifier",
    "SampleInfo",
    "SampleStore",
    "imprint_weights",
    "list_image_folder",
    "load_image",
    "load_checkpoint",
    "prepare",
    "prepare_batch",
    "save_checkpoint",
]
