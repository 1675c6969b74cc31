"""The text preparer: strings, bytes and .txt files -> token ids and mask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgetune.converter import text as minilm_text
from edgetune.errors import BadInputError, BundleError
from edgetune.inputs import preparer_for
from edgetune.inputs.text import TextPreparer, TruncatedTextWarning, normalize_text


@pytest.fixture(scope="module")
def tokenizer_bytes():
    return minilm_text.tokenizer_json(32)


@pytest.fixture
def preparer(tokenizer_bytes):
    return preparer_for(minilm_text.text_input_section(32),
                        files={"tokenizer.json": tokenizer_bytes})


def test_kind_and_ids_equal_the_tokenizers_library(preparer):
    import tokenizers

    assert isinstance(preparer, TextPreparer)
    assert preparer.suffixes == {".txt"} and preparer.noun == "text"
    path = minilm_text.model_folder() / "tokenizer.json"
    reference = tokenizers.Tokenizer.from_file(str(path))
    text = "Debugging is twice as hard as writing the code in the first place."
    row = preparer.prepare(text)
    assert row.shape == (2, 32) and row.dtype == np.int64
    expected = reference.encode(text)
    n = sum(expected.attention_mask)
    assert row[0, :n].tolist() == expected.ids[:n]
    assert row[1].tolist() == [1] * n + [0] * (32 - n)
    assert row[0, n:].tolist() == [0] * (32 - n)
    assert preparer.truncated == 0 and not preparer.last_truncated


def test_whitespace_is_normalized(preparer):
    assert normalize_text("  two\n\nlines\tand  spaces \r\n") == "two lines and spaces"
    np.testing.assert_array_equal(preparer.prepare("  the cat\n\tsat  "),
                                  preparer.prepare("the cat sat"))


def test_bytes_and_files_read_as_utf8(preparer, tmp_path):
    text = "Café au lait — naïve résumé"
    file = tmp_path / "quote.txt"
    file.write_text(text + "\n", encoding="utf-8")
    row = preparer.prepare(text)
    np.testing.assert_array_equal(preparer.prepare(text.encode("utf-8")), row)
    np.testing.assert_array_equal(preparer.prepare(file), row)
    np.testing.assert_array_equal(preparer.prepare(str(file)), row)
    with pytest.raises(BadInputError, match="not UTF-8"):
        preparer.prepare(b"\xff\xfe\xfa")
    with pytest.raises(BadInputError, match="does not exist"):
        preparer.prepare(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("empty", ["", "   ", "\n\t\n", b" "])
def test_empty_text_is_refused(preparer, empty):
    with pytest.raises(BadInputError, match="empty") as error:
        preparer.prepare(empty)
    assert "file" not in str(error.value)


def test_truncation_is_reported(preparer):
    long = " ".join(["word"] * 100)
    with pytest.warns(TruncatedTextWarning, match="more than 32 tokens"):
        row = preparer.prepare(long)
    assert preparer.truncated == 1 and preparer.last_truncated
    assert row[1].sum() == 32 and row[0, -1] == 102  # [SEP] closes a truncated text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preparer.prepare("short")
    assert preparer.truncated == 1 and not preparer.last_truncated


def test_feeds_split_ids_and_mask(preparer):
    rows = preparer.batch(["one", "two words"])
    assert rows.shape == (2, 2, 32)
    feeds = preparer.feeds(rows, {"input_ids": "ids", "attention_mask": "mask"})
    np.testing.assert_array_equal(feeds["ids"], rows[:, 0])
    np.testing.assert_array_equal(feeds["mask"], rows[:, 1])
    with pytest.raises(BadInputError, match="single"):
        preparer.batch("one text")


def test_needs_the_bundle_tokenizer():
    preparer = preparer_for(minilm_text.text_input_section(32))
    assert preparer.kind == "text"  # listing folders needs no tokenizer
    with pytest.raises(BundleError, match="tokenizer.json"):
        preparer.prepare("hello")
    with pytest.raises(BadInputError):
        preparer.prepare(42)
