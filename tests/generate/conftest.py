"""Shared fixtures of the generation tests: the JIT cache under pytest's cache dir, and
generation PEFs of the tiny Hugging Face checkpoints (compiled once per session)."""
from __future__ import annotations

import os

import pytest

from generate_helpers import MODELS, compile_generation


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


@pytest.fixture(scope="session")
def compiled():
    """model name -> the compile result (graphs and PEF) for a batch of 3, as `rduflow compile --inference -b 3`."""
    return {name: compile_generation(name, batch_size=3) for name in MODELS}
