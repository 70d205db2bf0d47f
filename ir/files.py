"""File modes: files written through a temporary file get the mode a plain `open` would give.

`tempfile.mkstemp` creates files readable by their owner only (0600), and so does the
safetensors writer; `honour_umask` gives them 0666 less the process's umask, as `open` does.
"""
from __future__ import annotations

import os
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
