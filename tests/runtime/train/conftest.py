"""Shared fixtures of the training tests: compiled PEFs."""
from __future__ import annotations

import pytest

from tools.cli import main
from train_helpers import FIXTURES


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
