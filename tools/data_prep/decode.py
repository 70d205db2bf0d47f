"""`rduflow data-prep decode FILE.hdf5`: a prepared file's rows back as text."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ir.errors import DataError
from runtime.hdf5_data import PADDING, HDF5Data, tokenizer_folder
from runtime.tokenizer import Tokenizer, load_tokenizer


def decode_file(path: Path, tokenizer: str | None = None) -> Iterator[str]:
    """One line per row: its number, then its text with special tokens, padding left out.

    The tokenizer is `tokenizer`, else the `tokenizer/` folder beside the file, else byte-level.
    """
    if not path.is_file():
        raise DataError(f"not found: {path}")
    folder = tokenizer_folder(path)
    tok = load_tokenizer(tokenizer if tokenizer is not None else folder)
    with HDF5Data([path]) as data:
        for number, (ids, types) in enumerate(data):
            yield f"[{number}] {_text(tok, ids[types != PADDING])}"


def _text(tok: Tokenizer, ids: np.ndarray) -> str:
    known = ids[(ids >= 0) & (ids < tok.vocab_size)]
    text = tok.decode(known, skip_special_tokens=False)
    return text.replace("\n", "\\n") + (f" <{len(ids) - len(known)} unknown ids>" if len(known) < len(ids) else "")
