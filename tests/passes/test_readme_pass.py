"""The "Writing a pass" example of README.md runs as shown."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Writing a pass")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_readme_pass_example(tmp_path):
    blocks = _blocks(_section())
    plugin = next(body for lang, body in blocks if lang == "python")
    ir = next(body for lang, body in blocks if lang == "" and body.startswith("graph @"))
    console = next(body for lang, body in blocks if lang == "console")
    (tmp_path / "div_to_mul.py").write_text(plugin)
    (tmp_path / "scale.ir").write_text(ir)
    command, *expected = console.splitlines()
    done = _run(command.removeprefix("$ "), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.rstrip("\n").splitlines() == expected
    result = (tmp_path / "scale.opt.ir").read_text()
    assert "mul(%x" in result and "value = 4.0" not in result

    listed = _run("rduflow passes --load-pass div_to_mul.py", tmp_path)
    assert "div-to-mul" in listed.stdout and "exact-only: bool = true" in listed.stdout
    checked = _run("rduflow opt scale.ir --load-pass div_to_mul.py -p div-to-mul{exact-only=false} "
                   "--verify-semantics --pass-statistics", tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"div-to-mul\.rewritten\s*│\s*2\s*│", checked.stderr)
