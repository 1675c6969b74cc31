"""edgetune.inputs.image on real photos (scikit-image's bundled images) and real files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetune.errors import BadInputError
from edgetune.inputs.image import (
    list_image_folder,
    load_image,
    prepare,
    prepare_batch,
)

data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return data.chelsea()  # 300 x 451 x 3, a non-square RGB photo


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return data.camera()  # 512 x 512, grayscale


def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


def _jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=95, **kw)
    return b.getvalue()


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- sources


def test_array_pil_path_and_bytes_give_the_same_pixels(tmp_path, chelsea):
    png = _save(tmp_path, "cat.png", Image.fromarray(chelsea))
    from_array = load_image(chelsea)
    assert from_array.dtype == np.uint8 and from_array.shape == (300, 451, 3)
    np.testing.assert_array_equal(from_array, chelsea)
    np.testing.assert_array_equal(load_image(Image.fromarray(chelsea)), chelsea)
    np.testing.assert_array_equal(load_image(png), chelsea)
    np.testing.assert_array_equal(load_image(str(png)), chelsea)
    np.testing.assert_array_equal(load_image(png.read_bytes()), chelsea)


def test_pixels_already_at_the_size_are_what_pillow_would_give(chelsea):
    """An array at the target size skips Pillow (whose resize to the same size and box
    is a copy): the same pixels, in a new array; a PIL image of it gives them too."""
    square = np.ascontiguousarray(chelsea[:224, 100:324])
    out = prepare(square, (224, 224))
    np.testing.assert_array_equal(out, square)
    assert not np.shares_memory(out, square)
    np.testing.assert_array_equal(prepare(Image.fromarray(square), (224, 224)), square)
    np.testing.assert_array_equal(prepare(square[:, ::-1], (224, 224)), square[:, ::-1])
    with pytest.raises(BadInputError, match="need at least 300x300"):
        prepare(square, (224, 224), min_size=300)


def test_jpeg_file_is_close_to_the_photo(tmp_path, chelsea):
    p = tmp_path / "cat.jpg"
    p.write_bytes(_jpeg_bytes(chelsea))
    out = load_image(p)
    assert out.shape == chelsea.shape
    assert _mean_abs_diff(out, chelsea) < 4


def test_grayscale_png_and_2d_array_become_three_equal_channels(tmp_path, camera):
    p = _save(tmp_path, "camera.png", Image.fromarray(camera))
    for src in (p, camera, camera[:, :, None]):
        out = load_image(src)
        assert out.shape == (512, 512, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], camera)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path, camera):
    sixteen = camera.astype(np.uint16) * 257  # 0..255 -> 0..65535
    img = Image.fromarray(sixteen)
    assert img.mode.startswith("I;16")
    p = _save(tmp_path, "camera16.png", img)
    out = load_image(p)
    np.testing.assert_array_equal(out[:, :, 0], camera)  # round(v / 257) recovers 8 bits
    assert out.max() == camera.max() and out.min() == camera.min()


def test_int32_mode_image_is_read_as_sixteen_bit(camera):
    img = Image.fromarray(camera.astype(np.int32) * 257, mode="I")
    np.testing.assert_array_equal(load_image(img)[:, :, 1], camera)


def test_rgba_is_composited_on_white(tmp_path, chelsea):
    rgba = np.dstack([chelsea, np.full(chelsea.shape[:2], 255, np.uint8)])
    rgba[:100, :, :3] = 0  # transparent region with black color channels
    rgba[:100, :, 3] = 0
    rgba[100:150, :, 3] = 128  # half transparent
    p = _save(tmp_path, "cat.png", Image.fromarray(rgba, "RGBA"))
    for src in (p, rgba):
        out = load_image(src)
        assert out.shape == (300, 451, 3)
        assert (out[:100] == 255).all()  # white, not the undefined black
        np.testing.assert_array_equal(out[150:], chelsea[150:])
        half = (chelsea[100:150].astype(np.int32) * 128 + 255 * 127 + 127) // 255
        np.testing.assert_array_equal(out[100:150], half)


def test_real_rgba_logo_file(tmp_path):
    logo = data.logo()  # a real 500 x 500 RGBA PNG (opaque)
    assert logo.shape == (500, 500, 4)
    p = _save(tmp_path, "logo.png", Image.fromarray(logo, "RGBA"))
    out = load_image(p)
    opaque = logo[:, :, 3] == 255
    np.testing.assert_array_equal(out[opaque], logo[:, :, :3][opaque])


def test_gray_with_alpha_and_palette_with_transparency(tmp_path, chelsea):
    la = Image.fromarray(chelsea).convert("LA")
    out = load_image(_save(tmp_path, "la.png", la))
    assert out.shape == (300, 451, 3)
    pal = Image.fromarray(chelsea).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    assert pal.mode == "P"
    out = load_image(_save(tmp_path, "pal.png", pal))
    assert _mean_abs_diff(out, chelsea) < 12
    # A GIF whose palette index 0 is transparent: those pixels come out white.
    small = pal.copy()
    small.info["transparency"] = 0
    gif = _save(tmp_path, "pal.gif", small, transparency=0)
    out = load_image(gif)
    idx = np.asarray(pal)
    assert (out[idx == 0] == 255).all()


def test_cmyk_jpeg(tmp_path, chelsea):
    p = _save(tmp_path, "cmyk.jpg", Image.fromarray(chelsea).convert("CMYK"), quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = load_image(p)
    assert out.shape == (300, 451, 3)
    assert _mean_abs_diff(out, chelsea) < 6


def test_exif_orientation_is_applied(tmp_path, chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    p = _save(tmp_path, "rotated.jpg", Image.fromarray(chelsea), exif=exif, quality=95)
    out = load_image(p)
    assert out.shape == (451, 300, 3)  # the 451-wide landscape photo now stands upright
    expected = np.rot90(chelsea, k=-1)  # clockwise
    assert _mean_abs_diff(out, expected) < 4
    assert _mean_abs_diff(out, np.rot90(chelsea, k=1)) > 20  # not the other way round


def test_rgba_and_wide_arrays_and_pil_modes_accepted(chelsea):
    assert load_image(Image.fromarray(chelsea).convert("1")).shape == (300, 451, 3)
    assert load_image(Image.fromarray(chelsea).convert("YCbCr")).shape == (300, 451, 3)
    # Non-contiguous views work.
    assert load_image(chelsea[:, ::-1]).shape == (300, 451, 3)


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("fmt, suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files_are_rejected(tmp_path, chelsea, fmt, suffix):
    b = io.BytesIO()
    Image.fromarray(chelsea).save(b, fmt)
    p = tmp_path / f"cut.{suffix}"
    p.write_bytes(b.getvalue()[: len(b.getvalue()) // 2])
    with pytest.raises(BadInputError, match="truncated or corrupted") as e:
        load_image(p)
    assert str(p) in str(e.value)
    with pytest.raises(BadInputError, match="image bytes"):
        load_image(p.read_bytes())


def test_corrupted_jpeg_header_is_rejected(tmp_path, chelsea):
    raw = bytearray(_jpeg_bytes(chelsea))
    raw[2:40] = b"\x00" * 38
    p = tmp_path / "broken.jpg"
    p.write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="broken.jpg"):
        load_image(p)


def test_zero_byte_file_and_empty_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty\.jpg is empty \(0 bytes\)"):
        load_image(p)
    with pytest.raises(BadInputError, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n" * 20)
    with pytest.raises(BadInputError, match=r"notes\.jpg: not a readable image file"):
        load_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(BadInputError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_rejected_before_decoding(tmp_path, monkeypatch):
    # 8000 x 6000 = 48 MP declared in the header, ~100 bytes on disk: above our default
    # 40 MP limit but below Pillow's own, so only our check can stop it.
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(8000, 6000))
    assert p.stat().st_size < 200
    with pytest.raises(BadInputError, match=r"8000x6000 \(48,000,000 pixels\).*limit") as e:
        load_image(p)
    assert "bomb.png" in str(e.value)
    # Not relying on Pillow's global setting, which any code can change.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(BadInputError, match="decompression bomb"):
        load_image(p)
    with pytest.raises(BadInputError, match="decompression bomb"):
        load_image(p.read_bytes())
    # A tighter explicit limit applies too.
    p2 = tmp_path / "big.png"
    p2.write_bytes(_png_header_only(2000, 2000))
    with pytest.raises(BadInputError, match="limit of 1,000,000 pixels"):
        load_image(p2, max_pixels=1_000_000)


def test_giant_declared_size_is_rejected(tmp_path):
    # 100k x 100k: Pillow's own guard fires in Image.open; still a BadInputError.
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadInputError, match="huge.png"):
            load_image(p)


def test_real_large_png_over_a_small_limit(tmp_path):
    # A genuine, fully decodable 3000 x 2000 PNG (mostly empty, so small on disk).
    img = Image.new("L", (3000, 2000), 0)
    p = _save(tmp_path, "large.png", img)
    assert p.stat().st_size < 100_000
    with pytest.raises(BadInputError, match="3000x2000"):
        load_image(p, max_pixels=5_000_000)
    assert load_image(p, max_pixels=6_000_000).shape == (2000, 3000, 3)


def test_too_small_image(tmp_path, chelsea):
    tiny = np.ascontiguousarray(chelsea[:9, :12])
    with pytest.raises(BadInputError, match="image is 12x9; need at least 16x16 pixels"):
        load_image(tiny)
    p = _save(tmp_path, "tiny.png", Image.fromarray(tiny))
    with pytest.raises(BadInputError, match=r"tiny\.png: image is 12x9"):
        load_image(p)
    assert load_image(tiny, min_size=8).shape == (9, 12, 3)


def test_float_and_wrong_dtype_arrays(chelsea):
    with pytest.raises(BadInputError, match="pass uint8 pixels 0..255.*multiply by 255"):
        load_image(chelsea.astype(np.float32) / 255)
    with pytest.raises(BadInputError, match="uint8"):
        load_image(chelsea.astype(np.uint16))
    with pytest.raises(BadInputError, match="uint8"):
        load_image(chelsea > 128)


@pytest.mark.parametrize("shape", [(300, 451, 2), (300, 451, 3, 1), (451,), (2, 300, 451, 3)])
def test_wrong_array_shapes(shape):
    with pytest.raises(BadInputError, match=r"need an HxWx3 RGB array"):
        load_image(np.zeros(shape, np.uint8))


def test_unsupported_input_type():
    with pytest.raises(BadInputError, match="cannot read an image from input of type list"):
        load_image([[1, 2, 3]])


# ----------------------------------------------------------------------------- prepare


def test_prepare_gives_the_base_input(tmp_path, chelsea):
    p = tmp_path / "cat.jpg"
    p.write_bytes(_jpeg_bytes(chelsea))
    out = prepare(p)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # The same as Pillow's own "scale to cover, then center crop" transform.
    from PIL import ImageOps

    ref = np.asarray(ImageOps.fit(Image.fromarray(chelsea), (224, 224), Image.Resampling.LANCZOS))
    assert _mean_abs_diff(prepare(chelsea), ref) < 2


def test_prepare_center_crops_instead_of_squashing():
    # Left third red, middle green, right third blue: a square crop keeps the middle.
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100, 0] = 255
    a[:, 100:200, 1] = 255
    a[:, 200:, 2] = 255
    out = prepare(a, (64, 64)).astype(np.int32)
    assert (out[:, :, 1] > 200).all()
    assert out[:, 4:-4, 0].max() < 40 and out[:, 4:-4, 2].max() < 40
    # A tall image loses its top and bottom.
    tall = np.ascontiguousarray(np.transpose(a, (1, 0, 2)))
    out = prepare(tall, (64, 64)).astype(np.int32)
    assert (out[:, :, 1] > 200).all()


def test_prepare_non_square_size_is_width_height(chelsea):
    out = prepare(chelsea, (96, 48))
    assert out.shape == (48, 96, 3)
    assert prepare(chelsea, 40).shape == (40, 40, 3)
    with pytest.raises(BadInputError, match="size must be"):
        prepare(chelsea, (0, 10))


def test_prepare_batch_mixed_inputs(tmp_path, chelsea, camera):
    p = _save(tmp_path, "camera.png", Image.fromarray(camera))
    batch = prepare_batch([chelsea, p, Image.fromarray(chelsea)], (64, 64))
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], batch[2])
    assert prepare_batch([], (64, 64)).shape == (0, 64, 64, 3)


def test_prepare_batch_names_the_bad_image(tmp_path, chelsea):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    with pytest.raises(BadInputError, match=r"image 1 of 3: .*bad\.jpg"):
        prepare_batch([chelsea, bad, chelsea], (64, 64))
    with pytest.raises(BadInputError, match="takes a list of images"):
        prepare_batch(chelsea, (64, 64))


# ----------------------------------------------------------------------------- folders


def test_list_image_folder(tmp_path, chelsea, camera):
    root = tmp_path / "photos"
    (root / "mug").mkdir(parents=True)
    (root / "cat").mkdir()
    (root / ".git").mkdir()
    (root / "cat" / "b.JPG").write_bytes(_jpeg_bytes(chelsea))
    (root / "cat" / "a.png").write_bytes(b"")  # listed: content is checked on load
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    Image.fromarray(camera).save(root / "mug" / "1.png")
    (root / "README.md").write_text("top-level file")
    with pytest.warns(UserWarning) as record:
        pairs = list_image_folder(root)
    assert pairs == [
        (root / "cat" / "a.png", "cat"),
        (root / "cat" / "b.JPG", "cat"),
        (root / "mug" / "1.png", "mug"),
    ]
    messages = " | ".join(str(w.message) for w in record)
    assert "notes.txt" in messages and "README.md" in messages
    assert ".DS_Store" not in messages and ".git" not in messages
    assert load_image(pairs[1][0]).shape == (300, 451, 3)


def test_list_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match=r"has no class folders.*<class>/<image>"):
        list_image_folder(empty)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (40, 40)).save(flat / "a.png")
    with pytest.warns(UserWarning, match="a.png"):
        with pytest.raises(BadInputError, match="no class folders"):
            list_image_folder(flat)
    no_images = tmp_path / "noimg"
    (no_images / "cat").mkdir(parents=True)
    with pytest.warns(UserWarning, match="holds no images"):
        with pytest.raises(BadInputError, match="class folders but no images"):
            list_image_folder(no_images)
    with pytest.raises(BadInputError, match="does not exist"):
        list_image_folder(tmp_path / "missing")
    with pytest.raises(BadInputError, match="is not a folder"):
        list_image_folder(flat / "a.png")


def test_formats_that_run_external_programs_are_not_decoded(tmp_path):
    # An EPS file would make Pillow call Ghostscript; it is refused as "not an image".
    p = tmp_path / "evil.jpg"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    with pytest.raises(BadInputError, match="not a readable image file"):
        load_image(p)


def test_bmp_webp_tiff_and_pgm(tmp_path, chelsea, camera):
    for name in ("cat.bmp", "cat.tiff"):
        p = _save(tmp_path, name, Image.fromarray(chelsea))
        np.testing.assert_array_equal(load_image(p), chelsea)
    p = _save(tmp_path, "cat.webp", Image.fromarray(chelsea), quality=95)
    assert _mean_abs_diff(load_image(p), chelsea) < 6
    p = _save(tmp_path, "camera.pgm", Image.fromarray(camera))
    np.testing.assert_array_equal(load_image(p)[:, :, 2], camera)
