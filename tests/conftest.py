"""Session-wide test set-up: the JIT's disk cache lives under pytest's cache dir."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def jit_cache_dir(tmp_path_factory, request):
    """Keep compiled kernels in the pytest cache (reused across runs), not in the home folder."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("rduflow-jit") if cache is not None else tmp_path_factory.mktemp("jit")
    previous = os.environ.get("RDUFLOW_CACHE_DIR")
    os.environ["RDUFLOW_CACHE_DIR"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("RDUFLOW_CACHE_DIR", None)
    else:
        os.environ["RDUFLOW_CACHE_DIR"] = previous
