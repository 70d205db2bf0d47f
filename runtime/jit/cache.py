"""The on-disk native-code cache: object code of compiled kernels, keyed by content.

Entries live in `$RDUFLOW_CACHE_DIR` (default `~/.cache/rduflow/jit/`), one file per
key: a magic tag, a SHA-256 of the payload, and the payload (msgpack: object code
and stage plans). Writes go to a temporary file renamed into place, so readers
never see half an entry; an entry that fails its checksum or does not decode is
ignored (and rebuilt by the caller).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import msgpack

from runtime.jit.kernel import StagePlan

MAGIC = b"RDUJIT2\n"


def default_dir() -> Path:
    env = os.environ.get("RDUFLOW_CACHE_DIR")
    return Path(env) / "jit" if env else Path.home() / ".cache" / "rduflow" / "jit"


class DiskCache:
    """Object code and stage plans by code key."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.o"

    def get(self, key: str) -> tuple[bytes, list[StagePlan]] | None:
        """The entry for `key`, or None if absent or damaged."""
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        head, digest, payload = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
        if head != MAGIC or hashlib.sha256(payload).digest() != digest:
            return None
        try:
            obj, plans = msgpack.unpackb(payload, raw=False)
            return bytes(obj), [StagePlan(str(s), int(e), int(w), int(p)) for s, e, w, p in plans]
        except (ValueError, TypeError, msgpack.UnpackException):
            return None

    def put(self, key: str, obj: bytes, plans: list[StagePlan]) -> None:
        """Store an entry atomically; a cache that cannot be written is skipped silently."""
        payload = msgpack.packb([obj, [[p.symbol, p.extent, p.work, p.pieces] for p in plans]], use_bin_type=True)
        path = self.path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
