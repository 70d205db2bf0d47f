"""`rduflow opt` and `rduflow passes` in process: output, exit codes, plugins, dumps."""
from __future__ import annotations

import io
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from compiler.pass_manager import registry
from compiler.passes import PASSES
from ir.parser import parse
from ir.printer import print_graph
from tools.cli import main

IR = """graph @g {
  input %x : f32[4]
  %0 = exp(%x) : f32[4] loc("m.rdl":2:3)
  %1 = exp(%x) : f32[4]
  %2 = add(%0, %1) : f32[4]
  output y = %2
}
"""

PLUGIN = '''
import attrs
from compiler.passes import Pass, register_pass


@register_pass
@attrs.frozen
class {cls}(Pass):
    """{doc}"""

    name = "{name}"

    def run(self, graph, ctx):
        {body}
        return graph
'''


@pytest.fixture
def ir_file(tmp_path: Path) -> Path:
    path = tmp_path / "g.ir"
    path.write_text(IR)
    return path


def test_empty_pipeline_reprints(ir_file, capsys):
    assert main(["opt", str(ir_file)]) == 0
    assert capsys.readouterr().out == IR


def test_pipeline_to_output_file(ir_file, tmp_path, capsys):
    out = tmp_path / "out.ir"
    assert main(["opt", str(ir_file), "-p", "cse", "-o", str(out), "--no-locs"]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == ""
    assert text.count("exp(") == 1 and "loc(" not in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_stdin(ir_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(IR))
    assert main(["opt", "-", "-O1"]) == 0
    assert print_graph(parse(capsys.readouterr().out)).count("exp(") == 1


def test_levels_and_passes_are_exclusive(ir_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["opt", str(ir_file), "-O1", "-p", "cse"])
    assert info.value.code == 2


def test_bad_ir_exits_1_with_location(tmp_path, capsys):
    path = tmp_path / "bad.ir"
    path.write_text(IR.replace("add(%0, %1)", "add(%0, %9)"))
    assert main(["opt", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:5:16: error: use of undefined value %9") and "Traceback" not in err


def test_dump_dir(ir_file, tmp_path):
    dumps = tmp_path / "dumps"
    assert main(["opt", str(ir_file), "-O1", "--dump-dir", str(dumps), "-o", str(tmp_path / "o.ir")]) == 0
    names = sorted(p.name for p in dumps.iterdir())
    assert names[:3] == ["00-input.ir", "01-canonicalize.ir", "02-fold-constants.ir"]
    assert names[-1] == "10-plan-memory.ir" and len(names) == 11


def test_crash_exits_3_with_reproducer(ir_file, tmp_path, capsys):
    plugin = tmp_path / "crash.py"
    plugin.write_text(PLUGIN.format(cls="CliCrash", doc="Crashes.", name="test-cli-crash",
                                    body="raise RuntimeError('bad pass')"))
    code = main(["opt", str(ir_file), "-p", "cse,test-cli-crash", "--load-pass", str(plugin),
                 "--crash-dir", str(tmp_path)])
    assert code == 3
    err = capsys.readouterr().err
    reproducer = tmp_path / "rduflow-crash-test-cli-crash.ir"
    assert f"rduflow opt {reproducer} -p cse,test-cli-crash --load-pass {plugin}" in err
    assert "internal error" in err
    # replaying the reproducer crashes the same way
    assert main(["opt", str(reproducer), "-p", "cse,test-cli-crash", "--load-pass", str(plugin),
                 "--crash-dir", str(tmp_path / "again")]) == 3


def test_plugin_errors_name_the_file(tmp_path, ir_file, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import attrs\n\nraise ValueError('nope')\n")
    assert main(["opt", str(ir_file), "--load-pass", str(broken)]) == 1
    assert capsys.readouterr().err.startswith(f"{broken}:3:1: error: loading pass plugin failed: ValueError: nope")
    assert main(["opt", str(ir_file), "--load-pass", str(tmp_path / "missing.py")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_entry_point_plugins(tmp_path, monkeypatch, capsys):
    (tmp_path / "ep_passes.py").write_text(PLUGIN.format(
        cls="EpPass", doc="Registered through an entry point.", name="test-ep-pass", body="pass"))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = EntryPoint(name="test-ep-pass", value="ep_passes:EpPass", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry] if group == entry.group else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(PASSES, "test-ep-pass", raising=False)
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "test-ep-pass" in out and "Registered through an entry point." in out
    PASSES.pop("test-ep-pass")


def test_passes_lists_options_and_levels(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for needle in ("canonicalize", "fold-constants", "max-elements: int = 64", "-O0", "-O3", "decompose"):
        assert needle in out


def test_debug_help_shows_hidden_options(capsys, monkeypatch):
    import argparse

    from tools import arguments, cli

    monkeypatch.setattr(arguments, "DEBUG", False)
    assert "--crash-dir" not in _help(cli)
    monkeypatch.setattr(arguments, "DEBUG", True)
    assert "--crash-dir" in _help(cli) and "--verify-semantics-seed" in _help(cli)
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)


def _help(cli) -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["opt"].format_help()
