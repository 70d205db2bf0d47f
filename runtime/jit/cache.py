"""The on-disk native-code cache: object code of compiled kernels, keyed by content.

Entries live in `$RDUFLOW_CACHE_DIR` (default `~/.cache/rduflow/jit/`), one file per
key: a magic tag, a SHA-256 of the payload, and the payload (msgpack: object code
and stage plans). Writes go to a temporary file renamed into place, so readers
never see half an entry; an entry that fails its checksum or does not decode is
ignored (and rebuilt by the caller).

The cache holds at most `$RDUFLOW_CACHE_MAX_MB` megabytes (default 1024): a hit
marks its entry used (its modification time), and after new entries are stored
the least recently used ones go until the cache is back under 90% of the limit.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import msgpack

from ir.errors import ConfigError
from runtime.jit.kernel import StagePlan

MAGIC = b"RDUJIT2\n"
#: the default size limit, in megabytes
DEFAULT_MAX_MB = 1024
#: pruning stops below this fraction of the limit, so it does not run on every store
PRUNED_FRACTION = 0.9


def default_dir() -> Path:
    env = os.environ.get("RDUFLOW_CACHE_DIR")
    return Path(env) / "jit" if env else Path.home() / ".cache" / "rduflow" / "jit"


def default_max_bytes() -> int:
    """`$RDUFLOW_CACHE_MAX_MB` in bytes; ConfigError unless it is a positive number."""
    env = os.environ.get("RDUFLOW_CACHE_MAX_MB")
    if env is None:
        return DEFAULT_MAX_MB << 20
    try:
        megabytes = float(env)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0:
        raise ConfigError(f"RDUFLOW_CACHE_MAX_MB must be a positive number of megabytes, got '{env}'")
    return int(megabytes * (1 << 20))


class DiskCache:
    """Object code and stage plans by code key, at most `max_bytes` of them."""

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_dir()
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.o"

    def get(self, key: str) -> tuple[bytes, list[StagePlan]] | None:
        """The entry for `key` (marked as just used), or None if absent or damaged."""
        try:
            data = self.path(key).read_bytes()
            os.utime(self.path(key))
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

    def prune(self) -> int:
        """Remove the least recently used entries while the cache is over its limit, down to
        `PRUNED_FRACTION` of it; the number removed (entries another process removes first
        are skipped)."""
        entries = []
        for path in self.root.glob("*/*.o"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return 0
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes * PRUNED_FRACTION:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed
