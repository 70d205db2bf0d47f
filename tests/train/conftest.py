"""Shared fixtures of the training tests: the JIT cache under pytest's cache dir, compiled PEFs."""
from __future__ import annotations

import os

import pytest

from tools.cli import main
from train_helpers import FIXTURES


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
def fixture_pefs(tmp_path_factory) -> dict[str, str]:
    """Training PEFs of the tiny HF checkpoints, with the fixtures' AdamW (weight decay 0.01, clip 1.0)."""
    out = tmp_path_factory.mktemp("pefs")
    pefs = {}
    for name in ("gpt2-tiny", "llama-tiny"):
        assert main(["compile", str(FIXTURES / "hf" / name), "--weight-decay", "0.01", "--max-grad-norm", "1.0",
                     "-o", str(out), "--pef-name", name]) == 0
        pefs[name] = str(out / name / f"{name}.pef")
    return pefs
