"""Byte-for-byte stability of compiled programs: every zoo model at -O0/-O1/-O3, training
and inference, compiles to a PEF whose sha256 is the one recorded in `pef_hashes.json`.

A refactoring of the compiler must leave these unchanged. A change that means to change
the bytes re-records them with `PYTHONPATH=. python tests/test_pef_hashes.py --record` and says why.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from compiler import zoo
from compiler.driver import CompileOptions, compile_model
from compiler.passes import PassManager
from compiler.pass_manager.levels import level_pipeline

HASHES = Path(__file__).with_name("pef_hashes.json")
LEVELS = ("O0", "O1", "O3")
MODES = ("training", "inference")


def pef_sha256(model: str, level: str, mode: str) -> str:
    """The sha256 of `model`'s PEF at `level`, as `rduflow compile -O<level>` makes it."""
    options = CompileOptions(model, inference=mode == "inference", pack_sections=level != "O0")
    pef = compile_model(options, PassManager.parse(level_pipeline(level))).pef
    return hashlib.sha256(pef.to_bytes()).hexdigest()


def cases() -> list[str]:
    return [f"{model}-{level}-{mode}" for model in zoo.names() for level in LEVELS for mode in MODES]


def test_every_case_is_recorded():
    assert sorted(json.loads(HASHES.read_text())) == sorted(cases())


@pytest.mark.parametrize("case", cases())
def test_pef_bytes_are_unchanged(case):
    assert pef_sha256(*case.split("-")) == json.loads(HASHES.read_text())[case]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    HASHES.write_text(json.dumps({case: pef_sha256(*case.split("-")) for case in cases()}, indent=1,
                                 sort_keys=True) + "\n")
