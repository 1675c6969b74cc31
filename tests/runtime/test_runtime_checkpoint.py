"""edgetune.runtime.checkpoint: verified, atomic safetensors checkpoints."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest
import safetensors.numpy

from edgetune.runtime import (
    BadInputError,
    CheckpointDir,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    load_checkpoint,
    save_checkpoint,
)

EXPECTED = {
    "W": ((32, "classes"), "float32"),
    "b": (("classes",), np.float32),
    "m.W": ((32, None), "float32"),
    "step": ((), "int64"),
}


def _tensors(classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W": rng.standard_normal((32, classes)).astype(np.float32),
        "b": rng.standard_normal(classes).astype(np.float32),
        "m.W": np.zeros((32, classes), np.float32),
        "step": np.array(17, np.int64),
    }


def _flip(path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _header_len(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_round_trip(tmp_path):
    t = _tensors()
    p = save_checkpoint(tmp_path / "c.safetensors", t, {"epoch": "3", "bundle": "abc"})
    got, meta = load_checkpoint(p, EXPECTED)
    assert meta == {"epoch": "3", "bundle": "abc"}  # reserved keys are not returned
    assert set(got) == set(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape
        np.testing.assert_array_equal(got[k], t[k])
    # Any safetensors reader can read it; the format tag and hash are in the metadata.
    from safetensors import safe_open

    with safe_open(str(p), framework="np") as f:
        raw_meta = f.metadata()
    assert raw_meta["edgetune.format"] == "edgetune.checkpoint"
    assert raw_meta["edgetune.format_version"] == "1"
    assert len(raw_meta["edgetune.sha256"]) == 64


def test_more_dtypes_and_non_contiguous_input(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]  # a strided view
    t = {"a": a, "mask": np.array([True, False]), "u8": np.arange(5, dtype=np.uint8)}
    got, meta = load_checkpoint(save_checkpoint(tmp_path / "x.safetensors", t))
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["mask"], [True, False])
    assert meta == {}


def test_no_temp_files_left(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", _tensors())
    save_checkpoint(tmp_path / "c.safetensors", _tensors(seed=1))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    got, _ = load_checkpoint(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(got["W"], _tensors(seed=1)["W"])


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors())
    with pytest.raises(BadInputError, match="dtype object"):
        save_checkpoint(p, {"W": np.array([object()])})
    with pytest.raises(BadInputError, match="reserved"):
        save_checkpoint(p, _tensors(), {"edgetune.sha256": "x"})
    with pytest.raises(BadInputError, match=r"str\(\)"):
        save_checkpoint(p, _tensors(), {"epoch": 3})
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.safetensors"]
    load_checkpoint(p)


def test_flipped_data_byte_is_detected(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors())
    _flip(p, 8 + _header_len(p) + 5)  # a byte of tensor data
    with pytest.raises(CorruptCheckpointError, match="does not match the recorded"):
        load_checkpoint(p)


def test_changed_metadata_or_dtype_is_detected(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors(), {"epoch": "3"})
    raw = p.read_bytes()
    # Same length edits inside the JSON header that keep it valid JSON.
    for old, new in [(b'"epoch":"3"', b'"epoch":"4"'), (b'"I64"', b'"F64"')]:
        assert old in raw
        p.write_bytes(raw.replace(old, new))
        with pytest.raises(CorruptCheckpointError):
            load_checkpoint(p)


def test_flipped_header_byte_is_detected(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors())
    n = _header_len(p)
    for offset in (0, 3, 8, 8 + n // 2, 8 + n - 2):
        q = tmp_path / f"h{offset}.safetensors"
        q.write_bytes(p.read_bytes())
        _flip(q, offset)
        with pytest.raises(CorruptCheckpointError):
            load_checkpoint(q)


@pytest.mark.parametrize("keep", [0, 7, 100, -3, -1])
def test_truncated_is_detected(tmp_path, keep):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors())
    raw = p.read_bytes()
    p.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(CorruptCheckpointError, match="truncated|too short|bytes long"):
        load_checkpoint(p)


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "c.safetensors"
    p.write_text("hello, I am a text file pretending to be a checkpoint\n" * 10)
    with pytest.raises(CorruptCheckpointError, match="not a safetensors file"):
        load_checkpoint(p)
    p.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="0 bytes long"):
        load_checkpoint(p)
    # Trailing garbage after a valid file.
    q = save_checkpoint(tmp_path / "d.safetensors", _tensors())
    q.write_bytes(q.read_bytes() + b"garbage")
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(q)


def test_plain_safetensors_file_is_incompatible(tmp_path):
    p = tmp_path / "params.safetensors"
    p.write_bytes(safetensors.numpy.save(_tensors()))
    with pytest.raises(IncompatibleCheckpointError, match="not an edgetune checkpoint"):
        load_checkpoint(p)


def test_newer_format_version_is_incompatible(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors())
    raw = p.read_bytes()
    old = b'"edgetune.format_version":"1"'
    assert old in raw
    p.write_bytes(raw.replace(old, b'"edgetune.format_version":"2"'))
    with pytest.raises(IncompatibleCheckpointError, match="format version 2.*upgrade"):
        load_checkpoint(p)


def test_expected_shapes_and_dtypes(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors(classes=5))
    load_checkpoint(p, EXPECTED)  # "classes" binds to 5 everywhere
    cases = [
        ({**EXPECTED, "W": ((64, "classes"), "float32")}, r"'W' has shape \(32, 5\); expected"),
        ({**EXPECTED, "b": (("classes",), "float64")}, "'b' has dtype float32; expected float64"),
        ({**EXPECTED, "b": ((5, 1), "float32")}, r"'b' has shape \(5,\)"),
        ({k: v for k, v in EXPECTED.items() if k != "step"}, r"unexpected tensors \['step'\]"),
        ({**EXPECTED, "v.W": ((32, None), "float32")}, r"missing tensors \['v.W'\]"),
    ]
    for expected, msg in cases:
        with pytest.raises(IncompatibleCheckpointError, match=msg):
            load_checkpoint(p, expected)
    # A named dim must agree between tensors.
    t = _tensors(classes=5)
    t["b"] = np.zeros(4, np.float32)
    q = save_checkpoint(tmp_path / "d.safetensors", t)
    with pytest.raises(IncompatibleCheckpointError, match="classes=4 but tensor 'W' has classes=5"):
        load_checkpoint(q, EXPECTED)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- CheckpointDir


def test_checkpoint_dir_keeps_the_last_two(tmp_path):
    d = CheckpointDir(tmp_path / "ckpts")
    assert d.latest() is None
    paths = [d.save(_tensors(seed=i), {"epoch": str(i)}) for i in range(4)]
    assert [p.name for p in paths] == [f"ckpt-{i:06d}.safetensors" for i in range(1, 5)]
    assert [p.name for p in d.paths()] == ["ckpt-000003.safetensors", "ckpt-000004.safetensors"]
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == [
        "ckpt-000003.safetensors",
        "ckpt-000004.safetensors",
    ]
    c = d.latest(EXPECTED)
    assert c is not None and c.number == 4 and c.meta == {"epoch": "3"}
    np.testing.assert_array_equal(c.tensors["W"], _tensors(seed=3)["W"])


def test_latest_falls_back_when_the_newest_is_corrupt(tmp_path):
    d = CheckpointDir(tmp_path)
    d.save(_tensors(seed=1), {"epoch": "1"})
    newest = d.save(_tensors(seed=2), {"epoch": "2"})
    _flip(newest, newest.stat().st_size - 3)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint ckpt-000002"):
        c = d.latest(EXPECTED)
    assert c.number == 1 and c.meta == {"epoch": "1"}
    # Truncated (e.g. the disk filled up) is handled the same way.
    newest.write_bytes(newest.read_bytes()[:50])
    with pytest.warns(UserWarning, match="falling back"):
        assert d.latest().number == 1


def test_save_after_a_corrupt_one_keeps_the_last_good(tmp_path):
    d = CheckpointDir(tmp_path)
    d.save(_tensors(seed=1))  # 1: good
    bad = d.save(_tensors(seed=2))  # 2: will be damaged
    bad.write_bytes(bad.read_bytes()[:-10])
    new = d.save(_tensors(seed=3))  # 3: new; keeps 1 (the last good), deletes 2
    assert new.name == "ckpt-000003.safetensors"
    assert [p.name for p in d.paths()] == ["ckpt-000001.safetensors", "ckpt-000003.safetensors"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged is left: no warning
        assert d.latest().number == 3


def test_all_corrupt_raises(tmp_path):
    d = CheckpointDir(tmp_path)
    for i in range(2):
        p = d.save(_tensors(seed=i))
        p.write_bytes(b"\x00" * 20)
    with pytest.warns(UserWarning):
        with pytest.raises(CorruptCheckpointError, match="no usable checkpoint"):
            d.latest()


def test_incompatible_newest_is_not_silently_skipped(tmp_path):
    d = CheckpointDir(tmp_path)
    d.save(_tensors())
    with pytest.raises(IncompatibleCheckpointError, match="missing tensors"):
        d.latest({**EXPECTED, "extra": ((1,), "float32")})


def test_stale_temp_files_are_ignored_and_cleaned(tmp_path):
    d = CheckpointDir(tmp_path)
    d.save(_tensors(seed=1))
    # A crash in the middle of a write leaves a hidden temp file behind.
    stale = tmp_path / ".ckpt-000002.safetensors.tmp-123-abcd"
    stale.write_bytes(b"half a checkpoint")
    assert d.latest().number == 1
    d.save(_tensors(seed=2))
    assert not stale.exists()
    assert [p.name for p in d.paths()] == ["ckpt-000001.safetensors", "ckpt-000002.safetensors"]
    # Files that are not checkpoints are left alone.
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"a": 1}))
    d.save(_tensors(seed=3))
    assert other.exists()


def test_keep_one(tmp_path):
    d = CheckpointDir(tmp_path, keep=1)
    for i in range(3):
        d.save(_tensors(seed=i))
    assert [p.name for p in d.paths()] == ["ckpt-000003.safetensors"]
    with pytest.raises(BadInputError, match="keep must be at least 1"):
        CheckpointDir(tmp_path, keep=0)
