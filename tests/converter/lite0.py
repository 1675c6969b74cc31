"""Shared by the converter's tests: EfficientNet-Lite0 built once per session, and the
real photos (scikit-image's bundled data, no download) they run on.

Not a conftest.py: the tests import `conftest` (tests/conftest.py) by name, and a second
conftest.py would shadow it. Test modules import the fixtures from here; the build is
memoized in this module, so it happens once however many modules use it."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from skimage import data

from edgetune.converter.efficientnet import efficientnet_lite0, efficientnet_lite0_torch

ESPRESSO = 967  # ImageNet class index


def rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def photos_by_name() -> dict[str, np.ndarray]:
    photos = {
        name: rgb(getattr(data, name)())
        for name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "clock", "coins")
    }
    photos["motorcycle"] = rgb(data.stereo_motorcycle()[0])
    photos["horse"] = rgb(~data.horse())
    return photos


def resize(array: np.ndarray, size: int = 224) -> np.ndarray:
    im = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def center_square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return array[top : top + s, left : left + s]


def crops(array: np.ndarray, boxes, flip: bool) -> list[np.ndarray]:
    """Crops given as (top, left, size) fractions of the shorter side, 224x224 each."""
    h, w = array.shape[:2]
    s = min(h, w)
    out = []
    for top, left, frac in boxes:
        side = int(s * frac)
        y = int((h - side) * top)
        x = int((w - side) * left)
        crop = array[y : y + side, x : x + side]
        out.append(resize(crop[:, ::-1] if flip else crop))
    return out


def preprocess_torch(pixels: np.ndarray) -> torch.Tensor:
    """Independent of the graph: (pixel - 127) / 128, NHWC -> NCHW."""
    x = torch.from_numpy(pixels.astype(np.float32))
    return ((x - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


def ort_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


_BUILT: dict = {}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Both graphs built once per session into a fresh cache dir (so CI measures the
    first build)."""
    if not _BUILT:
        cache = tmp_path_factory.mktemp("edgetune-cache")
        t0 = time.perf_counter()
        features = efficientnet_lite0(cache)
        t1 = time.perf_counter()
        logits = efficientnet_lite0(cache, with_logits=True)
        t2 = time.perf_counter()
        print(f"\nbuild: features {t1 - t0:.1f} s, logits {t2 - t1:.1f} s")
        _BUILT.update(cache=cache, features=features, logits=logits)
    return _BUILT


@pytest.fixture(scope="session")
def torch_net():
    net = efficientnet_lite0_torch()
    assert not net.training
    return net


