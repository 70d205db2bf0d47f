"""Writing: HDF5 row files, their balancing, and output that appears whole or not at all.

Everything is written into a staging folder beside the target (named after the run's
process id) and renamed into place at the end; a failure removes it, and a later run
removes the staging folders of runs whose process is gone.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ir.errors import DataError
from runtime.hdf5_data import METADATA_FILE

CHUNK_BYTES = 256 << 10
CATEGORY_DATASET = "category_ids"


class HDF5Writer:
    """Appends rows to resizable int32 datasets, whole chunks at a time; the file opens on first use."""

    def __init__(self, path: Path, length: int, names: tuple[str, ...]):
        self.path = path
        self.length = length
        self.names = names
        self.rows = 0
        self.chunk_rows = max(1, CHUNK_BYTES // (4 * length))
        self._file: h5py.File | None = None
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def append(self, rows: np.ndarray) -> None:
        """Add `rows` (shape (fields, n, length))."""
        if not rows.shape[1]:
            return
        self._buffer.append(rows)
        self._buffered += rows.shape[1]
        if self._buffered >= self.chunk_rows:
            self._write(final=False)

    def close(self) -> None:
        """Write what is buffered and close the file (an empty file if nothing came)."""
        self._write(final=True)
        self._open().close()

    def abandon(self) -> None:
        """Close without writing the buffer (the output is being thrown away)."""
        self._buffer = []
        if self._file is not None and self._file.id.valid:
            try:
                self._file.close()
            except (OSError, RuntimeError):
                pass

    def _open(self) -> h5py.File:
        if self._file is None:
            # no chunk cache: a write that fails (full disk) leaves no dirty chunk to flush at exit
            self._file = h5py.File(self.path, "w", rdcc_nbytes=0)
            for name in self.names:
                self._file.create_dataset(name, shape=(0, self.length), maxshape=(None, self.length), dtype="<i4",
                                          chunks=(self.chunk_rows, self.length), compression="gzip",
                                          compression_opts=1, shuffle=True, track_times=False)
        return self._file

    def _write(self, final: bool) -> None:
        if not self._buffer:
            return
        block = np.concatenate(self._buffer, axis=1)
        n = block.shape[1] if final else block.shape[1] // self.chunk_rows * self.chunk_rows
        file = self._open()
        for name, data in zip(self.names, block):
            file[name].resize(self.rows + n, axis=0)
            file[name][self.rows:self.rows + n] = data[:n]
        self.rows += n
        rest = block[:, n:]
        self._buffer, self._buffered = ([rest], rest.shape[1]) if rest.shape[1] else ([], 0)


def balance(paths: list[Path]) -> list[int]:
    """Move rows so the files' row counts differ by at most one, as the reference does; the counts after.

    The first `remainder` files get one row over the mean; each file over its target
    gives its last rows and the files under theirs take them, in file order.
    """
    if not paths:
        return []
    counts = []
    for path in paths:
        with h5py.File(path, "r") as f:
            counts.append(f["input_ids"].shape[0])
    mean, remainder = divmod(sum(counts), len(paths))
    targets = [mean + (i < remainder) for i in range(len(paths))]
    moved: list[dict[str, np.ndarray]] = []
    for path, count, target in zip(paths, counts, targets):
        if count > target:
            with h5py.File(path, "r+", rdcc_nbytes=0) as f:
                moved.append({name: f[name][target:] for name in f})
                for name in f:
                    f[name].resize(target, axis=0)
    pool = {name: np.concatenate([m[name] for m in moved]) for name in moved[0]} if moved else {}
    taken = 0
    for path, count, target in zip(paths, counts, targets):
        if count < target:
            with h5py.File(path, "r+", rdcc_nbytes=0) as f:
                for name in f:
                    f[name].resize(target, axis=0)
                    f[name][count:] = pool[name][taken:taken + target - count]
            taken += target - count
    return targets


@contextmanager
def staged_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder beside `target`, renamed to it on success and removed on failure."""
    staging = _staging(target, "")
    try:
        staging.mkdir()
    except OSError as err:
        raise DataError(f"cannot create the output folder beside {target} ({err.strerror})") from None
    try:
        yield staging
        check_target(target, overwrite)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """A staging file beside `target`, renamed to it on success and removed on failure."""
    staging = _staging(target, ".hdf5")
    try:
        yield staging
        check_target(target, overwrite, folder=False)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _staging(target: Path, suffix: str) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {target.parent} ({err.strerror})") from None
    remove_stale_staging(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove what dead runs left staged beside `target` (their process is gone); return it."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*.partial*"):
        pid = path.name[len(target.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(staging: Path, target: Path) -> None:
    old = staging.with_suffix(".old")
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    if old.exists():
        shutil.rmtree(old)


def check_target(target: Path, overwrite: bool, folder: bool = True) -> None:
    """Refuse an existing output unless `overwrite`, and never replace something that is not ours."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"output {target} already exists; pass --overwrite to replace it")
    if target.is_symlink() or target.is_dir() != folder:
        raise DataError(f"output {target} exists and is not a {'folder' if folder else 'file'}; not replacing it")
    if folder and any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise DataError(f"output {target} is a folder without metadata.yaml, not a data-prep output; "
                        "not replacing it")
