"""One data-prep run: read, split, tokenize, pack, write, balance, describe.

Memory is bounded by a few MiB of text per batch, the write buffers and, with
shuffling, one bucket; never by the input size.

1. Read and count. The lines are counted first, so a run that cannot work (fewer
   lines than split files) stops before writing anything. With ``--shuffle`` a
   first pass deals every line into a random bucket file; the second reads the
   buckets in turn and permutes each in memory (a uniformly random order).
2. Split, as the reference's ``split -n r/N``: line k goes to split file k mod N, the
   first files being train, the next test, the last dev. Test lines are kept as text
   (``test/test_{i}_of_{N}.jsonl``); with ``--keep-split-jsonls`` every split's lines
   are kept in ``splits/``.
3. Each train and dev split file is tokenized and packed on its own (see
   `tools.data_prep.articles` and `.packing`), and rows without a completion token are
   dropped unless ``--keep-prompt-only-sequences``.
4. Write ``{split}_{i}_of_{N}.hdf5`` with int32 ``input_ids``, ``token_type_ids`` (and
   ``category_ids``), balance each split's files to within one row, then write
   ``metadata.yaml`` and the tokenizer in ``tokenizer/``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from ir.errors import ConfigError, DataError, first_line
from runtime.chat_template import ChatTemplate
from runtime.gguf_model import is_gguf
from runtime.hdf5_data import COMPLETION, DATASETS, METADATA_FILE, PADDING, TOKEN_TYPES, TOKENIZER_FOLDER
from runtime.tokenizer import Tokenizer, load_tokenizer
from tools.data_prep.articles import NO_CATEGORY, ArticleTokenizer
from tools.data_prep.config import PrepConfig
from tools.data_prep.packing import Packer
from tools.data_prep.reading import Inputs, Line, LineParser, Malformed, deal_into_buckets, find_inputs, \
    read_buckets
from tools.data_prep.writing import CATEGORY_DATASET, HDF5Writer, balance, check_target, staged_file, \
    staged_folder

BATCH_BYTES = 4 << 20
#: a batch also stops when its units could fill this many bytes of rows (each may get a row of its own)
BATCH_ROW_BYTES = 256 << 20
MAX_REPORTED_LINES = 10
MAX_RECORDED_LINES = 100
FORMAT_NAME = "rduflow-data-prep"
FORMAT_VERSION = 2


@dataclass
class SplitSink:
    """Tokenizes, packs and writes the lines of one split file; keeps its counts."""

    articles: ArticleTokenizer
    packer: Packer
    writer: HDF5Writer
    keep_prompt_only: bool
    lines: int = 0
    sequences: int = 0
    prompt_only_dropped: int = 0
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(len(TOKEN_TYPES), np.int64))

    def add(self, lines: list) -> None:
        tokens = self.articles(lines)
        self.lines += len(lines)
        self._emit(self.packer.add(tokens.fields, tokens.unit_lens))

    def finish(self) -> None:
        self._emit(self.packer.flush())
        self.writer.close()

    def _emit(self, rows: np.ndarray) -> None:
        types = rows[1]
        if not self.keep_prompt_only:
            useful = (types == COMPLETION).any(axis=1)
            self.prompt_only_dropped += int((types[~useful] != PADDING).sum())
            rows = rows[:, useful]
            types = rows[1]
        self.sequences += rows.shape[1]
        self.tokens += np.bincount(types.ravel(), minlength=len(TOKEN_TYPES))
        self.writer.append(rows)


class Preparation:
    """One data-prep run into a staging location (a folder, or one .hdf5 file)."""

    def __init__(self, config: PrepConfig, tokenizer: Tokenizer, inputs: Inputs, staging: Path,
                 progress: Progress, articles: ArticleTokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.staging = staging
        self.progress = progress
        self.articles = articles
        self.parser = LineParser(inputs.format, config.prompt_keyword, config.completion_keyword)
        self.counts = config.split_counts(inputs.size)
        self.malformed = 0
        self.malformed_lines: list[str] = []
        self.sinks: dict[int, SplitSink] = {}
        self.text_files: dict[int, IO[bytes]] = {}

    def run(self) -> dict[str, Any]:
        """Read, split, tokenize, pack and write; return the metadata (the counts in data_prep mode)."""
        count, lines = self._ordered_lines()
        self._check_enough(count)
        self._open_sinks()
        try:
            self._consume(lines)
            for sink in self.sinks.values():
                sink.finish()
        finally:
            for sink in self.sinks.values():
                sink.writer.abandon()
            for file in self.text_files.values():
                file.close()
        self._check_results()
        if self.config.single_file:
            return self.stats()
        shutil.rmtree(self.staging / "_shuffle", ignore_errors=True)
        rows = self._balance()
        self._save_tokenizer()
        metadata = self.metadata(rows)
        (self.staging / METADATA_FILE).write_text(yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8")
        return metadata

    # -- reading and splitting
    def _ordered_lines(self) -> tuple[int, Iterator[Line]]:
        """The number of lines and the lines in order (shuffled with --shuffle)."""
        c, size = self.config, self.inputs.size
        if c.shuffle:
            rng = np.random.default_rng(c.seed)
            buckets = max(1, math.ceil(size / c.bucket_bytes))
            meter = _Meter(self.progress, "shuffling", size)
            count = deal_into_buckets(self.inputs.lines(meter), self.staging / "_shuffle", buckets, rng)
            meter.done()
            total = sum(f.stat().st_size for f in (self.staging / "_shuffle").iterdir())
            return count, read_buckets(self.staging / "_shuffle", buckets, rng,
                                       _Meter(self.progress, "preparing", total))
        meter = _Meter(self.progress, "counting lines", size)
        count = self.inputs.count(meter)
        meter.done()
        return count, self.inputs.lines(_Meter(self.progress, "preparing", size))

    def _check_enough(self, count: int) -> None:
        total = self.counts.total
        if count < total:
            raise DataError(f"{self.config.input}: {count} lines, fewer than the {total} split files they are "
                            f"dealt into ({self._counts_text()}); pass a smaller --num-training-splits")

    def _counts_text(self) -> str:
        c = self.counts
        return f"{c.train} train, {c.dev} dev, {c.test} test"

    def _open_sinks(self) -> None:
        c, names = self.config, DATASETS + ((CATEGORY_DATASET,) if self.articles.num_fields == 3 else ())
        fillers = (self.tokenizer.pad_id, PADDING, NO_CATEGORY)[:len(names)]
        for index in range(self.counts.total):
            split, i, n = self.counts.name(index)
            if split == "test":
                continue
            path = self.staging if c.single_file else self.staging / f"{split}_{i}_of_{n}.hdf5"
            packer = Packer(c.style, c.overflow, c.max_seq_length, fillers)
            self.sinks[index] = SplitSink(self.articles, packer, HDF5Writer(path, c.max_seq_length, names),
                                          c.keep_prompt_only_sequences)

    def _consume(self, lines: Iterator[Line]) -> None:
        total = self.counts.total
        batches: dict[int, list] = {index: [] for index in self.sinks}
        size, units = 0, 0
        row_bytes = 4 * self.articles.num_fields * self.config.max_seq_length
        for k, line in enumerate(lines):
            index = k % total
            self._keep_text(index, line)
            if index not in self.sinks:
                continue
            try:
                pairs = self.parser(line.raw)
                for pair in pairs:
                    self.articles.category_id(pair)
            except Malformed as err:
                self._report(line, str(err))
                continue
            batches[index].append(pairs)
            size, units = size + len(line.raw), units + len(pairs)
            if size >= BATCH_BYTES or units * row_bytes >= BATCH_ROW_BYTES:
                self._flush(batches)
                size, units = 0, 0
        self._flush(batches)

    def _flush(self, batches: dict[int, list]) -> None:
        for index, batch in batches.items():
            if batch:
                self.sinks[index].add(batch)
                batches[index] = []

    def _keep_text(self, index: int, line: Line) -> None:
        """Test lines always, and with --keep-split-jsonls every line, as text."""
        split, i, n = self.counts.name(index)
        if split != "test" and not self.config.keep_split_jsonls:
            return
        if index not in self.text_files:
            folder = self.staging / ("test" if split == "test" else "splits")
            folder.mkdir(exist_ok=True)
            self.text_files[index] = (folder / f"{split}_{i}_of_{n}.{self.inputs.format}").open("wb")
        raw = line.raw if line.raw.endswith(b"\n") else line.raw + b"\n"
        self.text_files[index].write(raw)

    def _report(self, line: Line, reason: str) -> None:
        location = self.inputs.location(line)
        if self.config.strict:
            raise DataError(f"malformed line: {reason}", location)
        self.malformed += 1
        if len(self.malformed_lines) < MAX_RECORDED_LINES:
            self.malformed_lines.append(str(location))
        if self.malformed <= MAX_REPORTED_LINES:
            self._say(f"{location}: warning: malformed line skipped: {reason}")
        elif self.malformed == MAX_REPORTED_LINES + 1:
            self._say("warning: more malformed lines; metadata.yaml counts them all")

    def _say(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _check_results(self) -> None:
        c = self.config
        used = sum(sink.lines for sink in self.sinks.values())
        if used == 0:
            raise DataError(f"{c.input}: no usable data (all {self.malformed} lines are malformed)")
        train = self._sinks("train")
        sequences = sum(sink.sequences for sink in train)
        if sequences < len(train):
            raise DataError(f"{c.input}: {sequences} training sequences after packing (--packing {c.packing}, "
                            f"--max-seq-length {c.max_seq_length}), fewer than the {len(train)} training files")
        if self.malformed:
            self._say(f"warning: {self.malformed} malformed lines skipped (first at {self.malformed_lines[0]})")

    def _sinks(self, split: str) -> list[SplitSink]:
        return [sink for index, sink in self.sinks.items() if self.counts.name(index)[0] == split]

    # -- finishing
    def _balance(self) -> dict[str, list[int]]:
        rows = {split: [sink.writer.rows for sink in self._sinks(split)] for split in ("train", "dev")}
        if not self.config.do_not_balance_hdf5:
            rows = {split: balance([sink.writer.path for sink in self._sinks(split)]) for split in rows}
        return rows

    def _save_tokenizer(self) -> None:
        folder = self.staging / TOKENIZER_FOLDER
        self.tokenizer.save(folder)
        source = Path(self.config.tokenizer) if self.config.tokenizer else None
        model_config = (source if source.is_dir() else source.parent) / "config.json" if source else None
        if model_config is not None and model_config.is_file():
            shutil.copyfile(model_config, folder / "config.json")
        if self.articles.category_ids is not None:
            (self.staging / "category_to_id.json").write_text(json.dumps(self.articles.category_ids), "utf-8")

    def stats(self) -> dict[str, Any]:
        """Counts over all split files."""
        sinks = self.sinks.values()
        tokens = sum((sink.tokens for sink in sinks), np.zeros(len(TOKEN_TYPES), np.int64))
        return {"lines": sum(s.lines for s in sinks), "sequences": sum(s.sequences for s in sinks),
                "tokens": {name: int(tokens[code]) for name, code in TOKEN_TYPES.items()},
                "tokens_dropped": sum(s.packer.tokens_dropped + s.prompt_only_dropped for s in sinks),
                "units_truncated": sum(s.packer.units_truncated for s in sinks),
                "units_dropped": sum(s.packer.units_dropped for s in sinks),
                "malformed_lines": self.malformed, "first_malformed_lines": self.malformed_lines}

    def metadata(self, rows: dict[str, list[int]]) -> dict[str, Any]:
        """`metadata.yaml`: the reference's keys, then rduflow's own under `rduflow`."""
        c, tok = self.config, self.tokenizer
        names = {split: [sink.writer.path.name for sink in self._sinks(split)] for split in rows}
        return {
            "max_seq_length": c.max_seq_length,
            "token_type_ids": True,
            "vocab_size": tok.base_vocab_size,
            "tokenizer_model_type": self._model_type(),
            "number_of_training_files": self.counts.train,
            "number_of_dev_files": self.counts.dev,
            "number_of_test_files": self.counts.test,
            "max_batch_size_train": min(rows["train"]),
            "max_batch_size_dev": min(rows["dev"]) if rows["dev"] else None,
            "rduflow": {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "input": str(c.input),
                "input_format": self.inputs.format, "packing": c.packing,
                "packing_boundary": c.packing_boundary, "attention_boundary": c.attention_boundary,
                "tokenizer": tok.describe(), "token_type_ids": dict(TOKEN_TYPES),
                "shuffle": c.shuffle, "seed": c.seed, "balanced": not c.do_not_balance_hdf5,
                "files": {split: dict(zip(names[split], rows[split])) for split in rows if rows[split]},
                "stats": self.stats(),
            },
        }

    def _model_type(self) -> str:
        """The model type of the tokenizer's folder's `config.json`, else the tokenizer's kind."""
        config = self.staging / TOKENIZER_FOLDER / "config.json"
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            value = None
        return value if isinstance(value, str) else f"rduflow-{self.tokenizer.kind}"


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


def make_progress(console: Console) -> Progress:
    """A byte-based progress bar on `console`, silent when it is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


def build_tokenizer(config: PrepConfig) -> Tokenizer:
    """The tokenizer, with `--special-tokens-dict` added."""
    tokenizer = load_tokenizer(config.tokenizer)
    if config.special_tokens_dict:
        try:
            tokens = json.loads(config.special_tokens_dict.replace("'", '"'))
        except ValueError as err:
            raise ConfigError(f"--special-tokens-dict is not a JSON object ({first_line(err)})") from None
        if not isinstance(tokens, dict):
            raise ConfigError("--special-tokens-dict must be a JSON object, e.g. {\"sep_token\": \"[SEP]\"}")
        if not hasattr(tokenizer, "add_special_tokens"):
            raise ConfigError("--special-tokens-dict needs a Hugging Face --tokenizer "
                              "(the built-in byte-level tokenizer has a fixed vocabulary)")
        tokenizer.add_special_tokens(tokens)
    return tokenizer


def load_categories(path: Path | None) -> dict[str, int] | None:
    """Category name -> id (its index) from a JSON list of names."""
    if path is None:
        return None
    if path.suffix.lower() != ".json":
        raise ConfigError(f"--categories-path must be a .json file, got {path}")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: unreadable categories ({first_line(err)})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of category names")
    return {name: i for i, name in enumerate(names)}


def load_chat_template(config: PrepConfig) -> ChatTemplate | None:
    """The tokenizer's chat template, when --apply-chat-template asks for one."""
    if not config.apply_chat_template:
        return None
    if config.tokenizer is None:
        raise ConfigError("--apply-chat-template needs a --tokenizer whose folder has a chat template")
    source = Path(config.tokenizer)
    template = ChatTemplate.from_folder(source if source.is_dir() or is_gguf(source) else source.parent)
    if template is None:
        raise DataError(f"{config.tokenizer}: no chat template (tokenizer_config.json 'chat_template' "
                        "or chat_template.jinja)")
    return template


def prepare(config: PrepConfig, console: Console | None = None) -> dict[str, Any]:
    """Run data preparation; the output appears whole, or not at all. Returns the metadata."""
    console = console or Console(stderr=True)
    inputs = find_inputs(config.input)
    check_target(config.output, config.overwrite, folder=not config.single_file)
    tokenizer = build_tokenizer(config)
    articles = ArticleTokenizer(
        tokenizer, space_separator=not config.disable_space_separator,
        keep_prompt_only=config.keep_prompt_only_sequences,
        pair_packing=config.packing_boundary == "prompt_completion_pair",
        pair_attention=config.attention_boundary == "prompt_completion_pair",
        prompt_prefix=config.prompt_prefix or "", prompt_postfix=config.prompt_postfix or "",
        category_ids=load_categories(config.categories_path), chat_template=load_chat_template(config))
    staged = staged_file if config.single_file else staged_folder
    try:
        with make_progress(console) as progress, staged(config.output, config.overwrite) as staging:
            return Preparation(config, tokenizer, inputs, staging, progress, articles).run()
    except OSError as err:
        raise DataError(f"cannot write {config.output}: {_reason(err)}") from None
    except MemoryError:
        raise DataError(f"out of memory preparing {config.output} (--max-seq-length "
                        f"{config.max_seq_length}, --num-training-splits)") from None


def _reason(err: OSError) -> str:
    """Why a write failed, in words (h5py puts the errno only in its message)."""
    text = str(err)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if err.errno == code or f"errno = {code}," in text or os.strerror(code) in text:
            return os.strerror(code).lower()
    return err.strerror or first_line(err)
