"""Input preparers: a user's input (a photo, a clip, a sentence) -> the base graph's feed.

Shared by both sides: the device prepares inputs with them, and the converter calibrates
int8 bases on exactly the inputs the device will feed. Nothing here imports onnx, torch
or the runtime/converter packages.

A bundle's manifest says what kind of input its base takes (``input.kind``); one
:class:`Preparer` per kind turns one user input into one row of the base's input::

    preparer = preparer_for(bundle.manifest["input"], min_image_size=16)
    row = preparer.prepare("mug.jpg")              # uint8 [224, 224, 3] for "image"
    rows = preparer.batch(["a.jpg", "b.jpg"])      # [2, 224, 224, 3]
    pairs = preparer.list_folder("photos/")        # [(Path, class), ...]

Kinds known here: ``image`` (:mod:`edgetune.inputs.image`), ``audio``
(:mod:`edgetune.inputs.audio`), ``text`` (:mod:`edgetune.inputs.text`) and ``tensor`` (a base whose
input is a plain array, checked for shape and dtype). A manifest without ``kind`` is an
image bundle (unless it says its layout is not an image's, as bundles of non-image bases
did before kinds existed: those read as ``tensor``). More kinds plug in with
:func:`register`; the Personalizer, the CLI and the server only talk to the preparer.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from edgetune.errors import BadInputError, BundleError

__all__ = [
    "DEFAULT_KIND",
    "Preparer",
    "PreparerFactory",
    "TensorPreparer",
    "describe_input",
    "kind_of",
    "known_kinds",
    "list_class_folder",
    "preparer_for",
    "register",
    "unknown_kind_message",
    "unregister",
]

#: The kind of a manifest's input that names none.
DEFAULT_KIND = "image"


class Preparer:
    """Turns one user input of one kind into one row of the base graph's input.

    spec: the manifest's ``input`` object. options: keyword options for some kinds
    (``min_image_size`` for images); a kind ignores the options it does not use, so a
    caller can pass the same options whatever the bundle's kind.

    Subclasses set :attr:`kind`, :attr:`suffixes` and :attr:`noun` and implement
    :meth:`prepare`; the rest has working defaults.
    """

    #: The manifest's ``input.kind`` this preparer serves.
    kind: str = ""
    #: File suffixes (lower case, with the dot) :meth:`list_folder` takes from a folder.
    suffixes: frozenset[str] = frozenset()
    #: What one input is called in messages ("image", "clip", "text").
    noun: str = "input"

    def __init__(self, spec: Mapping, **options):
        self.spec = dict(spec)
        self.name: str = self.spec.get("name", "input")
        self.shape: tuple = tuple(self.spec.get("shape", [None])[1:])
        self.dtype = np.dtype(self.spec.get("dtype", "float32"))
        self.options = options

    def prepare(self, item) -> np.ndarray:
        """One input -> one row of the base's input: shape ``spec["shape"][1:]``, dtype
        ``spec["dtype"]``. ``item`` may be a path or the bytes of a file of this kind
        (what a folder or an upload holds) or an in-memory value. Raises
        :class:`BadInputError` naming the input and the fix."""
        raise NotImplementedError(f"{type(self).__name__} does not implement prepare()")

    def batch(self, items: Iterable) -> np.ndarray:
        """:meth:`prepare` each item and stack them: ``[n, *shape]``. An error names the
        position of the failing item."""
        if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise BadInputError(f"batch() takes a list of {self.noun}s, got a single "
                                f"{type(items).__name__}; wrap it in a list or call prepare()")
        items = list(items)
        rows = []
        for i, item in enumerate(items):
            try:
                rows.append(self.prepare(item))
            except BadInputError as e:
                raise BadInputError(f"{self.noun} {i} of {len(items)}: {e}") from e
        if not rows:
            return np.zeros((0, *(d if isinstance(d, int) else 0 for d in self.shape)),
                            self.dtype)
        return np.stack(rows)

    def feeds(self, rows: np.ndarray, inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
        """The base graph's feed for a stack of prepared rows. inputs: the base graph's
        input roles -> tensor names (the manifest's ``graphs.base.inputs``). By default
        the rows are the one input (role ``image``); a kind whose base takes several
        inputs (text: ids and mask) splits its rows here."""
        if "image" in inputs:
            return {inputs["image"]: rows}
        if len(inputs) == 1:
            return {next(iter(inputs.values())): rows}
        raise BundleError(f"the base graph takes {sorted(inputs)}; the {self.kind!r} "
                          f"preparer feeds one input (role 'image')")

    def check(self, item) -> None:
        """Raise :class:`BadInputError` if ``item`` is not a usable input of this kind
        (e.g. an upload that is no image), without running the base."""
        self.prepare(item)

    def list_folder(self, root: str | os.PathLike) -> list[tuple[Path, str]]:
        """The files of a folder of class folders, ``DIR/<class>/<file>``, that this kind
        reads (by :attr:`suffixes`), as ``(path, class)`` pairs sorted by class and file;
        a missing folder or one without usable files is a :class:`BadInputError`."""
        return list_class_folder(root, self.suffixes, noun=self.noun)

    def describe(self, item) -> str:
        """A short name of an input for messages."""
        return describe_input(item, self.noun)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, " \
               f"shape={list(self.shape)}, dtype={self.dtype.name})"


PreparerFactory = Callable[..., Preparer]


class TensorPreparer(Preparer):
    """Kind ``tensor``: the base takes a plain array; an input is one row of it, checked
    for shape and dtype (nothing is converted but Python lists, cast to the dtype).

    Reads numpy arrays, lists, ``.npy`` files (paths) and the bytes of ``.npy`` files.
    """

    kind = "tensor"
    suffixes = frozenset({".npy"})
    noun = "array"

    def prepare(self, item) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            array = self._load_npy(Path(item), f"file {os.fspath(item)}")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            array = self._load_npy(io.BytesIO(bytes(item)), f"bytes ({len(item)} bytes)")
        elif isinstance(item, (list, tuple)):
            try:
                array = np.asarray(item, dtype=self.dtype)
            except (TypeError, ValueError) as e:
                raise BadInputError(f"input list cannot be read as {self.dtype} numbers "
                                    f"({e})") from None
        else:
            array = np.asarray(item)
        expected = self.shape
        fits = array.ndim == len(expected) and all(
            not isinstance(d, int) or d == n for d, n in zip(expected, array.shape))
        if not fits or array.dtype != self.dtype:
            raise BadInputError(f"input has shape {array.shape} and dtype {array.dtype}; this "
                                f"bundle needs {expected} {self.dtype}")
        return array

    def _load_npy(self, source, name: str) -> np.ndarray:
        try:
            return np.load(source, allow_pickle=False)
        except FileNotFoundError:
            raise BadInputError(f"{name} does not exist") from None
        except (OSError, ValueError, EOFError) as e:
            raise BadInputError(f"{name} is not a readable .npy array ({e}); save one row "
                                f"with numpy.save") from None


# -- the registry ---------------------------------------------------------------------
# kind -> a factory, or "module:attribute" imported on first use (so that reading a
# manifest does not import Pillow or an audio library).
_REGISTRY: dict[str, PreparerFactory | str] = {
    "image": "edgetune.inputs.image:ImagePreparer",
    "audio": "edgetune.inputs.audio:AudioPreparer",
    "text": "edgetune.inputs.text:TextPreparer",
    "tensor": TensorPreparer,
}


def register(kind: str, factory: PreparerFactory | str, *, replace: bool = False):
    """Make ``kind`` known: ``factory(spec, **options)`` returns its :class:`Preparer`
    (a Preparer subclass is such a factory; so is ``"module:attribute"``, imported on
    first use). Registering a known kind again needs ``replace=True``. Returns
    ``factory``."""
    if not isinstance(kind, str) or not kind.strip() or kind != kind.strip():
        raise ValueError(f"an input kind is a non-empty name without spaces around it; "
                         f"got {kind!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"factory for kind {kind!r} must be callable (spec, **options) -> "
                        f"Preparer, or 'module:attribute'; got {factory!r}")
    if kind in _REGISTRY and _REGISTRY[kind] is not factory and not replace:
        raise ValueError(f"input kind {kind!r} is already registered; pass replace=True to "
                         f"replace it")
    _REGISTRY[kind] = factory
    return factory


def unregister(kind: str) -> None:
    """Forget ``kind`` (a no-op for an unknown kind)."""
    _REGISTRY.pop(kind, None)


def known_kinds() -> list[str]:
    """The input kinds this edgetune reads, sorted."""
    return sorted(_REGISTRY)


def kind_of(input_spec: Mapping) -> str:
    """The kind of a manifest's ``input``: its ``kind``, or for a manifest without one
    ``image`` (``tensor`` when it declares a layout or color that is not an image's
    NHWC RGB, as bundles of non-image bases did before kinds). Raises BundleError when
    ``kind`` is not a non-empty string; does not check that the kind is known."""
    kind = input_spec.get("kind")
    if kind is None:
        image = input_spec.get("layout", "NHWC") == "NHWC" and \
            input_spec.get("color", "RGB") == "RGB"
        return DEFAULT_KIND if image else "tensor"
    if not isinstance(kind, str) or not kind:
        raise BundleError(f"manifest.json: input.kind must be a non-empty string such as "
                          f"'image', got {kind!r}")
    return kind


def preparer_for(input_spec: Mapping, **options) -> Preparer:
    """The :class:`Preparer` for a manifest's ``input``, by its kind (see
    :func:`kind_of`). options go to the kind's factory (``min_image_size=`` for images);
    kinds ignore options they do not use. An unknown kind is a BundleError naming the
    kinds this edgetune knows."""
    if not isinstance(input_spec, Mapping):
        raise BundleError(f"manifest.json: input must be an object, got "
                          f"{type(input_spec).__name__}")
    kind = kind_of(input_spec)
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise BundleError(unknown_kind_message(kind))
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    preparer = factory(input_spec, **options)
    if not isinstance(preparer, Preparer):
        raise TypeError(f"the factory of input kind {kind!r} returned "
                        f"{type(preparer).__name__}, not a Preparer")
    return preparer


def optional_import(module: str, needed_for: str, install: str):
    """Import an optional dependency on first use, or BadInputError saying what needs it
    and how to install it (OSError too: a package whose native library is missing, as
    soundfile without libsndfile)."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:
        raise BadInputError(f"{needed_for} needs the {module} package ({e}); install it "
                            f"with: {install}") from None


def unknown_kind_message(kind: str) -> str:
    return (f"manifest.json: input.kind {kind!r} is not an input kind this edgetune knows "
            f"(it knows {', '.join(known_kinds())}); upgrade edgetune to use this bundle")


# -- folders of class folders -----------------------------------------------------------
def list_class_folder(directory: str | os.PathLike, suffixes: Iterable[str], *,
                      noun: str = "file") -> list[tuple[Path, str]]:
    """List a folder of class folders, ``DIR/<class>/<file>``, as ``(path, class)`` pairs.

    Sorted by class name, then file name. Hidden files and folders (names starting
    with ``.``) are skipped silently; files whose suffix is not in ``suffixes``, files
    directly in ``DIR`` and nested folders are skipped with a warning naming them. The
    files are not opened here. ``noun`` names one input in messages ("image").
    """
    suffixes = frozenset(s.lower() for s in suffixes)
    root = Path(directory)
    example = ".jpg" if ".jpg" in suffixes else min(suffixes, default="")
    layout = (
        f"expected a folder of class folders, one per class, each holding that class's "
        f"{noun}s: {root}/<class>/<{noun}>{example}"
    )
    if not root.exists():
        raise BadInputError(f"{noun} folder {root} does not exist; {layout}")
    if not root.is_dir():
        raise BadInputError(f"{root} is not a folder; {layout}")

    pairs: list[tuple[Path, str]] = []
    n_classes = 0
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            warnings.warn(
                f"skipping {entry}: files directly in {root} are ignored; put {noun}s in "
                f"class folders ({root}/<class>/<{noun}>)",
                stacklevel=3,
            )
            continue
        n_classes += 1
        found = 0
        for file in sorted(entry.iterdir(), key=lambda p: p.name):
            if file.name.startswith("."):
                continue
            if file.is_dir():
                warnings.warn(
                    f"skipping folder {file}: class folders are not searched recursively",
                    stacklevel=3,
                )
                continue
            if file.suffix.lower() not in suffixes:
                warnings.warn(
                    f"skipping {file}: not {_article(noun)} {noun} file (known extensions: "
                    f"{', '.join(sorted(suffixes))})",
                    stacklevel=3,
                )
                continue
            pairs.append((file, entry.name))
            found += 1
        if found == 0:
            warnings.warn(f"class folder {entry} holds no {noun}s; class skipped", stacklevel=3)
    if n_classes == 0:
        raise BadInputError(f"{noun} folder {root} has no class folders; {layout}")
    if not pairs:
        raise BadInputError(f"{noun} folder {root} has class folders but no {noun}s; {layout}")
    return pairs


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def describe_input(obj: object, noun: str) -> str:
    """A short name of an input for error messages: `noun file PATH`, bytes, array."""
    if isinstance(obj, (str, os.PathLike)):
        return f"{noun} file {os.fspath(obj)}"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"{noun} bytes ({len(obj)} bytes)"
    if isinstance(obj, np.ndarray):
        return f"{noun} array of shape {obj.shape} and dtype {obj.dtype}"
    return f"{noun} of type {type(obj).__name__}"
