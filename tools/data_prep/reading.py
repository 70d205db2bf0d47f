"""Reading the input: its files, their lines (optionally shuffled), and each line's pairs.

A `.txt` line is one completion and keeps its line break, as the reference reads it
(``\\r\\n`` is read as ``\\n``); blank `.txt` lines are lines too. A `.jsonl` line is an
object or a non-empty list of objects with a completion; blank `.jsonl` lines are skipped.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ir.errors import DataError, Location

INPUT_FORMATS = {".txt": "txt", ".jsonl": "jsonl"}
CATEGORY_KEY = "category"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Pair:
    """One prompt/completion pair; `category` is the jsonl's `category` value, if any."""

    prompt: str | None
    completion: str
    category: str | None = None


@dataclass(frozen=True)
class Line:
    """A raw input line and where it comes from."""

    source: int
    number: int
    raw: bytes


class Malformed(Exception):
    """A line that cannot be used; the message says why."""


@dataclass(frozen=True)
class Inputs:
    """The input files (one, or a folder's, in name order) and their common format."""

    files: tuple[Path, ...]
    format: str

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def location(self, line: Line) -> Location:
        return Location(str(self.files[line.source]), line.number, 1)

    def lines(self, on_bytes: Callable[[int], None]) -> Iterator[Line]:
        """Every line that is data, in order (blank jsonl lines skipped)."""
        skip_blank = self.format == "jsonl"
        for source, path in enumerate(self.files):
            with path.open("rb") as f:
                for number, raw in enumerate(f, 1):
                    on_bytes(len(raw))
                    if not (skip_blank and raw.isspace()):
                        yield Line(source, number, raw)

    def count(self, on_bytes: Callable[[int], None]) -> int:
        return sum(1 for _ in self.lines(on_bytes))


def find_inputs(path: Path) -> Inputs:
    """The input files of `path` (a .txt/.jsonl file, or a folder of them), checked to be usable text."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_FORMATS)
        if not files:
            raise DataError(f"{path}: a folder without .jsonl or .txt files")
        formats = {INPUT_FORMATS[p.suffix.lower()] for p in files}
        if len(formats) > 1:
            raise DataError(f"{path}: mixes .jsonl and .txt files; use one format per input folder")
    elif path.is_file():
        if path.suffix.lower() not in INPUT_FORMATS:
            raise DataError(f"{path}: unsupported input format {path.suffix or '(none)'!r}; expected .txt or .jsonl")
        files = [path]
    else:
        raise DataError(f"input is not a file or folder: {path}")
    for file in files:
        _check_text(file)
    if not any(f.stat().st_size for f in files):
        raise DataError(f"{path}: input is empty")
    return Inputs(tuple(files), INPUT_FORMATS[files[0].suffix.lower()])


def _check_text(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(8192)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if b"\x00" in head:
        raise DataError(f"{path}: binary data, not a text file")


class LineParser:
    """Turns one raw input line into its pairs."""

    def __init__(self, input_format: str, prompt_key: str, completion_key: str):
        self.input_format = input_format
        self.prompt_key = prompt_key
        self.completion_key = completion_key

    def __call__(self, raw: bytes) -> list[Pair]:
        return self._jsonl(raw) if self.input_format == "jsonl" else self._txt(raw)

    @staticmethod
    def _txt(raw: bytes) -> list[Pair]:
        text = _decode(raw)
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        if "\x00" in text:
            raise Malformed("binary data (NUL byte)")
        return [Pair(None, text)]

    def _jsonl(self, raw: bytes) -> list[Pair]:
        try:
            value = json.loads(_decode(raw))
        except json.JSONDecodeError as err:
            raise Malformed(f"bad JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise Malformed("JSON nested too deeply") from None
        if isinstance(value, dict):
            pairs = [self._pair(value)]
        elif isinstance(value, list) and value:
            pairs = [self._pair(item) for item in value]
        else:
            raise Malformed("expected a JSON object or a non-empty list of objects")
        if _SURROGATE_ESCAPE.search(raw):
            _check_encodable(pairs)
        return pairs

    def _pair(self, item: Any) -> Pair:
        if not isinstance(item, dict):
            raise Malformed(f"expected an object with {self.completion_key!r}, got {type(item).__name__}")
        if self.completion_key not in item:
            raise Malformed(f"missing key {self.completion_key!r}")
        prompt, completion = item.get(self.prompt_key, ""), item[self.completion_key]
        for key, text in ((self.prompt_key, prompt), (self.completion_key, completion)):
            if not isinstance(text, str):
                raise Malformed(f"{key!r} must be a string, got {type(text).__name__}")
        category = item.get(CATEGORY_KEY)
        if category is not None and not isinstance(category, str):
            raise Malformed(f"{CATEGORY_KEY!r} must be a string, got {type(category).__name__}")
        return Pair(prompt, completion, category)


def _decode(raw: bytes) -> str:
    """A line as text (a leading byte-order mark dropped)."""
    try:
        return raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        raise Malformed(f"not UTF-8 text (byte {err.start + 1})") from None


def _check_encodable(pairs: list[Pair]) -> None:
    for pair in pairs:
        try:
            (pair.prompt or "").encode("utf-8")
            pair.completion.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("lone surrogate escape in a string") from None


# ---------------------------------------------------------------- shuffling

def deal_into_buckets(lines: Iterator[Line], folder: Path, num_buckets: int, rng: np.random.Generator) -> int:
    """Pass one of the shuffle: each line, prefixed by where it comes from, into a random bucket."""
    folder.mkdir()
    files = [(folder / f"{b}.lines").open("wb") for b in range(num_buckets)]
    count = 0
    try:
        for block in _blocks(lines, 8192):
            for line, bucket in zip(block, rng.integers(0, num_buckets, size=len(block)).tolist()):
                files[bucket].write(b"%d\t%d\t%d\t%s" % (line.source, line.number, len(line.raw), line.raw))
            count += len(block)
    finally:
        for f in files:
            f.close()
    return count


def read_buckets(folder: Path, num_buckets: int, rng: np.random.Generator,
                 on_bytes: Callable[[int], None]) -> Iterator[Line]:
    """Pass two of the shuffle: each bucket permuted in memory, then removed."""
    for b in range(num_buckets):
        file = folder / f"{b}.lines"
        data = file.read_bytes()
        file.unlink()
        on_bytes(len(data))
        records = _records(data)
        del data
        for i in rng.permutation(len(records)).tolist():
            yield records[i]


def _records(data: bytes) -> list[Line]:
    """The lines of a bucket: each `source<TAB>number<TAB>length<TAB>` and its raw bytes."""
    records, pos = [], 0
    while pos < len(data):
        start = pos
        for _ in range(3):
            start = data.index(b"\t", start) + 1
        source, number, length = data[pos:start - 1].split(b"\t")
        pos = start + int(length)
        records.append(Line(int(source), int(number), data[start:pos]))
    return records


def _blocks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block
