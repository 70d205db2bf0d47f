"""The JIT's disk cache keeps to its size limit, dropping the least recently used entries."""
from __future__ import annotations

import os

import pytest

from ir.errors import ConfigError
from runtime.jit.cache import DiskCache, default_max_bytes
from runtime.jit.kernel import StagePlan

PLANS = [StagePlan("rdu_x_s0", 1, 1, 1)]


def fill(cache: DiskCache, keys: list[str], size: int) -> None:
    """Entries of about `size` bytes, each older than the next."""
    for age, key in enumerate(reversed(keys)):
        cache.put(key, b"x" * size, PLANS)
        os.utime(cache.path(key), ns=(10**18 - age * 10**9, 10**18 - age * 10**9))


def test_prune_drops_least_recently_used_entries_down_to_90_percent(tmp_path):
    keys = [f"{i:02x}" * 16 for i in range(10)]  # keys[0] is the oldest
    fill(DiskCache(tmp_path, max_bytes=10**9), keys, 1000)
    size = DiskCache(tmp_path).path(keys[0]).stat().st_size
    assert DiskCache(tmp_path, max_bytes=10 * size).prune() == 0  # at the limit: nothing goes
    assert DiskCache(tmp_path, max_bytes=8 * size).prune() == 3  # down to 7.2 entries' worth
    assert {p.stem for p in tmp_path.rglob("*.o")} == set(keys[3:])


def test_a_hit_marks_an_entry_used(tmp_path):
    keys = [f"{i:02x}" * 16 for i in range(10)]
    cache = DiskCache(tmp_path, max_bytes=10**9)
    fill(cache, keys, 1000)
    size = cache.path(keys[0]).stat().st_size
    assert cache.get(keys[0]) is not None  # the oldest entry, now the newest
    small = DiskCache(tmp_path, max_bytes=5 * size)
    assert small.prune() == 6  # down to 4.5 entries' worth: 4 stay
    left = {p.stem for p in tmp_path.rglob("*.o")}
    assert left == {keys[0], *keys[7:]}


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan"])
def test_a_bad_size_limit_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv("RDUFLOW_CACHE_MAX_MB", value)
    with pytest.raises(ConfigError, match=f"RDUFLOW_CACHE_MAX_MB must be a positive number of megabytes, got '{value}'"):
        default_max_bytes()


def test_the_size_limit_reads_megabytes(monkeypatch):
    monkeypatch.setenv("RDUFLOW_CACHE_MAX_MB", "1.5")
    assert default_max_bytes() == 3 << 19
    monkeypatch.delenv("RDUFLOW_CACHE_MAX_MB")
    assert default_max_bytes() == 1024 << 20
