"""Validated reading of prepared training data (the output of `rduflow data-prep`).

`open_data(path, split)` takes a data-prep folder (its ``{split}_{i}_of_{N}.hdf5``
files, directly or in an ``hdf5/`` subfolder, checked against ``metadata.yaml`` when
present) or one ``.hdf5`` file holding int32 datasets ``input_ids`` and
``token_type_ids`` of equal shape (sequences, max_seq_length). SambaNova
generative_data_prep's folders read as they are: its ``metadata.yaml`` needs only
``max_seq_length``, and its ``vocab_size`` is not a bound (Llama 3's says 128000 and
the data hold 128009): the model's vocabulary is. Rows are read by global index, across
files in order. Every row read is checked: token types in 0..3, ids in [0, vocab_size)
when a vocabulary size is given. Every problem is a `DataError` naming the file and
what is wrong.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ir.errors import DataError, first_line

DATASETS = ("input_ids", "token_type_ids")
#: the `token_type_ids` of each token: what it is, and so which positions a loss counts
PROMPT, COMPLETION, PADDING, SEPARATOR = 0, 1, 2, 3
TOKEN_TYPES = {"prompt": PROMPT, "completion": COMPLETION, "padding": PADDING, "separator": SEPARATOR}
#: the token types a language-model loss is trained on (generative_data_prep's completion tokens)
TRAINED = (COMPLETION, SEPARATOR)
NUM_TOKEN_TYPES = len(TOKEN_TYPES)
METADATA_FILE = "metadata.yaml"
TOKENIZER_FOLDER = "tokenizer"
SPLITS = ("train", "dev")
#: metadata.yaml's count of each split's files, as SambaNova generative_data_prep names it
_FILE_COUNT_KEYS = {"train": "number_of_training_files", "dev": "number_of_dev_files"}
_SPLIT_FILE = re.compile(r"(?P<split>[a-z]+)_(?P<i>\d+)_of_(?P<n>\d+)\.hdf5")

Rows = tuple[np.ndarray, np.ndarray]


class HDF5Data:
    """Rows of (input_ids, token_type_ids) from one or more validated HDF5 files."""

    def __init__(self, files: Sequence[Path], metadata: dict[str, Any] | None = None,
                 vocab_size: int | None = None):
        if not files:
            raise DataError("no HDF5 files to read")
        self.files = list(files)
        self.metadata = metadata
        self.vocab_size = vocab_size
        self._handles: list[h5py.File] = []
        try:
            shapes = [self._open(file) for file in self.files]
        except BaseException:
            self.close()
            raise
        self.max_seq_length = _common_width(self.files, shapes)
        self._offsets = np.cumsum([0] + [rows for rows, _ in shapes])

    @property
    def file_rows(self) -> list[int]:
        """The number of rows in each file."""
        return np.diff(self._offsets).tolist()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> Rows:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        ids, types = self.rows([index % len(self)])
        return ids[0], types[0]

    def __iter__(self) -> Iterator[Rows]:
        for k, handle in enumerate(self._handles):
            dataset = handle[DATASETS[0]]
            step = dataset.chunks[0] if dataset.chunks else 1024
            for start in range(0, dataset.shape[0], step):
                ids, types = self._read(k, slice(start, start + step))
                yield from zip(ids, types)

    def rows(self, indices: Sequence[int] | np.ndarray) -> Rows:
        """The rows at `indices` (global, in the order given), as (n, max_seq_length) arrays."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row indices must be in [0, {len(self)})")
        out_ids = np.empty((len(indices), self.max_seq_length), dtype=np.int32)
        out_types = np.empty_like(out_ids)
        file_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for k in np.unique(file_of).tolist():
            where = np.flatnonzero(file_of == k)
            local, inverse = np.unique(indices[where] - self._offsets[k], return_inverse=True)
            first, last = int(local[0]), int(local[-1])
            span = slice(first, last + 1) if last - first + 1 == len(local) else local.tolist()
            ids, types = self._read(k, span)
            out_ids[where], out_types[where] = ids[inverse], types[inverse]
        return out_ids, out_types

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    def __enter__(self) -> HDF5Data:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, file: Path) -> tuple[int, int]:
        try:
            handle = h5py.File(file, "r")
        except OSError as err:
            raise DataError(f"{file}: not a readable HDF5 file ({first_line(err)})") from None
        self._handles.append(handle)
        return _check_datasets(file, handle)

    def _read(self, k: int, where: slice | list[int]) -> Rows:
        """Rows `where` (a slice, or sorted unique indices) of file `k`, checked."""
        handle = self._handles[k]
        try:
            ids, types = (handle[name][where] for name in DATASETS)
        except OSError as err:
            raise DataError(f"{self.files[k]}: unreadable data ({first_line(err)})") from None
        numbers = range(where.start, where.start + len(ids)) if isinstance(where, slice) else where
        self._check_values(self.files[k], ids, types, numbers)
        return ids, types

    def _check_values(self, file: Path, ids: np.ndarray, types: np.ndarray, numbers: Sequence[int]) -> None:
        checks = [(types, 0, NUM_TOKEN_TYPES, "token_type_ids", f"expected 0..{NUM_TOKEN_TYPES - 1}")]
        if self.vocab_size is not None:
            checks.append((ids, 0, self.vocab_size, "input_ids",
                           f"outside the vocabulary [0, {self.vocab_size})"))
        for values, low, high, name, expected in checks:
            bad = (values < low) | (values >= high)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise DataError(f"{file}: row {numbers[r]}: {name} holds {int(values[r, c])}, {expected}")


def open_data(path: str | Path, split: str = "train", vocab_size: int | None = None) -> HDF5Data:
    """Open a data-prep folder's `split` files, or one `.hdf5` file (then `split` is ignored).

    `vocab_size` (the model's) bounds the ids; the metadata's `vocab_size` does not.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if path.is_dir():
        metadata = read_metadata(path)
        files = _split_files(path, split, metadata)
    else:
        if path.suffix.lower() not in (".hdf5", ".h5"):
            raise DataError(f"{path}: expected a data-prep folder or an .hdf5 file")
        metadata = read_metadata(path.parent) or read_metadata(path.parent.parent)
        files = [path]
        if metadata is not None and not any(_SPLIT_FILE.fullmatch(path.name) and path.name.startswith(f"{s}_")
                                            for s in SPLITS):
            metadata = None
    data = HDF5Data(files, metadata, vocab_size)
    if metadata is not None:
        _check_against_metadata(data, metadata)
    return data


def read_metadata(folder: Path) -> dict[str, Any] | None:
    """The folder's `metadata.yaml`, checked to be a data-prep mapping (None if absent)."""
    file = folder / METADATA_FILE
    if not file.is_file():
        return None
    try:
        metadata = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(f"{file}: unreadable ({first_line(err)})") from None
    except RecursionError:
        raise DataError(f"{file}: nested too deeply to be a data-prep metadata file") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{file}: expected a mapping")
    length = metadata.get("max_seq_length")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise DataError(f"{file}: missing or invalid 'max_seq_length'")
    for key in ("vocab_size", *_FILE_COUNT_KEYS.values()):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise DataError(f"{file}: invalid {key!r} {value!r}")
    if not isinstance(_file_rows(metadata), dict):
        raise DataError(f"{file}: invalid 'files'")
    return metadata


def recorded_tokenizer(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The tokenizer facts rduflow's data-prep recorded (`vocab_size` with added tokens, `eos_id`, ...);
    {} for other data (SambaNova generative_data_prep records none)."""
    metadata = metadata or {}
    own = metadata.get("rduflow")
    tokenizer = (own if isinstance(own, dict) else metadata).get("tokenizer")
    return {k: v for k, v in tokenizer.items() if isinstance(v, int) and not isinstance(v, bool)} \
        if isinstance(tokenizer, dict) else {}


def tokenizer_folder(path: str | Path) -> Path | None:
    """The `tokenizer/` folder of a data folder, or of the folder holding an .hdf5 file (None if none)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / TOKENIZER_FOLDER, folder.parent / TOKENIZER_FOLDER):
        if candidate.is_dir():
            return candidate
    return None


def _split_files(folder: Path, split: str, metadata: dict[str, Any] | None) -> list[Path]:
    files = split_files(folder, split)
    if not files:
        raise DataError(f"{folder}: no {split} files ({split}_*_of_*.hdf5)")
    expected = (metadata or {}).get(_FILE_COUNT_KEYS[split]) if split in _FILE_COUNT_KEYS else None
    if expected is not None and expected != len(files):
        raise DataError(f"{folder}: {len(files)} {split} files, but {METADATA_FILE} says {expected}")
    return files


def split_files(folder: Path, split: str) -> list[Path]:
    """The `{split}_{i}_of_{N}.hdf5` files of a folder, in order (empty if there are none);
    DataError naming what is missing when the set is incomplete."""
    found = sorted((int(m["i"]), int(m["n"]), p) for p in folder.glob(f"{split}_*_of_*.hdf5")
                   if (m := _SPLIT_FILE.fullmatch(p.name)) and m["split"] == split)
    if not found and (folder / "hdf5").is_dir():
        return split_files(folder / "hdf5", split)
    if not found:
        return []
    total = found[0][1]
    expected = [f"{split}_{i}_of_{total}.hdf5" for i in range(1, total + 1)]
    missing = sorted(set(expected) - {p.name for _, _, p in found})
    if missing or len(found) != total:
        raise DataError(f"{folder}: incomplete {split} files (missing or mismatched: "
                        f"{', '.join(missing) or 'different _of_ counts'})")
    return [p for _, _, p in found]


def _file_rows(metadata: dict[str, Any]) -> Any:
    """rduflow's per-file row counts: `rduflow.files` (format 2) or `files` (format 1); {} if absent."""
    own = metadata.get("rduflow")
    return (own if isinstance(own, dict) else metadata).get("files", {}) or {}


def _check_against_metadata(data: HDF5Data, metadata: dict[str, Any]) -> None:
    if data.max_seq_length != metadata["max_seq_length"]:
        raise DataError(f"{data.files[0]}: sequences of {data.max_seq_length} tokens, but {METADATA_FILE} "
                        f"says max_seq_length {metadata['max_seq_length']}")
    listed = _file_rows(metadata)
    counts = {name: rows for split in SPLITS if isinstance(listed.get(split), dict)
              for name, rows in listed[split].items()}
    for file, rows in zip(data.files, data.file_rows):
        if file.name in counts and counts[file.name] != rows:
            raise DataError(f"{file}: {rows} sequences, but {METADATA_FILE} says {counts[file.name]}")


def _check_datasets(file: Path, handle: h5py.File) -> tuple[int, int]:
    shapes = []
    for name in DATASETS:
        dataset = get_dataset(file, handle, name)
        if not isinstance(dataset, h5py.Dataset):
            raise DataError(f"{file}: missing dataset {name!r}")
        if dataset.dtype != np.int32:
            raise DataError(f"{file}: dataset {name!r} has dtype {dataset.dtype}, expected int32")
        if dataset.ndim != 2:
            raise DataError(f"{file}: dataset {name!r} has shape {dataset.shape}, "
                            "expected 2-D (sequences, max_seq_length)")
        shapes.append(dataset.shape)
    if shapes[0] != shapes[1]:
        raise DataError(f"{file}: input_ids shape {shapes[0]} differs from token_type_ids shape {shapes[1]}")
    if shapes[0][1] < 1:
        raise DataError(f"{file}: sequences of length 0")
    return shapes[0]


def get_dataset(file: Path, handle: h5py.File, name: str) -> Any:
    """`handle[name]` (None if absent); a DataError for a link that cannot be followed."""
    try:
        return handle.get(name)
    except (RuntimeError, KeyError, OSError) as err:
        raise DataError(f"{file}: dataset {name!r} cannot be opened ({first_line(err)})") from None


def _common_width(files: list[Path], shapes: list[tuple[int, int]]) -> int:
    width = shapes[0][1]
    for file, (_, other) in zip(files, shapes):
        if other != width:
            raise DataError(f"{file}: sequences of {other} tokens, but {files[0].name} has {width}")
    return width
