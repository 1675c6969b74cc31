"""The calibration images that ship with edgetune: what `edgetune convert` quantizes an
image base on when the user gives no folder of their own (``--quantize CALIB_DIR``).

They are scikit-image's sample pictures (installed with the ``build`` extra, read from
the package's own files: nothing is downloaded): photos of people, animals, objects,
scenes and textures, in colour and in grey, each whole and as one crop, so the int8
ranges cover both full scenes and close-ups. BENCHMARKS.md ("int8 base") compares the
few-shot accuracy of a base calibrated on them with one calibrated in-domain.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.inputs.image import load_image

__all__ = ["SHIPPED_PHOTOS", "describe", "shipped_images"]

#: scikit-image's sample pictures that ship in its wheel (skimage/data/), no fetching
SHIPPED_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png", "camera.png",
    "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "page.png",
    "text.png", "clock_motion.png", "horse.png", "cell.png",
)
CROP_SEED = 0  # the crops are the same on every machine: the same int8 base


def shipped_images() -> list[np.ndarray]:
    """uint8 RGB arrays: each shipped picture whole, then one crop of each (half to four
    fifths of its short side, at a fixed seed), read as the device reads images
    (edgetune.inputs.image.load_image: alpha on white, grey to three channels). Raises
    EdgetuneError when scikit-image is not installed, naming the ways out."""
    try:
        folder = resources.files("skimage.data")
    except ModuleNotFoundError:
        raise EdgetuneError(
            "the shipped int8 calibration photos come with scikit-image, which is not "
            "installed: pip install 'edgetune[build]' (it carries scikit-image), or give "
            "your own images (edgetune convert --quantize CALIB_DIR), or build without an "
            "int8 base (--no-quantize)") from None
    whole = [load_image(folder / name) for name in SHIPPED_PHOTOS]
    rng = np.random.default_rng(CROP_SEED)
    crops = []
    for image in whole:
        height, width = image.shape[:2]
        side = int(min(width, height) * rng.uniform(0.5, 0.8))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crops.append(image[top:top + side, left:left + side])
    return whole + crops


def describe(count: int) -> str:
    """What the manifest's quantization report says the base was calibrated on."""
    return (f"the {count} images that ship with edgetune (scikit-image's "
            f"{len(SHIPPED_PHOTOS)} sample pictures, whole and cropped)")

