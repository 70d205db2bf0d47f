"""The "Writing a pass" example of README.md runs as shown."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from pass_cli import run_rduflow

README = Path(__file__).parents[3] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Writing a pass")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)


def _run(command: str) -> tuple[int, str, str]:
    words = shlex.split(command)
    assert words[0] == "rduflow"
    return run_rduflow(words[1:])


def test_readme_pass_example(tmp_path, monkeypatch):
    blocks = _blocks(_section())
    plugin = next(body for lang, body in blocks if lang == "python")
    ir = next(body for lang, body in blocks if lang == "" and body.startswith("graph @"))
    console = next(body for lang, body in blocks if lang == "console")
    plugin_file = re.search(r"Save this as `([^`]+)`", _section())[1]
    ir_file = re.search(r"this IR as `([^`]+)`", _section())[1]
    assert plugin_file == "out/div_to_mul.py" and ir_file == "out/scale.ir"  # in the README's ignored folder
    (tmp_path / "out").mkdir()
    (tmp_path / plugin_file).write_text(plugin)
    (tmp_path / ir_file).write_text(ir)
    command, *expected = console.splitlines()
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(command.removeprefix("$ "))
    assert code == 0, err
    assert out == ""
    assert err.rstrip("\n").splitlines() == expected
    result = (tmp_path / "out" / "scale.opt.ir").read_text()
    assert "mul(%x" in result and "value = 4.0" not in result

    code, listed, _ = _run(f"rduflow passes --load-pass {plugin_file}")
    assert code == 0 and "div-to-mul" in listed and "exact-only: bool = true" in listed
    code, _, err = _run(f"rduflow opt {ir_file} --load-pass {plugin_file} -p div-to-mul{{exact-only=false}} "
                        "--verify-semantics --pass-statistics -o out/out.ir")
    assert code == 0, err
    assert re.search(r"div-to-mul\.rewritten\s*│\s*2\s*│", err)
