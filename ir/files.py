"""Writing files atomically, with the mode a plain `open` would give.

`write_atomically` writes through a temporary file in the target's folder, renamed into
place, so a reader never sees half a file and a failed write leaves nothing behind.
`tempfile.mkstemp` creates files readable by their owner only (0600), and so does the
safetensors writer; `honour_umask` gives them 0666 less the process's umask, as `open` does.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(file: int | str | Path) -> None:
    """Set a file's mode (an open descriptor or a path) to 0666 less the umask."""
    mode = 0o666 & ~umask()
    if isinstance(file, int):
        os.fchmod(file, mode)
    else:
        os.chmod(file, mode)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary file renamed into place; an OSError
    (a full disk, a missing folder) leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        honour_umask(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
