"""Golden tests in the style of MLIR's lit: the `// RUN:` lines of tests/compiler/passes/lit/*.ir.

A RUN line is `[not] rduflow ARGS [REDIRECTS] | filecheck %s [FILECHECK-ARGS]`:
`%s` is the test file, `not` expects the command to fail, REDIRECTS are `2>&1`
and `>/dev/null` applied left to right as in a shell. The `rduflow` command runs
in process (it is the slow part); the `filecheck` package checks its output.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pass_cli import run_rduflow

LIT = Path(__file__).parent / "lit"
_RUN = re.compile(r"^//\s*RUN:\s*(.*)$", re.MULTILINE)


def run_lines(path: Path) -> list[str]:
    return [line.replace("%s", shlex.quote(str(path))) for line in _RUN.findall(path.read_text())]


def lit_cases() -> list:
    return [pytest.param(path, i, id=f"{path.name}:{i + 1}")
            for path in sorted(LIT.glob("*.ir")) for i in range(len(run_lines(path)))]


@pytest.mark.parametrize("path, index", lit_cases())
def test_lit(path: Path, index: int, tmp_path: Path, monkeypatch):
    command = run_lines(path)[index]
    left, _, right = command.partition("|")
    words, check = shlex.split(left), shlex.split(right)
    expect_failure = words[0] == "not"
    words = words[1:] if expect_failure else words
    assert words[0] == "rduflow" and check[0] == "filecheck", f"unsupported RUN line: {command}"
    monkeypatch.chdir(tmp_path)
    code, output, stderr = run_rduflow(words[1:])
    assert (code != 0) == expect_failure, f"RUN: {command}\nexit {code}\n{output}\n{stderr}"
    done = subprocess.run([sys.executable, "-m", "filecheck", *check[1:]], input=output,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"RUN: {command}\n{done.stdout}{done.stderr}\n--- output ---\n{output}"


def test_every_pass_has_a_lit_file():
    from compiler.passes import PASSES

    builtin = {name for name, cls in PASSES.items() if cls.__module__.startswith("compiler.passes.")}
    tested = {m for path in LIT.glob("*.ir") for m in re.findall(r"-p '?([a-z-]+)", path.read_text())}
    assert builtin <= tested, f"passes without a golden test in tests/compiler/passes/lit: {sorted(builtin - tested)}"
