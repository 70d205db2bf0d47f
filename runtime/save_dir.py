"""A training run's save folder: locked by the run using it; its metrics CSV never truncated.

`SaveDirLock` holds an exclusive `fcntl` lock on `DIR/.rduflow.lock` (which names the
holder: pid, start time, command line) from the start of a run to its end; a second
run into the same folder gets a CheckpointError naming the first. The kernel drops the
lock when its process dies, so a killed run leaves no stale lock behind.

`MetricsFile` appends rows to `per_step_metrics.csv`. A resumed run first keeps the rows
up to its checkpoint's step: they are written, with the header, to a file beside the
CSV which is then renamed over it, so a kill at any moment leaves either the old file
whole or the kept rows, never an empty or half-written one.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from ir.errors import CheckpointError

LOCK_FILE = ".rduflow.lock"


class SaveDirLock:
    """The exclusive lock of one save folder, held until `release()`."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CheckpointError(f"cannot lock {folder}: {err.strerror or err}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self.fd)
            raise CheckpointError(f"{folder} is in use by another training run ({holder}); wait for it to end "
                                  "or save elsewhere") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        note = f"pid {os.getpid()}, started {started}: {' '.join(sys.argv)}"[:1000]
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, note.encode() + b"\n", 0)

    def release(self) -> None:
        """Unlock (the lock file stays: removing it could race with the next run taking it)."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


class MetricsFile:
    """`per_step_metrics.csv` opened for appending rows (after the kept rows of a resumed run)."""

    def __init__(self, path: str | Path, columns: Sequence[str], first_step: int):
        self.path = Path(path)
        kept = kept_rows(self.path, first_step) if first_step else []
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(columns)
        writer.writerows(kept)
        aside = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with open(aside, "w", newline="", encoding="utf-8") as handle:
                handle.write(text.getvalue())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(aside, self.path)
            self.handle = open(self.path, "a", newline="", encoding="utf-8")
        except BaseException as err:
            aside.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}") from None
            raise
        self.writer = csv.writer(self.handle)

    def writerow(self, row: list[str]) -> None:
        try:
            self.writer.writerow(row)
        except OSError as err:
            raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}") from None

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}") from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError as err:
            raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}") from None


def kept_rows(path: Path, up_to: int) -> list[list[str]]:
    """Rows of an existing metrics file for steps <= `up_to` (a resumed run rewrites the rest);
    CheckpointError naming the line for a file that is not UTF-8 text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise CheckpointError(f"{path}:{line}: not UTF-8 text, so its rows cannot be kept; move it away "
                              "to resume") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return [row for row in rows[1:] if row and re.fullmatch(r"\d{1,18}", row[0]) and int(row[0]) <= up_to]
