"""Golden tests in the style of MLIR's lit: each `// RUN:` line of tests/passes/lit/*.ir runs in a shell.

`%s` is the test file; `not CMD` succeeds when CMD fails; a pipeline fails when any
command in it fails. The `filecheck` package checks the output against `// CHECK:` lines.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

LIT = Path(__file__).parent / "lit"
_RUN = re.compile(r"^//\s*RUN:\s*(.*)$", re.MULTILINE)
_PRELUDE = 'not() { ! "$@"; }; set -o pipefail; '


def run_lines(path: Path) -> list[str]:
    return [line.replace("%s", shlex.quote(str(path))) for line in _RUN.findall(path.read_text())]


def lit_cases() -> list:
    return [pytest.param(path, i, id=f"{path.name}:{i + 1}")
            for path in sorted(LIT.glob("*.ir")) for i in range(len(run_lines(path)))]


@pytest.mark.parametrize("path, index", lit_cases())
def test_lit(path: Path, index: int, tmp_path: Path):
    command = run_lines(path)[index]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", _PRELUDE + command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"RUN: {command}\n{done.stdout}\n{done.stderr}"


def test_every_pass_has_a_lit_file():
    from compiler.passes import PASSES

    builtin = {name for name, cls in PASSES.items() if cls.__module__.startswith("compiler.passes.")}
    tested = {m for path in LIT.glob("*.ir") for m in re.findall(r"-p '?([a-z-]+)", path.read_text())}
    assert builtin <= tested, f"passes without a golden test in tests/passes/lit: {sorted(builtin - tested)}"
