"""Data preparation: text or jsonl in, packed token sequences in HDF5 out.

The road a line takes, streaming (memory is bounded by a batch of about `BATCH_BYTES`
of text, the write buffers and, with shuffling, one bucket; never by the input size):

1. Read. Lines are read one at a time; blank lines are skipped. With ``--shuffle`` a
   first pass deals every line into a random bucket file (``ceil(size /
   bucket_bytes)`` buckets); the second pass reads the buckets one after another and
   permutes each in memory. Scattering into uniformly chosen buckets and then
   permuting each bucket gives a uniformly random order of the whole input.
2. Split. Over the (shuffled) order of the non-blank lines, the first ones go to
   train, the next ``round(n * dev_ratio)`` to dev and the last ``round(n *
   test_ratio)`` to test. Test lines are kept as jsonl (``test/test.jsonl``).
3. Parse. A ``.txt`` line is one completion; a ``.jsonl`` line is a prompt/completion
   object or a list of them kept together in order (one article). A bad line is
   counted, reported with its line number and skipped (``strict`` stops instead).
4. Tokenize. Each pair is its prompt (type 0), its completion (type 1) and EOS; the
   EOS closing a pair inside an article is a completion token, the one closing the
   article is the separator (type 3). Pairs with an empty completion are skipped.
5. Pack, as SambaNova's generative_data_prep: ``full`` concatenates everything and
   cuts it into ``max_seq_length`` rows; ``single`` puts one article per row;
   ``greedy`` puts as many whole articles in a row as fit. An article longer than a
   row is truncated on the left or right, or dropped, as the ``::`` suffix says.
   Rows are padded (type 2); a row without a completion token is dropped.
6. Write. Training rows go round-robin into ``train_{i}_of_{N}.hdf5`` (so the files
   differ by at most one row), dev rows into ``dev_1_of_1.hdf5``: int32 datasets
   ``input_ids`` and ``token_type_ids`` of shape (rows, max_seq_length), chunked,
   gzip-compressed, grown as rows arrive. ``metadata.yaml`` and the tokenizer files
   go beside them. Everything is written into a temporary folder beside the target
   and renamed into place at the end, so a failure leaves no output folder.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
import yaml
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from ir.errors import ConfigError, DataError, Location
from runtime.hdf5_data import COMPLETION, DATASETS, METADATA_FILE, PADDING, PROMPT, SEPARATOR, TOKEN_TYPES
from runtime.tokenizer import Tokenizer, load_tokenizer

STYLES = ("full", "single", "greedy")
OVERFLOWS = ("truncate_left", "truncate_right", "drop")
PACKINGS = ("full",) + tuple(f"{s}::{o}" for s in STYLES[1:] for o in OVERFLOWS)
INPUT_FORMATS = {".txt": "txt", ".jsonl": "jsonl"}
BATCH_BYTES = 1 << 20
BUCKET_BYTES = 32 << 20
CHUNK_BYTES = 256 << 10
MAX_REPORTED_LINES = 10
MAX_RECORDED_LINES = 100
FORMAT_NAME = "rduflow-data-prep"
FORMAT_VERSION = 1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Row = tuple[np.ndarray, np.ndarray]
Pair = tuple[str, str]


@dataclass(frozen=True)
class PrepConfig:
    """Everything `prepare` needs; the CLI flags map one to one."""

    input: Path
    output: Path
    max_seq_length: int
    tokenizer: str | None = None
    packing: str = "full"
    dev_ratio: float = 0.0
    test_ratio: float = 0.0
    num_training_splits: int = 1
    shuffle: bool = False
    seed: int = 0
    prompt_keyword: str = "prompt"
    completion_keyword: str = "completion"
    overwrite: bool = False
    strict: bool = False
    bucket_bytes: int = BUCKET_BYTES

    def __post_init__(self) -> None:
        if self.max_seq_length < 1:
            raise ConfigError(f"--max-seq-length must be at least 1, got {self.max_seq_length}")
        if self.packing not in PACKINGS:
            raise ConfigError(f"unknown --packing {self.packing!r}; choose one of {', '.join(PACKINGS)}")
        for name, ratio in (("--dev-ratio", self.dev_ratio), ("--test-ratio", self.test_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {ratio}")
        if self.dev_ratio + self.test_ratio >= 1.0:
            raise ConfigError("--dev-ratio plus --test-ratio must be below 1: "
                              "no data would be left to train on")
        if self.num_training_splits < 1:
            raise ConfigError(f"--num-training-splits must be at least 1, got {self.num_training_splits}")
        if self.prompt_keyword == self.completion_keyword:
            raise ConfigError("--prompt-keyword and --completion-keyword must differ")

    @property
    def style(self) -> str:
        return self.packing.split("::")[0]

    @property
    def overflow(self) -> str | None:
        return self.packing.split("::")[1] if "::" in self.packing else None


# ---------------------------------------------------------------- reading

class Malformed(Exception):
    """A line that cannot be used; the message says why."""


class LineParser:
    """Turns one raw input line into an article: a list of (prompt, completion)."""

    def __init__(self, input_format: str, prompt_key: str, completion_key: str):
        self.input_format = input_format
        self.prompt_key = prompt_key
        self.completion_key = completion_key

    def __call__(self, raw: bytes) -> list[Pair]:
        return self._jsonl(raw) if self.input_format == "jsonl" else self._txt(raw)

    def test_record(self, raw: bytes, article: list[Pair]) -> str:
        """The jsonl line kept for the test split."""
        if self.input_format == "jsonl":
            return _decode(raw).rstrip("\r\n")
        return json.dumps({self.prompt_key: "", self.completion_key: article[0][1]}, ensure_ascii=False)

    @staticmethod
    def _txt(raw: bytes) -> list[Pair]:
        text = _decode(raw).rstrip("\r\n")
        if "\x00" in text:
            raise Malformed("binary data (NUL byte)")
        return [("", text)]

    def _jsonl(self, raw: bytes) -> list[Pair]:
        try:
            value = json.loads(_decode(raw))
        except json.JSONDecodeError as err:
            raise Malformed(f"bad JSON: {err.msg} (column {err.colno})") from None
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
        return prompt, completion


def _decode(raw: bytes) -> str:
    """A line as text (a leading byte-order mark dropped)."""
    try:
        return raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        raise Malformed(f"not UTF-8 text (byte {err.start + 1})") from None


def _check_encodable(pairs: list[Pair]) -> None:
    for prompt, completion in pairs:
        try:
            prompt.encode("utf-8")
            completion.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("lone surrogate escape in a string") from None


def check_input(path: Path) -> str:
    """The input format of `path` ('txt' or 'jsonl'), after checking it is usable text."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if not path.is_file():
        raise DataError(f"input is not a file: {path}")
    input_format = INPUT_FORMATS.get(path.suffix.lower())
    if input_format is None:
        raise DataError(f"{path}: unsupported input format {path.suffix or '(none)'!r}; "
                        "expected .txt or .jsonl")
    try:
        with path.open("rb") as f:
            head = f.read(8192)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not head.strip():
        raise DataError(f"{path}: input file is empty")
    if b"\x00" in head:
        raise DataError(f"{path}: binary data, not a text file")
    return input_format


def read_lines(path: Path, on_bytes: Callable[[int], None]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for every non-blank line, in file order."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            on_bytes(len(raw))
            if not raw.isspace():
                yield lineno, raw


def count_lines(path: Path, on_bytes: Callable[[int], None]) -> int:
    """The number of non-blank lines."""
    return sum(1 for _ in read_lines(path, on_bytes))


def deal_into_buckets(path: Path, folder: Path, num_buckets: int, rng: np.random.Generator,
                      on_bytes: Callable[[int], None]) -> int:
    """Pass one of the shuffle: each non-blank line, prefixed by its number, into a random bucket."""
    folder.mkdir()
    files = [(folder / f"{b}.lines").open("wb") for b in range(num_buckets)]
    count = 0
    try:
        for block in _blocks(read_lines(path, on_bytes), 8192):
            for (lineno, raw), bucket in zip(block, rng.integers(0, num_buckets, size=len(block)).tolist()):
                files[bucket].write(b"%d\t%s\n" % (lineno, raw.rstrip(b"\r\n")))
            count += len(block)
    finally:
        for f in files:
            f.close()
    return count


def read_buckets(folder: Path, num_buckets: int, rng: np.random.Generator,
                 on_bytes: Callable[[int], None]) -> Iterator[tuple[int, bytes]]:
    """Pass two of the shuffle: each bucket permuted in memory, then removed."""
    for b in range(num_buckets):
        file = folder / f"{b}.lines"
        data = file.read_bytes()
        file.unlink()
        on_bytes(len(data))
        lines = data.split(b"\n")[:-1]
        del data
        for i in rng.permutation(len(lines)).tolist():
            number, _, raw = lines[i].partition(b"\t")
            yield int(number), raw


def _blocks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


# ---------------------------------------------------------------- tokenizing

def tokenize_articles(tokenizer: Tokenizer,
                      articles: list[list[Pair]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, token types and per-article lengths of a batch of articles."""
    pairs = [pair for article in articles for pair in article if pair[1]]
    pairs_per_article = np.array([sum(1 for p in a if p[1]) for a in articles], dtype=np.int64)
    ids, lengths = tokenizer.encode_flat([text for pair in pairs for text in pair])
    seg_lens = np.ones((len(pairs), 3), dtype=np.int64)
    seg_lens[:, :2] = lengths.reshape(-1, 2)
    seg_types = np.tile(np.array([PROMPT, COMPLETION, COMPLETION], dtype=np.int32), (len(pairs), 1))
    last_pair = np.cumsum(pairs_per_article)[pairs_per_article > 0] - 1
    seg_types[last_pair, 2] = SEPARATOR
    ids = np.insert(ids, np.cumsum(seg_lens[:, :2].sum(axis=1)), tokenizer.eos_id)
    types = np.repeat(seg_types.ravel(), seg_lens.ravel())
    pair_lens = seg_lens.sum(axis=1)
    article_of_pair = np.repeat(np.arange(len(articles)), pairs_per_article)
    article_lens = np.bincount(article_of_pair, weights=pair_lens, minlength=len(articles)).astype(np.int64)
    return ids.astype(np.int32), types, article_lens


# ---------------------------------------------------------------- packing

@dataclass
class Packer:
    """Packs articles into rows of `length` tokens; keeps an unfinished row between calls."""

    style: str
    overflow: str | None
    length: int
    pad_id: int
    tokens_dropped: int = 0
    articles_truncated: int = 0
    articles_dropped: int = 0
    _pending_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    _pending_types: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def add(self, ids: np.ndarray, types: np.ndarray, article_lens: np.ndarray) -> Row:
        """The rows completed by these articles."""
        if self.style == "full":
            return self._add_full(ids, types)
        placement, rows, fill = self._place(article_lens.tolist())
        out_ids, out_types = self._scatter(ids, types, article_lens, placement, rows + 1)
        self._pending_ids = out_ids[rows, :fill].copy()
        self._pending_types = out_types[rows, :fill].copy()
        return out_ids[:rows], out_types[:rows]

    def flush(self) -> Row:
        """The last unfinished row, padded (none if there is nothing pending)."""
        ids, types = self._empty_rows(1 if len(self._pending_ids) else 0)
        if len(ids):
            ids[0, :len(self._pending_ids)] = self._pending_ids
            types[0, :len(self._pending_types)] = self._pending_types
        self._pending_ids, self._pending_types = self._pending_ids[:0], self._pending_types[:0]
        return ids, types

    def _add_full(self, ids: np.ndarray, types: np.ndarray) -> Row:
        ids = np.concatenate([self._pending_ids, ids])
        types = np.concatenate([self._pending_types, types])
        rows = len(ids) // self.length
        cut = rows * self.length
        self._pending_ids, self._pending_types = ids[cut:], types[cut:]
        return ids[:cut].reshape(rows, self.length), types[:cut].reshape(rows, self.length)

    def _place(self, lens: list[int]) -> tuple[np.ndarray, int, int]:
        """Per article (row, column, first kept token, kept tokens); rows completed; fill of the last."""
        greedy = self.style == "greedy"
        row, fill = 0, len(self._pending_ids)
        placement: list[tuple[int, int, int, int]] = []
        for n in lens:
            if greedy and fill + n <= self.length:
                placement.append((row, fill, 0, n))
                fill += n
                continue
            if fill:
                row, fill = row + 1, 0
            skip, keep = self._fit(n)
            placement.append((row, 0, skip, keep))
            fill = keep
            if not greedy and keep:
                row, fill = row + 1, 0
        return np.array(placement, dtype=np.int64).reshape(-1, 4), row, fill

    def _fit(self, n: int) -> tuple[int, int]:
        """(first kept token, kept tokens) of an article of `n` tokens in an empty row."""
        if n <= self.length:
            return 0, n
        kept = 0 if self.overflow == "drop" else self.length
        self.tokens_dropped += n - kept
        if kept:
            self.articles_truncated += 1
        else:
            self.articles_dropped += 1
        return (n - kept if self.overflow == "truncate_left" else 0), kept

    def _scatter(self, ids: np.ndarray, types: np.ndarray, lens: np.ndarray,
                 placement: np.ndarray, num_rows: int) -> Row:
        out_ids, out_types = self._empty_rows(num_rows)
        pending = len(self._pending_ids)
        out_ids[0, :pending], out_types[0, :pending] = self._pending_ids, self._pending_types
        starts = (np.cumsum(lens) - lens).tolist()
        for (row, col, skip, keep), start in zip(placement.tolist(), starts):
            source = slice(start + skip, start + skip + keep)
            out_ids[row, col:col + keep] = ids[source]
            out_types[row, col:col + keep] = types[source]
        return out_ids, out_types

    def _empty_rows(self, n: int) -> Row:
        return (np.full((n, self.length), self.pad_id, dtype=np.int32),
                np.full((n, self.length), PADDING, dtype=np.int32))


# ---------------------------------------------------------------- writing

class HDF5Writer:
    """Appends rows to resizable `input_ids` / `token_type_ids`, whole chunks at a time."""

    def __init__(self, path: Path, length: int):
        self.path = path
        self.rows = 0
        self.chunk_rows = max(1, CHUNK_BYTES // (4 * length))
        self._file = h5py.File(path, "w")
        self._datasets = [
            self._file.create_dataset(name, shape=(0, length), maxshape=(None, length), dtype="<i4",
                                      chunks=(self.chunk_rows, length), compression="gzip",
                                      compression_opts=1, shuffle=True, track_times=False)
            for name in DATASETS]
        self._buffer: list[Row] = []
        self._buffered = 0

    def append(self, ids: np.ndarray, types: np.ndarray) -> None:
        if not len(ids):
            return
        self._buffer.append((ids, types))
        self._buffered += len(ids)
        if self._buffered >= self.chunk_rows:
            self._write(final=False)

    def close(self) -> None:
        """Write what is buffered and close the file."""
        if self._file.id.valid:
            self._write(final=True)
            self._file.close()

    def abandon(self) -> None:
        """Close without writing the buffer (the output is being thrown away)."""
        if self._file.id.valid:
            self._file.close()

    def _write(self, final: bool) -> None:
        if not self._buffer:
            return
        block = [np.concatenate(part) for part in zip(*self._buffer)]
        n = len(block[0]) if final else len(block[0]) // self.chunk_rows * self.chunk_rows
        for dataset, data in zip(self._datasets, block):
            dataset.resize(self.rows + n, axis=0)
            dataset[self.rows:self.rows + n] = data[:n]
        self.rows += n
        rest = (block[0][n:], block[1][n:])
        self._buffer, self._buffered = ([rest], len(rest[0])) if len(rest[0]) else ([], 0)


class RoundRobin:
    """Deals rows over several writers in turn, so their row counts differ by at most one."""

    def __init__(self, writers: list[HDF5Writer]):
        self.writers = writers
        self.rows = 0

    def append(self, ids: np.ndarray, types: np.ndarray) -> None:
        n = len(self.writers)
        for j, writer in enumerate(self.writers):
            first = (j - self.rows) % n
            writer.append(ids[first::n], types[first::n])
        self.rows += len(ids)


class SplitSink:
    """Tokenizes, packs and writes the articles of one split; keeps its counts."""

    def __init__(self, tokenizer: Tokenizer, packer: Packer, writer: HDF5Writer | RoundRobin):
        self.tokenizer = tokenizer
        self.packer = packer
        self.writer = writer
        self.articles = 0
        self.sequences = 0
        self.sequences_dropped = 0
        self.tokens_dropped_unpacked = 0
        self.tokens = np.zeros(len(TOKEN_TYPES), dtype=np.int64)

    def add(self, articles: list[list[Pair]]) -> None:
        ids, types, lens = tokenize_articles(self.tokenizer, articles)
        self.articles += len(articles)
        self._emit(*self.packer.add(ids, types, lens))

    def finish(self) -> None:
        self._emit(*self.packer.flush())

    @property
    def tokens_dropped(self) -> int:
        return self.packer.tokens_dropped + self.tokens_dropped_unpacked

    def stats(self) -> dict[str, Any]:
        return {"articles": self.articles, "sequences": self.sequences,
                "tokens": {name: int(self.tokens[code]) for name, code in TOKEN_TYPES.items()},
                "tokens_dropped": self.tokens_dropped,
                "sequences_without_completion_dropped": self.sequences_dropped,
                "articles_truncated": self.packer.articles_truncated,
                "articles_dropped": self.packer.articles_dropped}

    def _emit(self, ids: np.ndarray, types: np.ndarray) -> None:
        useful = (types == COMPLETION).any(axis=1)
        self.sequences_dropped += int((~useful).sum())
        self.tokens_dropped_unpacked += int((types[~useful] != PADDING).sum())
        ids, types = ids[useful], types[useful]
        self.sequences += len(ids)
        self.tokens += np.bincount(types.ravel(), minlength=len(TOKEN_TYPES))
        self.writer.append(ids, types)


# ---------------------------------------------------------------- the run

@contextmanager
def staged_output(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed to it on success and removed on failure."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as err:
        raise DataError(f"cannot create the output folder beside {target} ({err.strerror})") from None
    try:
        yield staging
        check_target(target, overwrite)
        old = staging.with_suffix(".old")
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing output unless `overwrite`, and never replace a folder that is not ours."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"output {target} already exists; pass --overwrite to replace it")
    if target.is_symlink() or not target.is_dir():
        raise DataError(f"output {target} exists and is not a folder; not replacing it")
    if any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise DataError(f"output {target} is a folder without metadata.yaml, not a data-prep output; "
                        "not replacing it")


class _Meter:
    """Advances a progress task by the bytes read, about once per MiB."""

    def __init__(self, progress: Progress, description: str, total: int):
        self.progress = progress
        self.task = progress.add_task(description, total=total)
        self.pending = 0

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.pending >= 1 << 20:
            self.progress.advance(self.task, self.pending)
            self.pending = 0

    def done(self) -> None:
        self.progress.advance(self.task, self.pending)
        self.pending = 0


class Preparation:
    """One data-prep run into a staging folder."""

    def __init__(self, config: PrepConfig, tokenizer: Tokenizer, input_format: str,
                 folder: Path, progress: Progress):
        self.config = config
        self.tokenizer = tokenizer
        self.folder = folder
        self.progress = progress
        self.parser = LineParser(input_format, config.prompt_keyword, config.completion_keyword)
        self.input_format = input_format
        self.malformed = 0
        self.malformed_lines: list[int] = []
        self.test_articles = 0
        self.writers: list[HDF5Writer] = []
        self.sinks: dict[str, SplitSink] = {"train": self._sink(self._train_writer())}
        if config.dev_ratio > 0:
            self.sinks["dev"] = self._sink(self._writer("dev_1_of_1.hdf5"))

    def run(self) -> dict[str, Any]:
        """Read, split, tokenize, pack and write; return the metadata."""
        try:
            count, lines = self._ordered_lines()
            self._consume(lines, self._boundaries(count))
            for sink in self.sinks.values():
                sink.finish()
            for writer in self.writers:
                writer.close()
        except BaseException:
            for writer in self.writers:
                writer.abandon()
            raise
        self._check_results()
        shutil.rmtree(self.folder / "_shuffle", ignore_errors=True)
        self.tokenizer.save(self.folder)
        metadata = self.metadata()
        text = yaml.safe_dump(metadata, sort_keys=False)
        (self.folder / METADATA_FILE).write_text(text, encoding="utf-8")
        return metadata

    def _sink(self, writer: HDF5Writer | RoundRobin) -> SplitSink:
        c = self.config
        packer = Packer(c.style, c.overflow, c.max_seq_length, self.tokenizer.pad_id)
        return SplitSink(self.tokenizer, packer, writer)

    def _writer(self, name: str) -> HDF5Writer:
        writer = HDF5Writer(self.folder / name, self.config.max_seq_length)
        self.writers.append(writer)
        return writer

    def _train_writer(self) -> RoundRobin:
        n = self.config.num_training_splits
        return RoundRobin([self._writer(f"train_{i}_of_{n}.hdf5") for i in range(1, n + 1)])

    def _ordered_lines(self) -> tuple[int | None, Iterator[tuple[int, bytes]]]:
        """The number of non-blank lines (when a split needs it) and the lines in order."""
        c, size = self.config, self.config.input.stat().st_size
        if c.shuffle:
            rng = np.random.default_rng(c.seed)
            buckets = max(1, math.ceil(size / c.bucket_bytes))
            meter = _Meter(self.progress, "shuffling", size)
            count = deal_into_buckets(c.input, self.folder / "_shuffle", buckets, rng, meter)
            meter.done()
            total = sum(f.stat().st_size for f in (self.folder / "_shuffle").iterdir())
            return count, read_buckets(self.folder / "_shuffle", buckets, rng,
                                       _Meter(self.progress, "preparing", total))
        count = None
        if c.dev_ratio or c.test_ratio:
            meter = _Meter(self.progress, "counting lines", size)
            count = count_lines(c.input, meter)
            meter.done()
        return count, read_lines(c.input, _Meter(self.progress, "preparing", size))

    def _boundaries(self, count: int | None) -> tuple[float, float]:
        """Line indices where dev, then test, begin."""
        if count is None:
            return math.inf, math.inf
        c = self.config
        dev, test = (max(1, round(count * r)) if r > 0 else 0 for r in (c.dev_ratio, c.test_ratio))
        if count - dev - test < 1:
            raise DataError(f"{c.input}: too few lines ({count}) for --dev-ratio {c.dev_ratio} "
                            f"and --test-ratio {c.test_ratio}")
        return count - dev - test, count - test

    def _consume(self, lines: Iterator[tuple[int, bytes]], bounds: tuple[float, float]) -> None:
        batches: dict[str, list[list[Pair]]] = {name: [] for name in self.sinks}
        sizes = dict.fromkeys(self.sinks, 0)
        test_file = self._test_file() if self.config.test_ratio > 0 else None
        try:
            for index, (lineno, raw) in enumerate(lines):
                split = "train" if index < bounds[0] else "dev" if index < bounds[1] else "test"
                try:
                    article = self.parser(raw)
                except Malformed as err:
                    self._report(lineno, str(err))
                    continue
                if split == "test":
                    test_file.write(self.parser.test_record(raw, article) + "\n")
                    self.test_articles += 1
                    continue
                batches[split].append(article)
                sizes[split] += len(raw)
                if sizes[split] >= BATCH_BYTES:
                    self.sinks[split].add(batches[split])
                    batches[split], sizes[split] = [], 0
        finally:
            if test_file is not None:
                test_file.close()
        for split, batch in batches.items():
            if batch:
                self.sinks[split].add(batch)

    def _test_file(self) -> IO[str]:
        (self.folder / "test").mkdir()
        return (self.folder / "test" / "test.jsonl").open("w", encoding="utf-8")

    def _report(self, lineno: int, reason: str) -> None:
        location = Location(str(self.config.input), lineno, 1)
        if self.config.strict:
            raise DataError(f"malformed line: {reason}", location)
        self.malformed += 1
        if len(self.malformed_lines) < MAX_RECORDED_LINES:
            self.malformed_lines.append(lineno)
        if self.malformed <= MAX_REPORTED_LINES:
            self._say(f"{location}: warning: malformed line skipped: {reason}")
        elif self.malformed == MAX_REPORTED_LINES + 1:
            self._say("warning: more malformed lines; metadata.yaml counts them all")

    def _say(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _check_results(self) -> None:
        c, train = self.config, self.sinks["train"]
        used = sum(sink.articles for sink in self.sinks.values()) + self.test_articles
        if used == 0:
            detail = f"all {self.malformed} non-blank lines are malformed" if self.malformed else "no text"
            raise DataError(f"{c.input}: no usable data ({detail})")
        if train.sequences < c.num_training_splits:
            raise DataError(f"{c.input}: {train.sequences} training sequences after packing "
                            f"(--packing {c.packing}, --max-seq-length {c.max_seq_length}), fewer than "
                            f"--num-training-splits {c.num_training_splits}")
        if self.malformed:
            first = min(self.malformed_lines)
            self._say(f"warning: {self.malformed} malformed lines skipped (first at line {first})")

    def metadata(self) -> dict[str, Any]:
        """What `metadata.yaml` says about the output."""
        c, tok = self.config, self.tokenizer
        files: dict[str, Any] = {
            "train": {w.path.name: w.rows for w in self.sinks["train"].writer.writers}}
        if "dev" in self.sinks:
            dev = self.sinks["dev"].writer
            files["dev"] = {dev.path.name: dev.rows}
        if c.test_ratio > 0:
            files["test"] = {"test/test.jsonl": self.test_articles}
        splits = {name: sink.stats() for name, sink in self.sinks.items()}
        if c.test_ratio > 0:
            splits["test"] = {"articles": self.test_articles}
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "input": str(c.input), "input_format": self.input_format,
            "max_seq_length": c.max_seq_length, "packing": c.packing,
            "vocab_size": tok.vocab_size, "tokenizer": tok.describe(),
            "eos_id": tok.eos_id, "pad_id": tok.pad_id, "token_type_ids": dict(TOKEN_TYPES),
            "shuffle": c.shuffle, "seed": c.seed,
            "dev_ratio": c.dev_ratio, "test_ratio": c.test_ratio,
            "num_training_splits": c.num_training_splits,
            "file_counts": {name: len(names) for name, names in files.items()},
            "files": files, "splits": splits,
            "tokens_dropped": sum(sink.tokens_dropped for sink in self.sinks.values()),
            "malformed_lines": self.malformed,
            "malformed_line_numbers": sorted(self.malformed_lines),
        }


def make_progress(console: Console) -> Progress:
    """A byte-based progress bar on `console`, silent when it is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


def prepare(config: PrepConfig, console: Console | None = None) -> dict[str, Any]:
    """Run data preparation; the output folder appears whole, or not at all. Returns the metadata."""
    console = console or Console(stderr=True)
    input_format = check_input(config.input)
    check_target(config.output, config.overwrite)
    tokenizer = load_tokenizer(config.tokenizer)
    with make_progress(console) as progress, staged_output(config.output, config.overwrite) as folder:
        return Preparation(config, tokenizer, input_format, folder, progress).run()
