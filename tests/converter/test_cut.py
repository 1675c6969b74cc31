"""Cutting a model at a tensor (one implementation: edgetune.converter.cut)."""

from __future__ import annotations

import lite0
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from lite0 import center_square, resize
from skimage import data

from edgetune.converter.cut import block_boundaries, extract, onnx_file_base

# The session fixtures of lite0 (assigned, not imported: see lite0's docstring).
built = lite0.built



def test_onnx_file_base_bad_cut(built):
    with pytest.raises(ValueError) as err:
        onnx_file_base(built["features"], cut="blocks.99")
    message = str(err.value)
    assert "'blocks.99'" in message
    assert "blocks.9" in message  # a close name
    assert "features" in message  # the outputs
    with pytest.raises(ValueError, match="constant"):
        onnx_file_base(built["features"], cut="conv_stem.weight")


def test_onnx_file_base_cut(built):
    whole = onnx_file_base(built["features"])
    assert [o.name for o in whole.graph.output] == ["features"]
    assert len(whole.graph.node) == len(onnx.load(str(built["features"])).graph.node)

    cut = onnx_file_base(built["features"], cut="blocks.13")
    assert [o.name for o in cut.graph.output] == ["blocks.13"]
    assert [i.name for i in cut.graph.input] == ["image"]
    assert cut.ir_version == 8
    dims = [d.dim_param or d.dim_value for d in cut.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 192, 7, 7]
    onnx.checker.check_model(cut, full_check=True)
    assert block_boundaries(cut) == ["stem"] + [f"blocks.{i}" for i in range(14)]
    used = {i for n in cut.graph.node for i in n.input}
    assert all(t.name in used for t in cut.graph.initializer)
    assert "conv_head.weight" not in {t.name for t in cut.graph.initializer}

    # It runs, and agrees with the block output of the full graph.
    pixels = resize(center_square(data.chelsea()))[None]
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    (value,) = session.run(None, {"image": pixels})
    assert value.shape == (1, 192, 7, 7)
    full = onnx.load(str(built["features"]))
    full.graph.output.append(onnx.ValueInfoProto(name="blocks.13"))
    ref = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(value, ref.run(["blocks.13"], {"image": pixels})[0], atol=1e-5)


def test_extract_between_two_tensors(built):
    """A block range, from a tensor (a new input, typed) to another: what `last:K` trains."""
    model = onnx.load(str(built["features"]))
    tail = extract(model, ["features"], ["blocks.15"])
    assert [i.name for i in tail.graph.input] == ["blocks.15"]
    dims = [d.dim_param or d.dim_value for d in tail.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [320, 7, 7]
    assert [o.name for o in tail.graph.output] == ["features"]
    onnx.checker.check_model(tail, full_check=True)
    assert {n.op_type for n in tail.graph.node} <= {"Conv", "Clip", "GlobalAveragePool",
                                                     "Flatten"}
    head = extract(model, ["blocks.15"])
    assert [i.name for i in head.graph.input] == ["image"]

    pixels = resize(center_square(data.coffee()))[None]
    run = lambda m, feeds: ort.InferenceSession(  # noqa: E731
        m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    middle = run(head, {"image": pixels})
    np.testing.assert_allclose(run(tail, {"blocks.15": middle}), run(model, {"image": pixels}),
                               atol=1e-5)
    with pytest.raises(ValueError, match="'blocks.99'"):
        extract(model, ["features"], ["blocks.99"])
