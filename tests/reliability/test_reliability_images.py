"""Hostile images end to end: what `Personalizer.add_sample` does with truncated, empty,
oversized (decompression bomb) and unusual images (CMYK, 16-bit, alpha, grayscale,
EXIF-rotated), and randomly mutated image bytes of every accepted format: a correct
sample or a `BadInputError`, and a refused image adds nothing.

tests/test_runtime_images.py covers `load_image` itself on each kind of file; this file
covers the path from bytes to stored features, and fuzzing."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from conftest import tiny_base
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgetune.converter.convert import convert
from edgetune.converter.heads import SoftmaxClassifier
from edgetune.converter.optimizers import Adam
from edgetune.runtime import BadInputError, load_image, prepare
from edgetune.runtime.personalizer import Personalizer

data = pytest.importorskip("skimage.data")
SIZE = 16  # the tiny base's input: 16 x 16 RGB


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return convert(tiny_base(root / "tiny.onnx", size=SIZE), SoftmaxClassifier(2),
                   Adam(lr=0.01)).save(root / "t.edgetune")


@pytest.fixture
def person(bundle_path, tmp_path):
    p = Personalizer(bundle_path, profile=tmp_path / "profile", threads=1,
                     min_image_size=SIZE)
    p.add_sample(np.zeros((SIZE, SIZE, 3), np.uint8), "seed")
    yield p
    p.close()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.chelsea()[100:196:2, 150:214]  # 48 x 32 RGB, non-square


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _assert_refused_and_nothing_added(person, image, match):
    before, stored = person.counts(), len(person.store)
    with pytest.raises(BadInputError, match=match):
        person.add_sample(image, "cat")
    with pytest.raises(BadInputError):  # in a batch with a good image: nothing is added
        person.add_samples([np.zeros((SIZE, SIZE, 3), np.uint8), image], ["cat", "cat"])
    assert person.counts() == before and len(person.store) == stored
    assert "cat" not in person.classes()


@pytest.mark.parametrize("kind", ["jpeg", "png"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files_add_nothing(person, photo, tmp_path, kind, keep):
    whole = _encode(Image.fromarray(photo), kind.upper())
    cut = whole[:int(len(whole) * keep)]
    _assert_refused_and_nothing_added(person, cut, "truncated|not a readable image")
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(cut)
    _assert_refused_and_nothing_added(person, path, "cut\\." + kind)


def test_empty_input_adds_nothing(person, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    _assert_refused_and_nothing_added(person, b"", "empty")
    _assert_refused_and_nothing_added(person, tmp_path / "empty.jpg", "empty")
    _assert_refused_and_nothing_added(person, bytearray(), "empty")


@pytest.mark.parametrize("width,height", [(8000, 6000), (100_000, 100_000), (1, 50_000_000)])
def test_decompression_bombs_add_nothing(person, width, height):
    """A ~100-byte PNG declaring tens of megapixels (or more): refused from its header,
    before any pixel is decoded."""
    bomb = _png_header_only(width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own DecompressionBombWarning
        _assert_refused_and_nothing_added(person, bomb, "pixels|too large|bomb")


def _exif_rotated_png(photo) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    return _encode(Image.fromarray(photo), "PNG", exif=exif)


def _cases(photo):
    """(image file bytes, the RGB pixels they must produce), all lossless."""
    rgba = np.dstack([photo, np.linspace(0, 255, photo.size // 3).astype(np.uint8)
                      .reshape(photo.shape[:2])])
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    gray16 = gray.astype(np.uint16) * 257 + 100  # 16-bit, not a multiple of 257
    cmyk = Image.fromarray(photo).convert("CMYK")
    alpha = rgba[:, :, 3:].astype(np.uint32)
    on_white = ((photo * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    la = np.dstack([gray, rgba[:, :, 3]])
    la_on_white = ((gray[:, :, None] * alpha + 255 * (255 - alpha) + 127) // 255)
    return {
        "grayscale": (_encode(Image.fromarray(gray), "PNG"), np.dstack([gray] * 3)),
        "16-bit": (_encode(Image.fromarray(gray16), "PNG"),
                   np.dstack([((gray16.astype(np.int64) + 128) // 257).astype(np.uint8)] * 3)),
        "alpha": (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), on_white),
        "gray+alpha": (_encode(Image.fromarray(la, "LA"), "PNG"),
                       np.repeat(la_on_white.astype(np.uint8), 3, axis=2)),
        "CMYK": (_encode(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))),
        "EXIF-rotated": (_exif_rotated_png(photo), np.rot90(photo, k=-1)),
    }


@pytest.mark.parametrize("kind", ["grayscale", "16-bit", "alpha", "gray+alpha", "CMYK",
                                  "EXIF-rotated"])
def test_unusual_images_become_the_right_sample(person, photo, kind):
    """Stored features equal those of the equivalent upright 8-bit RGB pixels, exactly."""
    encoded, expected = _cases(photo)[kind]
    np.testing.assert_array_equal(load_image(encoded), expected)
    (sample_id,) = [person.add_sample(encoded, "cat")]
    X, _ = person.store.features_and_labels()
    assert [s.id for s in person.store.samples()][-1] == sample_id
    np.testing.assert_array_equal(X[-1], person.features([expected])[0])
    assert np.isfinite(X[-1]).all() and person.counts() == {"seed": 1, "cat": 1}


# -- fuzzing -------------------------------------------------------------------------------
FORMATS = {"JPEG": {"quality": 90}, "PNG": {}, "GIF": {}, "BMP": {}, "TIFF": {},
           "WEBP": {"quality": 80}, "PPM": {}}


@pytest.fixture(scope="module")
def encoded(photo):
    return {fmt: _encode(Image.fromarray(photo), fmt, **kw) for fmt, kw in FORMATS.items()}


edits = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                           st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                 min_size=1, max_size=8)


def _mutate(raw: bytes, changes) -> bytes:
    out = bytearray(raw)
    for how, where, byte in changes:
        at = min(int(len(out) * where), max(len(out) - 1, 0))
        if how == "flip" and out:
            out[at] ^= 1 << (byte % 8)
        elif how == "set" and out:
            out[at] = byte
        elif how == "insert":
            out[at:at] = bytes([byte]) * (1 + byte % 16)
        elif how == "delete":
            del out[at:at + 1 + byte]
        else:
            del out[at:]
    return bytes(out)


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(FORMATS)), changes=edits)
def test_mutated_image_bytes_load_or_raise_bad_input(encoded, fmt, changes):
    raw = _mutate(encoded[fmt], changes)
    limit = 1 << 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixels = load_image(raw, min_size=1, max_pixels=limit)
        except BadInputError:
            return
        fitted = prepare(raw, (SIZE, SIZE), min_size=1, max_pixels=limit)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[0] * pixels.shape[1] <= limit
    assert fitted.shape == (SIZE, SIZE, 3) and fitted.dtype == np.uint8


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(FORMATS)), changes=edits)
def test_mutated_image_through_add_sample_is_stored_whole_or_not_at_all(person, encoded, fmt,
                                                                       changes):
    raw = _mutate(encoded[fmt], changes)
    stored = len(person.store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            person.add_sample(raw, "cat")
        except BadInputError:
            assert len(person.store) == stored
            return
    assert len(person.store) == stored + 1
    X, _ = person.store.features_and_labels()
    assert np.isfinite(X).all()
