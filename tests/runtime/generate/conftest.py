"""Shared fixtures of the generation tests: generation PEFs of the tiny Hugging Face checkpoints (compiled once per session)."""
from __future__ import annotations

import pytest

from generate_helpers import MODELS, compile_generation


@pytest.fixture(scope="session")
def compiled():
    """model name -> the compile result (graphs and PEF) for a batch of 3, as `rduflow compile --inference -b 3`."""
    return {name: compile_generation(name, batch_size=3) for name in MODELS}
