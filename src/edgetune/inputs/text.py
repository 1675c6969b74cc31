"""Kind ``text``: a text (a string, UTF-8 bytes or a ``.txt`` file) -> one row of token
ids and attention mask for a text base: int64 ``[2, max_length]``.

The manifest's input says what the base takes (docs/bundle-format.md)::

    {"kind": "text", "name": "input_ids", "dtype": "int64", "shape": [null, 128],
     "tokenizer": "tokenizer.json", "max_length": 128,
     "input_ids": "input_ids", "attention_mask": "attention_mask"}

How a text becomes that row, in order:

1. read: a ``str`` as is; ``bytes`` decoded as UTF-8; a path (``Path`` or an existing
   ``.txt`` file) read as UTF-8: one file is one example;
2. whitespace is normalized: every run of whitespace (newlines, tabs) becomes one
   space, and the ends are stripped; an empty text is refused (BadInputError);
3. tokenized with the bundle's ``tokenizer.json`` (the ``tokenizers`` library), padded
   or truncated to ``max_length`` tokens. A truncated text is counted in
   :attr:`TextPreparer.truncated` and reported with a :class:`TruncatedTextWarning`.

Row 0 holds the ids, row 1 the mask; :meth:`TextPreparer.feeds` splits a stack of rows
into the base's two inputs. The tokenizer is read from the bundle: pass
``files=bundle`` (an :class:`edgetune.bundle.Bundle`, a mapping of file names to bytes,
or the bundle's directory) to :func:`edgetune.inputs.preparer_for`. ``tokenizers`` is
imported on first use (``pip install 'edgetune[text]'``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgetune.errors import BadInputError, BundleError
from edgetune.inputs import Preparer, describe_input, optional_import

__all__ = ["TEXT_EXTENSIONS", "TextPreparer", "TruncatedTextWarning", "normalize_text"]

TEXT_EXTENSIONS = frozenset({".txt"})
#: Longer inputs are refused before tokenizing (memory): 1 MB of text.
MAX_CHARS = 1 << 20
_INSTALL = "pip install 'edgetune[text]'"
_SPACE = re.compile(r"\s+")


class TruncatedTextWarning(UserWarning):
    """A text had more tokens than the bundle's ``max_length``; the end was cut."""


def normalize_text(text: str) -> str:
    """Runs of whitespace -> one space, ends stripped."""
    return _SPACE.sub(" ", text).strip()


class TextPreparer(Preparer):
    kind = "text"
    suffixes = TEXT_EXTENSIONS
    noun = "text"

    def __init__(self, spec: Mapping, **options):
        super().__init__(spec, **options)
        self.dtype = np.dtype("int64")
        try:
            self.max_length = int(self.spec.get("max_length") or self.spec["shape"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise BundleError("manifest.json: input.max_length of a text bundle must be a "
                              "number of tokens") from None
        self.shape = (2, self.max_length)
        self.input_ids = self.spec.get("input_ids", "input_ids")
        self.attention_mask = self.spec.get("attention_mask", "attention_mask")
        self.tokenizer_file = self.spec.get("tokenizer", "tokenizer.json")
        self._files = options.get("files")
        self._tokenizer = None
        #: How many texts were truncated to max_length since this preparer was made.
        self.truncated = 0
        #: Whether the last prepared text was truncated.
        self.last_truncated = False

    # -- the tokenizer ------------------------------------------------------------------
    def _tokenizer_bytes(self) -> bytes:
        files, name = self._files, self.tokenizer_file
        if files is None:
            raise BundleError(f"the text preparer needs the bundle's {name}: pass "
                              f"files=bundle to preparer_for()")
        if hasattr(files, "file"):
            return files.file(name)
        if isinstance(files, Mapping):
            if name not in files:
                raise BundleError(f"the bundle has no {name}")
            return bytes(files[name])
        path = Path(files) / name
        try:
            return path.read_bytes()
        except OSError as e:
            raise BundleError(f"cannot read the bundle's {name} ({e})") from None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            lib = optional_import("tokenizers", "tokenizing text", _INSTALL)
            try:
                tok = lib.Tokenizer.from_str(self._tokenizer_bytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError, Exception) as e:  # noqa: BLE001
                if isinstance(e, BundleError | BadInputError):
                    raise
                raise BundleError(f"{self.tokenizer_file} is not a tokenizers file "
                                  f"({e})") from None
            tok.enable_truncation(self.max_length)
            pad_id = tok.token_to_id("[PAD]")
            tok.enable_padding(length=self.max_length, pad_id=0 if pad_id is None else pad_id,
                               pad_token="[PAD]")
            self._tokenizer = tok
        return self._tokenizer

    # -- preparing ----------------------------------------------------------------------
    def read(self, item) -> str:
        """The normalized text of an input (see the module docstring)."""
        name = "text" if isinstance(item, str) and not _is_text_file(item) else \
            describe_input(item, "text")
        if isinstance(item, os.PathLike) or (isinstance(item, str) and _is_text_file(item)):
            path = Path(item)
            if not path.is_file():
                raise BadInputError(f"{name} does not exist")
            if path.stat().st_size > 4 * MAX_CHARS:
                raise BadInputError(f"{name} is larger than {4 * MAX_CHARS} bytes")
            item = path.read_bytes()
        if isinstance(item, (bytes, bytearray, memoryview)):
            try:
                item = bytes(item).decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise BadInputError(f"{name} is not UTF-8 text ({e})") from None
        if not isinstance(item, str):
            raise BadInputError(f"cannot read a text from {name}; pass a string, UTF-8 bytes "
                                f"or a .txt file")
        if len(item) > MAX_CHARS:
            raise BadInputError(f"{name}: {len(item)} characters is longer than the limit "
                                f"of {MAX_CHARS}")
        text = normalize_text(item)
        if not text:
            raise BadInputError(f"{name} is empty (only whitespace); give a text with words")
        return text

    def prepare(self, item) -> np.ndarray:
        return self.encode(item)[0]

    def encode(self, item) -> tuple[np.ndarray, bool]:
        """(the row :meth:`prepare` gives, whether the text was truncated): the flag of
        this one text, which :attr:`last_truncated` cannot give a caller whose preparer
        other threads share (Personalizer.predict puts it in the answer)."""
        text = self.read(item)
        encoding = self.tokenizer.encode(text)
        cut = bool(encoding.overflowing)
        self.last_truncated = cut
        if cut:
            self.truncated += 1
            warnings.warn(f"{self.describe(item)} has more than {self.max_length} tokens; "
                          f"only the first {self.max_length} are used",
                          TruncatedTextWarning, stacklevel=3)
        return np.array([encoding.ids, encoding.attention_mask], np.int64), cut

    def feeds(self, rows: np.ndarray, inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 3 or rows.shape[1] != 2:
            raise BadInputError(f"text rows have shape {rows.shape}; expected [n, 2, "
                                f"{self.max_length}] from prepare()")
        ids = inputs.get("input_ids", self.input_ids)
        mask = inputs.get("attention_mask", self.attention_mask)
        return {ids: np.ascontiguousarray(rows[:, 0]), mask: np.ascontiguousarray(rows[:, 1])}

    def describe(self, item) -> str:
        if isinstance(item, str) and not _is_text_file(item):
            short = normalize_text(item)
            return f"text {short[:40]!r}{'...' if len(short) > 40 else ''}"
        return describe_input(item, "text")


def _is_text_file(item: str) -> bool:
    """A string is a path when it names a .txt file (existing or not) on one line."""
    return "\n" not in item and len(item) < 4096 and item.lower().endswith(".txt")
