"""Turn what a user gives (an array, a PIL image, a path, bytes) into the uint8 RGB
pixels a bundle's base graph expects.

The base graph does its own scaling (mean/std), so the runtime only has to deliver
``uint8`` RGB pixels, ``H x W x 3`` (NHWC when batched)::

    pixels = prepare("mug.jpg", size=(224, 224))   # uint8 [224, 224, 3]

Conversions :func:`load_image` applies, whatever the source:

- EXIF orientation is applied (a phone photo taken in portrait comes out upright).
- Grayscale (``L``, ``1``, 2-D arrays, ``H x W x 1``) is repeated into 3 channels.
- Palette images (``P``) are expanded; a palette's transparency is treated as alpha.
- **Alpha is composited on white**, not dropped: in transparent regions the color
  channels are undefined (often black or leftovers of an editor), and white is how
  viewers and browsers show such images, so the model sees what the user saw.
- CMYK is converted to RGB (Pillow's conversion; embedded ICC profiles are ignored).
- 16-bit images (``I;16*`` and ``I`` modes, e.g. 16-bit PNG) are *scaled* from
  0..65535 to 0..255 (``round(v / 257)``), not clipped.
- Multi-frame files (GIF, TIFF) give their first frame.

Security: the pixel count is checked from the header, before any pixel is decoded
(``max_pixels``, 40 megapixels by default), independently of Pillow's global
``Image.MAX_IMAGE_PIXELS``. Files and bytes are decoded only as JPEG, PNG, BMP,
GIF, WebP, TIFF or PPM/PGM (never EPS, which would run Ghostscript). Truncated files
are rejected unless some other code sets Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from edgetune.defaults import MIN_IMAGE_SIZE
from edgetune.errors import BadInputError
from edgetune.inputs import Preparer, describe_input, list_class_folder

if TYPE_CHECKING:
    from PIL import Image

# Pillow is imported when an image is decoded or resized, not with this module: pixels
# already at the base's size never need it (2 MiB and 16 ms of a device's start).

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "IMAGE_EXTENSIONS",
    "ImageLike",
    "ImagePreparer",
    "list_image_folder",
    "load_image",
    "prepare",
    "prepare_batch",
]

#: Images smaller than this (either side, in pixels) are rejected.
DEFAULT_MIN_SIZE = MIN_IMAGE_SIZE  # one value for the API, the CLI and the server
#: Images with more pixels than this are rejected before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
#: File extensions :func:`list_image_folder` treats as images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

ImageLike = Union[np.ndarray, "Image.Image", str, os.PathLike, bytes, bytearray, memoryview]

# Decoders tried on files and bytes. A fixed list keeps Pillow away from formats that
# run external programs (EPS -> Ghostscript) or are rarely tested; MPO is the JPEG
# variant many phone cameras write.
_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_image(
    obj: ImageLike,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load ``obj`` as an ``H x W x 3`` uint8 RGB array.

    ``obj`` is an ``H x W x 3`` / ``H x W x 4`` / ``H x W`` uint8 array, a PIL image,
    a path (``str`` or ``Path``) or the raw bytes of an image file. Raises
    :class:`BadInputError` naming the input when it cannot be used.

    >>> load_image(np.zeros((48, 64, 3), np.uint8)).shape
    (48, 64, 3)
    """
    img = _load_rgb(obj, min_size=min_size, max_pixels=max_pixels)
    return np.asarray(img, dtype=np.uint8)


def prepare(
    image: ImageLike,
    size: tuple[int, int] | int = (224, 224),
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load ``image`` and fit it to ``size = (width, height)``: ``height x width x 3`` uint8.

    The image is scaled (Lanczos) so that it *covers* the target — its shorter side
    (relative to the target's aspect ratio) matches — and the overflow of the longer
    side is cropped equally from both ends (a center crop). Nothing is stretched and
    no borders are added; for a square target this is "resize the shorter side, then
    center crop", the usual evaluation transform of ImageNet models.

    >>> prepare(np.zeros((300, 451, 3), np.uint8), (224, 224)).shape
    (224, 224, 3)
    """
    width, height = _check_size(size)
    if (isinstance(image, np.ndarray) and image.dtype == np.uint8
            and image.shape == (height, width, 3) and min(height, width) >= min_size):
        return image.copy()  # what Pillow's resize to the same size and box gives
    from PIL import Image

    img = _load_rgb(image, min_size=min_size, max_pixels=max_pixels)
    w, h = img.size
    # The largest box with the target's aspect ratio, centered (float coordinates:
    # Pillow resamples from a sub-pixel box, so no rounding shifts the crop).
    if w * height >= h * width:  # wider than the target: crop left and right
        box_w, box_h = min(float(w), h * width / height), float(h)
    else:  # taller than the target: crop top and bottom
        box_w, box_h = float(w), min(float(h), w * height / width)
    left, top = max(0.0, (w - box_w) / 2.0), max(0.0, (h - box_h) / 2.0)
    box = (left, top, left + box_w, top + box_h)
    # reducing_gap=3 first shrinks big photos by an integer factor (box filter) and
    # then applies Lanczos; Pillow documents the result as indistinguishable from
    # Lanczos alone, and it is several times faster on large photos.
    out = img.resize((width, height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


def prepare_batch(
    images: Sequence[ImageLike],
    size: tuple[int, int] | int = (224, 224),
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """:func:`prepare` each image and stack them: ``[n, height, width, 3]`` uint8.

    An error names the position of the failing image in ``images``.

    >>> prepare_batch([np.zeros((40, 40), np.uint8)] * 2, (32, 32)).shape
    (2, 32, 32, 3)
    """
    width, height = _check_size(size)
    if isinstance(images, (np.ndarray, str, os.PathLike, bytes, bytearray)) or _is_pil(images):
        raise BadInputError(
            f"prepare_batch() takes a list of images, got a single {type(images).__name__}; "
            "wrap it in a list or call prepare()"
        )
    images = list(images)
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        try:
            out[i] = prepare(image, (width, height), min_size=min_size, max_pixels=max_pixels)
        except BadInputError as e:
            raise BadInputError(f"image {i} of {len(images)}: {e}") from e
    return out


def list_image_folder(directory: str | os.PathLike) -> list[tuple[Path, str]]:
    """List a folder of class folders, ``DIR/<class>/<image>``, as ``(path, class)`` pairs.

    Sorted by class name, then file name. Hidden files and folders (names starting
    with ``.``) are skipped silently; files that are not images (by extension, see
    :data:`IMAGE_EXTENSIONS`), files directly in ``DIR`` and nested folders are
    skipped with a warning naming them. The files are not opened here:
    :func:`load_image` checks the content.

    >>> list_image_folder("photos")     # doctest: +SKIP
    [(PosixPath('photos/cup/1.jpg'), 'cup'), (PosixPath('photos/mug/1.jpg'), 'mug')]
    """
    return list_class_folder(directory, IMAGE_EXTENSIONS, noun="image")


class ImagePreparer(Preparer):
    """Kind ``image``: photos (arrays, PIL images, paths, bytes) -> uint8 RGB pixels,
    ``[height, width, 3]``, fitted by :func:`prepare` to the base's ``input.shape``
    ``[null, height, width, 3]``.

    min_image_size: smaller images are refused. max_pixels: larger ones are refused
    before decoding.
    """

    kind = "image"
    suffixes = IMAGE_EXTENSIONS
    noun = "image"

    def __init__(self, spec, *, min_image_size: int = DEFAULT_MIN_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS, **options):
        super().__init__(spec, **options)
        self.min_size = int(min_image_size)
        self.max_pixels = int(max_pixels)
        dims = self.shape
        fixed = len(dims) == 3 and all(isinstance(d, int) and d > 0 for d in dims[:2])
        #: (width, height) the images are fitted to, or None for a base without a fixed size
        self.size: tuple[int, int] | None = (dims[1], dims[0]) if fixed else None

    def _fit_size(self) -> tuple[int, int]:
        if self.size is None:
            raise BadInputError(
                f"this bundle's image input {self.name!r} has shape {self.spec.get('shape')}; "
                "images need a fixed [null, height, width, 3]: rebuild the bundle from a "
                "base with a fixed input size"
            )
        return self.size

    def prepare(self, item: ImageLike) -> np.ndarray:
        return prepare(item, self._fit_size(), min_size=self.min_size,
                       max_pixels=self.max_pixels)

    def batch(self, items: Sequence[ImageLike]) -> np.ndarray:
        return prepare_batch(items, self._fit_size(), min_size=self.min_size,
                             max_pixels=self.max_pixels)

    def check(self, item: ImageLike) -> None:
        load_image(item, min_size=self.min_size, max_pixels=self.max_pixels)

    def list_folder(self, root: str | os.PathLike) -> list[tuple[Path, str]]:
        return list_image_folder(root)

    def describe(self, item) -> str:
        return _describe(item)


# --------------------------------------------------------------------------- internals


def _check_size(size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        width, height = (int(s) for s in size)
    except (TypeError, ValueError):
        raise BadInputError(
            f"size must be (width, height) in pixels, e.g. (224, 224); got {size!r}"
        ) from None
    if width < 1 or height < 1:
        raise BadInputError(f"size must be positive (width, height); got {size!r}")
    return width, height


def _is_pil(obj: object) -> bool:
    """Whether `obj` is a PIL image (if Pillow is not loaded yet, nothing is one)."""
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def _describe(obj: object) -> str:
    """A short name of an input for error messages."""
    if _is_pil(obj):
        return f"PIL image ({obj.mode}, {obj.size[0]}x{obj.size[1]})"
    if isinstance(obj, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)):
        return describe_input(obj, "image")
    return f"input of type {type(obj).__name__}"


def _load_rgb(obj: ImageLike, *, min_size: int, max_pixels: int) -> Image.Image:
    """Any supported input -> a loaded PIL image in mode RGB, size checked."""
    name = _describe(obj)
    if isinstance(obj, np.ndarray):
        img = _from_array(obj, name)
    elif _is_pil(obj):
        img = _from_pil(obj, name, max_pixels)
    elif isinstance(obj, (str, os.PathLike)):
        img = _from_path(Path(obj), name, max_pixels)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        if not data:
            raise BadInputError(
                "image bytes are empty (0 bytes); pass the content of an image file"
            )
        img = _from_stream(io.BytesIO(data), name, max_pixels)
    else:
        raise BadInputError(
            f"cannot read an image from {name}; pass an HxWx3 uint8 array, a PIL image, "
            "a path or the bytes of an image file"
        )
    w, h = img.size
    if w < min_size or h < min_size:
        raise BadInputError(f"{name}: image is {w}x{h}; need at least {min_size}x{min_size} pixels")
    return img


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.dtype != np.uint8:
        hint = (
            " (floats in 0..1: multiply by 255, round and cast with .astype(np.uint8))"
            if a.dtype.kind == "f"
            else ""
        )
        raise BadInputError(f"{name}: pass uint8 pixels 0..255{hint}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = _composite_on_white(a[:, :, :3], a[:, :, 3])
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise BadInputError(
            f"{name}: need an HxWx3 RGB array (HxW grayscale and HxWx4 RGBA also work)"
        )
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(a), mode="RGB")


def _from_path(path: Path, name: str, max_pixels: int) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(f"{name} does not exist") from None
    except OSError as e:
        raise BadInputError(f"{name} cannot be read: {e.strerror or e}") from None
    if path.is_dir():
        raise BadInputError(f"{name} is a folder, not an image file")
    if size == 0:
        raise BadInputError(f"{name} is empty (0 bytes); it is not an image")
    try:
        stream = open(path, "rb")
    except OSError as e:
        raise BadInputError(f"{name} cannot be read: {e.strerror or e}") from None
    with stream:
        return _from_stream(stream, name, max_pixels)


def _from_stream(stream: io.IOBase, name: str, max_pixels: int) -> Image.Image:
    from PIL import Image

    try:
        img = Image.open(stream, formats=_open_formats())
    except Image.DecompressionBombError as e:
        raise BadInputError(
            f"{name}: image is too large to decode safely ({e}); resize it below "
            f"{max_pixels:,} pixels"
        ) from None
    except Exception as e:  # Pillow raises many types for non-image data
        if isinstance(e, MemoryError):
            raise
        raise BadInputError(
            f"{name}: not a readable image file (supported: JPEG, PNG, BMP, GIF, WebP, TIFF, PPM)"
        ) from None
    with img:
        out = _from_pil(img, name, max_pixels)
        # Closing `img` invalidates it: never hand it out, hand out a copy.
        return out.copy() if out is img else out


def _open_formats() -> list[str]:
    from PIL import Image

    Image.init()  # registers every plugin (idempotent); preinit alone lacks WebP, TIFF, MPO
    return [f for f in _FORMATS if f in Image.OPEN]


def _from_pil(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    # The size is known from the header: check it before decoding any pixel, whatever
    # Image.MAX_IMAGE_PIXELS is set to.
    from PIL import Image

    w, h = img.size
    if w * h > max_pixels:
        raise BadInputError(
            f"{name}: image is {w}x{h} ({w * h:,} pixels), more than the limit of "
            f"{max_pixels:,} pixels (a possible decompression bomb); resize it first or "
            "raise max_pixels"
        )
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise BadInputError(f"{name}: image is too large to decode safely ({e})") from None
    except Exception as e:
        if isinstance(e, MemoryError):
            raise
        detail = str(e) or type(e).__name__
        raise BadInputError(
            f"{name}: the image data is truncated or corrupted ({detail}); re-export or "
            "re-copy the file"
        ) from None
    img = _apply_exif_orientation(img)
    return _to_rgb(img, name)


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    from PIL import ImageOps

    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a good image unusable
        return img
    return img if out is None else out


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img).astype(np.int64)
        a = (np.clip(a, 0, 65535) + 128) // 257  # round(v / 257): 0..65535 -> 0..255
        gray = a.astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")
    if mode == "F":
        raise BadInputError(
            f"{name}: 32-bit float images have no fixed pixel scale; convert it to an "
            "8-bit or 16-bit image first"
        )
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"))
        return Image.fromarray(_composite_on_white(rgba[:, :, :3], rgba[:, :, 3]), mode="RGB")
    try:
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...
    except (ValueError, OSError) as e:
        raise BadInputError(f"{name}: cannot convert image mode {mode} to RGB ({e})") from None


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb * a + white * (1 - a)`` in exact integer arithmetic, rounded."""
    a = alpha.astype(np.uint32)[:, :, None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)
