"""Benchmarks run only when asked for: `pytest tests/benchmarks --benchmark-enable`.

The default run (`--benchmark-disable`, set in pyproject.toml) skips them, so the
test suite stays fast; each benchmark compares implementations side by side.
"""
import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_enable"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --benchmark-enable")
    for item in items:
        if "tests/benchmarks/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
