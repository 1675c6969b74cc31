"""Int8 bases: calibrated on images prepared as the device prepares them."""

from __future__ import annotations

import collections
import time

import lite0
import numpy as np
import onnx
import pytest
from lite0 import (
    ESPRESSO,
    center_square,
    crops,
    ort_session,
    photos_by_name,
    resize,
    rgb,
)
from PIL import Image
from skimage import data

from edgetune.converter import quantize

# ------------------------------------------------------------------------ int8

# The session fixtures of lite0 (assigned, not imported: see lite0's docstring).
built = lite0.built



def _calibration_images() -> list[np.ndarray]:
    """About 20 images: crops and flips of the bundled photos."""
    boxes = [(0.5, 0.5, 1.0), (0.2, 0.3, 0.7)]
    out = []
    for i, photo in enumerate(photos_by_name().values()):
        out += crops(photo, boxes, flip=bool(i % 2))
        out += crops(photo, [(0.8, 0.7, 0.8)], flip=not i % 2)
    return out


def _evaluation_images() -> list[np.ndarray]:
    """60 other crops (and flips) of the colour photos than the calibration ones. The grey
    or synthetic pictures are left out: ImageNet has no class for them, so their top-1
    is a near tie (p1 - p2 < 0.02) that any rounding flips."""
    boxes = [(0.5, 0.5, 0.9), (0.0, 0.0, 0.75), (1.0, 1.0, 0.75), (0.5, 0.5, 0.6)]
    boxes += [(0.3, 0.7, 0.8), (0.5, 0.5, 1.0)]
    photos = photos_by_name()
    colour = [photos[n] for n in ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")]
    colour.append(rgb(data.stereo_motorcycle()[1]))
    out = []
    for photo in colour:
        out += crops(photo, boxes, flip=False) + crops(photo, boxes[:4], flip=True)
    return out


def _top1_agreement(fp32_path, int8_path, images, batch_size=8) -> float:
    """Fraction of images (uint8 [224, 224, 3]) on which both models give the same top-1."""
    s32, s8 = ort_session(fp32_path), ort_session(int8_path)
    same = 0
    for start in range(0, len(images), batch_size):
        batch = np.stack(images[start : start + batch_size])
        a = s32.run(None, {"image": batch})[0]
        b = s8.run(None, {"image": batch})[0]
        same += int((a.argmax(axis=-1) == b.argmax(axis=-1)).sum())
    return same / len(images)


def test_int8(built, tmp_path):
    calib = tmp_path / "calibration"
    (calib / "some-class").mkdir(parents=True)
    images = _calibration_images()
    for i, image in enumerate(images):
        folder = calib / "some-class" if i % 2 else calib
        Image.fromarray(image).save(folder / f"img{i:02d}.{'png' if i % 3 else 'jpg'}")
    (calib / "notes.txt").write_text("not an image")

    t0 = time.perf_counter()
    report = quantize.quantize_base(built["logits"], calib, tmp_path / "int8.onnx")
    seconds = time.perf_counter() - t0
    assert report["calibration_images"] == len(images) >= 20
    assert report["fp32_bytes"] == built["logits"].stat().st_size
    assert report["int8_bytes"] == (tmp_path / "int8.onnx").stat().st_size
    assert report["int8_bytes"] < 0.4 * report["fp32_bytes"]

    quantized = onnx.load(str(tmp_path / "int8.onnx"))
    ops = collections.Counter(n.op_type for n in quantized.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert quantized.ir_version <= 10
    inp = quantized.graph.input[0]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8

    evaluation = _evaluation_images()
    agreement = _top1_agreement(built["logits"], tmp_path / "int8.onnx", evaluation)
    print(
        f"\nint8: {report['fp32_bytes']} -> {report['int8_bytes']} bytes, "
        f"quantized in {seconds:.1f} s, top-1 agreement {agreement:.3f} "
        f"on {len(evaluation)} images"
    )
    assert agreement >= 0.95

    # Still espresso.
    (logits,) = ort_session(tmp_path / "int8.onnx").run(
        None, {"image": resize(center_square(data.coffee()))[None]}
    )
    assert logits.argmax() == ESPRESSO


def test_quantize_base_needs_images(built, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        quantize.quantize_base(built["features"], tmp_path / "empty", tmp_path / "x.onnx")


def test_calibration_pixels_are_what_the_device_prepares(tmp_path):
    """Calibration sees exactly the pixels the runtime feeds the base: centre crop and
    Lanczos (edgetune.inputs.image.prepare, as the Personalizer calls it), not a stretch."""
    from edgetune.inputs.image import prepare
    from edgetune.runtime import prepare as runtime_prepare

    assert runtime_prepare is prepare
    photo = data.chelsea()  # 300 x 451: not square, so a stretch would differ
    (tmp_path / "cat").mkdir()
    Image.fromarray(photo).save(tmp_path / "cat" / "chelsea.png")
    Image.fromarray(photo[:150, :100]).save(tmp_path / "tall.jpg", quality=90)
    (tmp_path / "notes.txt").write_text("not an image")
    files = quantize.calibration_files(tmp_path)
    assert [f.name for f in files] == ["chelsea.png", "tall.jpg"]
    for size in ((224, 224), (96, 160)):  # (height, width) of the base input
        pixels = quantize.prepare_pixels(files, size)
        assert len(pixels) == 2
        for file, got in zip(files, pixels, strict=True):
            expected = prepare(file, (size[1], size[0]))
            assert got.shape == (*size, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)
        stretched = np.asarray(Image.fromarray(photo).resize((size[1], size[0]),
                                                             Image.Resampling.BILINEAR))
        assert not np.array_equal(pixels[0], stretched)
