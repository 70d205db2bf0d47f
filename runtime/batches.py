"""Training data as batches of a program's data inputs.

A program's data inputs are its graph inputs other than the run-time
hyperparameters (`lr`); each has the batch as its leading dimension. Data come
from HDF5 datasets named after those inputs, row by row:

* token data (the inputs are `input_ids` and `token_type_ids`): a data-prep
  folder or one `.hdf5` file, read through `runtime.hdf5_data` (validated
  against `metadata.yaml`, token types and the model's vocabulary);
* any other inputs (e.g. `x` and `labels` of the tutorial models): datasets of
  those names in a folder's `{split}_{i}_of_{N}.hdf5` files or in one `.hdf5`
  file, each of the input's dtype, a row holding as many values as a row of the
  input (`(rows, 8, 8)` images feed an input `f32[16, 1, 8, 8]` or `f32[16, 64]`;
  rows are reshaped in C order).

`BatchOrder` maps a global step to the rows of its batch: epoch `e` visits the
rows in the order of a permutation drawn from `(seed, e)` (or in file order with
shuffling off), in full batches (a last partial batch is left out, since shapes
are static). The order is a pure function of the step, so a resumed run sees
exactly the batches an uninterrupted one does.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import attrs
import h5py
import numpy as np

from ir.dtypes import DType
from ir.errors import DataError, first_line
from runtime import hdf5_data
from runtime.hdf5_data import TRAINED, split_files

#: run-time inputs the trainer feeds itself (a data-parallel PEF's `replica_weight`: the replica's share
#: of the global batch's loss weight); every other input comes from the data
HYPERPARAMETERS = frozenset({"lr", "replica_weight"})
TOKEN_INPUTS = ("input_ids", "token_type_ids")


@attrs.frozen
class InputSpec:
    """A data input of a program: name, shape (batch first) and dtype name (`f32`, `i32`, ...)."""

    name: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


class Rows(Protocol):
    """Rows of a dataset, read by index; `metadata` is the data-prep metadata, when there is one."""

    metadata: dict | None

    def __len__(self) -> int: ...

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...

    def weight(self, batch: dict[str, np.ndarray]) -> float: ...

    def close(self) -> None: ...


class TokenRows:
    """Token data (`input_ids`, `token_type_ids`) through the validated data-prep reader."""

    def __init__(self, data: hdf5_data.HDF5Data):
        self.data = data
        self.metadata = data.metadata

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ids, types = self.data.rows(indices)
        return {"input_ids": ids, "token_type_ids": types}

    def weight(self, batch: dict[str, np.ndarray]) -> float:
        """Positions a language-model loss counts: those whose target token is a completion token
        or the separator (end-of-sequence) token that closes one."""
        return float(np.count_nonzero(np.isin(batch["token_type_ids"][:, 1:], TRAINED)))

    def close(self) -> None:
        self.data.close()


class TensorRows:
    """Datasets named after the inputs, read across files in order."""

    def __init__(self, files: Sequence[Path], specs: Sequence[InputSpec], bounds: Mapping[str, int] | None = None):
        self.files = list(files)
        self.specs = list(specs)
        self.bounds = dict(bounds or {})
        self.metadata = None
        self._handles: list[h5py.File] = []
        try:
            counts = [self._open(file) for file in self.files]
        except BaseException:
            self.close()
            raise
        self._offsets = np.cumsum([0] + counts)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        out = {s.name: np.empty((len(indices), *s.row_shape), _np_dtype(s.dtype)) for s in self.specs}
        file_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for k in np.unique(file_of).tolist():
            where = np.flatnonzero(file_of == k)
            local, inverse = np.unique(indices[where] - self._offsets[k], return_inverse=True)
            for spec in self.specs:
                try:
                    values = self._handles[k][spec.name][local.tolist()]
                except OSError as err:
                    raise DataError(f"{self.files[k]}: unreadable dataset '{spec.name}' "
                                    f"({first_line(err)})") from None
                self._check_bound(k, spec.name, values, local)
                out[spec.name][where] = values.reshape(len(local), *spec.row_shape)[inverse]
        return out

    def _check_bound(self, k: int, name: str, values: np.ndarray, rows: np.ndarray) -> None:
        bound = self.bounds.get(name)
        bad = (values < 0) | (values >= bound) if bound is not None else None
        if bad is not None and bad.any():
            at = np.argwhere(bad)[0]
            raise DataError(f"{self.files[k]}: row {int(rows[at[0]])}: {name} holds {values[tuple(at)]}, outside "
                            f"[0, {bound})")

    def weight(self, batch: dict[str, np.ndarray]) -> float:
        """Every row counts the same."""
        return float(len(next(iter(batch.values()))))

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    def _open(self, file: Path) -> int:
        try:
            handle = h5py.File(file, "r")
        except OSError as err:
            raise DataError(f"{file}: not a readable HDF5 file ({first_line(err)})") from None
        self._handles.append(handle)
        counts = {_check_dataset(file, handle, spec) for spec in self.specs}
        if len(counts) != 1:
            raise DataError(f"{file}: datasets {', '.join(s.name for s in self.specs)} have different numbers "
                            "of rows")
        return counts.pop()


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(DType(name).np)


def _check_dataset(file: Path, handle: h5py.File, spec: InputSpec) -> int:
    dataset = hdf5_data.get_dataset(file, handle, spec.name)
    if not isinstance(dataset, h5py.Dataset):
        found = ", ".join(sorted(handle.keys())) or "none"
        raise DataError(f"{file}: missing dataset '{spec.name}' for the program input of that name "
                        f"(datasets found: {found})")
    if dataset.dtype != _np_dtype(spec.dtype):
        raise DataError(f"{file}: dataset '{spec.name}' has dtype {dataset.dtype}, the program input is "
                        f"{spec.dtype} ({_np_dtype(spec.dtype)})")
    if dataset.ndim < 1 or math.prod(dataset.shape[1:]) != math.prod(spec.row_shape):
        raise DataError(f"{file}: dataset '{spec.name}' has shape {tuple(dataset.shape)}, expected rows of "
                        f"{math.prod(spec.row_shape)} values, e.g. (rows, {', '.join(map(str, spec.row_shape))}), "
                        f"for input {spec.name}{list(spec.shape)}")
    return int(dataset.shape[0])


def has_split(path: str | Path, split: str) -> bool:
    """Whether `path` is a folder holding `split` data (a single file holds only training data)."""
    path = Path(path)
    return path.is_dir() and bool(split_files(path, split))


def is_token_data(specs: Sequence[InputSpec]) -> bool:
    return sorted(s.name for s in specs) == sorted(TOKEN_INPUTS)


def open_rows(path: str | Path, split: str, specs: Sequence[InputSpec],
              bounds: Mapping[str, int] | None = None) -> Rows:
    """The `split` rows of `path` (a folder, or one `.hdf5` file) for the inputs `specs`, checked.

    `bounds` gives index inputs their exclusive upper bound (`input_ids`: the vocabulary size,
    `labels`: the number of classes); a value outside is a DataError naming file and row."""
    bounds = dict(bounds or {})
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if is_token_data(specs):
        data = hdf5_data.open_data(path, split, bounds.get("input_ids"))
        rows: Rows = TokenRows(data)
        width = next(s for s in specs if s.name == "input_ids").row_shape
        problem = None
        if (data.max_seq_length,) != width:
            problem = (f"sequences of {data.max_seq_length} tokens, but the program was compiled for seq_len "
                       f"{width[0]} (recompile with seq_len={data.max_seq_length}, or prepare the data with "
                       f"--max-seq-length {width[0]})")
        vocab, bound = hdf5_data.recorded_tokenizer(data.metadata).get("vocab_size"), bounds.get("input_ids")
        if problem is None and vocab is not None and bound is not None and vocab > bound:
            problem = (f"the data's tokenizer has {vocab} ids, the model's vocabulary only {bound} (recompile "
                       f"with vocab_size={vocab}, or prepare the data with the model's tokenizer)")
        if problem is not None:
            rows.close()
            raise DataError(f"{path}: {problem}")
        return rows
    if path.is_dir():
        files = split_files(path, split)
        if not files:
            raise DataError(f"{path}: no {split} files ({split}_*_of_*.hdf5)")
    elif path.suffix.lower() in (".hdf5", ".h5"):
        files = [path]
    else:
        raise DataError(f"{path}: expected a data folder or an .hdf5 file")
    return TensorRows(files, specs, bounds)


@attrs.frozen
class BatchOrder:
    """Which rows make the batch of each global step."""

    num_rows: int
    batch_size: int
    shuffle: bool = True
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.num_rows < self.batch_size:
            raise DataError(f"the data hold {self.num_rows} rows, fewer than one batch of {self.batch_size} "
                            "(the program's batch size)")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.batch_size

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch), both 0-based, of 0-based global step `step`."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the rows in `epoch`."""
        if not self.shuffle:
            return np.arange(self.num_rows, dtype=np.int64)
        return _permutation(self.num_rows, self.seed, epoch)

    def indices(self, step: int) -> np.ndarray:
        """The rows of step `step`'s batch."""
        epoch, index = self.position(step)
        start = index * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size]


def eval_batches(rows: Rows, batch_size: int) -> list[np.ndarray]:
    """The full batches of an evaluation pass over `rows`, in order."""
    count = len(rows) // batch_size
    return [np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.int64) for i in range(count)]


@functools.lru_cache(maxsize=2)
def _permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    order.flags.writeable = False
    return order
