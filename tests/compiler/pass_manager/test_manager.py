"""The pass manager: verification, statistics, instrumentation, bisect and crash reproducers."""
from __future__ import annotations

import io

import attrs
import numpy as np
import pytest
from pass_graphs import classifier

from compiler.passes import Pass, PassManager, register_pass
from compiler.pass_manager.instrument import Bisect, DumpDir, PassStatistics, PrintIR, TimePasses
from compiler.pass_manager.semantics import VerifySemantics, index_bounds, random_inputs
from ir.errors import PassError
from ir.graph import Op
from ir.parser import parse
from ir.printer import print_graph
from ir.rewrite import rewrite

SMALL = """graph @g {
  input %x : f32[4]
  %0 = exp(%x) : f32[4]
  %1 = exp(%x) : f32[4]
  %2 = add(%0, %1) : f32[4]
  output y = %2
}
"""


@register_pass
@attrs.frozen
class Explode(Pass):
    """Raises (test only)."""

    name = "test-explode"

    def run(self, graph, ctx):
        raise ZeroDivisionError("on purpose")


@register_pass
@attrs.frozen
class BreakTypes(Pass):
    """Leaves an op whose result type is wrong (test only)."""

    name = "test-break-types"

    def run(self, graph, ctx):
        graph.ops[0].results[0].type = graph.ops[0].results[0].type.with_shape((5,))
        return graph


@register_pass
@attrs.frozen
class AddToSub(Pass):
    """Turns additions into subtractions, changing results (test only)."""

    name = "test-add-to-sub"
    statistics = {"rewritten": "adds turned into subs"}

    def run(self, graph, ctx):
        def rule(b, op: Op):
            return [b.sub(*op.operands)] if op.name == "add" else None

        ctx.count("rewritten", rewrite(graph, rule))
        return graph


def test_statistics_are_counted_per_pass_name():
    pm = PassManager.parse("cse,dce,cse")
    graph = pm.run(parse(SMALL))
    assert pm.counters["cse.ops-removed"] == 1 and pm.counters["dce.ops-removed"] == 0
    assert [r.label for r in pm.records] == ["cse (#1)", "dce (#2)", "cse (#3)"]
    assert print_graph(graph).count("exp(") == 1


def test_undeclared_statistic_is_a_bug():
    @attrs.frozen
    class Sloppy(Pass):
        """Counts something it did not declare."""

        name = "sloppy"

        def run(self, graph, ctx):
            ctx.count("things")
            return graph

    with pytest.raises(KeyError, match="declares no statistic 'things'"):
        PassManager([Sloppy()]).run(parse(SMALL))


def test_invalid_ir_after_a_pass_names_the_pass():
    with pytest.raises(PassError, match=r"the IR after pass test-break-types \(#2\) is invalid: op %0 = exp"):
        PassManager.parse("cse,test-break-types").run(parse(SMALL))
    PassManager.parse("test-break-types", verify=False).run(parse(SMALL))


def test_crash_writes_a_reproducer(tmp_path):
    stream = io.StringIO()
    pm = PassManager.parse("cse,test-explode,dce", crash_dir=tmp_path, stream=stream,
                           replay_args=["--load-pass", "plugin.py"])
    with pytest.raises(ZeroDivisionError):
        pm.run(parse(SMALL))
    reproducer = tmp_path / "rduflow-crash-test-explode.ir"
    lines = reproducer.read_text().splitlines()
    assert lines[0] == "// rduflow crash reproducer: pass test-explode (#2) raised ZeroDivisionError: on purpose"
    assert lines[1] == f"// replay: rduflow opt {reproducer} -p cse,test-explode --load-pass plugin.py"
    assert "\n".join(lines[2:]) + "\n" == SMALL  # the pipeline's input
    assert f"rduflow opt {reproducer} -p cse,test-explode" in stream.getvalue()


def test_print_ir_and_after_change():
    out = io.StringIO()
    PassManager.parse("cse,cse,dce", instrumentations=[
        PrintIR(before=["dce"], after_change=True, stream=out)]).run(parse(SMALL))
    text = out.getvalue()
    assert text.count("IR Dump") == 2
    assert "IR Dump After cse (#1)" in text and "IR Dump Before dce (#3)" in text


def test_dump_dir_numbers_one_file_per_pass(tmp_path):
    (tmp_path / "07-stale.ir").write_text("old")
    (tmp_path / "keep.txt").write_text("mine")
    PassManager.parse("canonicalize,cse,dce", instrumentations=[DumpDir(tmp_path)]).run(parse(SMALL))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.ir", "01-canonicalize.ir", "02-cse.ir", "03-dce.ir", "keep.txt"]
    assert (tmp_path / "00-input.ir").read_text() == SMALL
    assert (tmp_path / "02-cse.ir").read_text().count("exp(") == 1


def test_bisect_runs_only_the_first_n(capsys):
    out = io.StringIO()
    graph = PassManager.parse("test-add-to-sub,cse", instrumentations=[Bisect(1, out)]).run(parse(SMALL))
    assert out.getvalue().splitlines() == ["BISECT: running pass (1) test-add-to-sub",
                                           "BISECT: NOT running pass (2) cse"]
    assert print_graph(graph).count("exp(") == 2


def test_timing_and_statistics_tables():
    out = io.StringIO()
    PassManager.parse("cse,dce", instrumentations=[TimePasses(out), PassStatistics(out)]).run(parse(SMALL))
    text = out.getvalue()
    for needle in ("Pass execution timing report", "(verifier)", "total", "Pass statistics",
                   "cse.ops-removed", "dce.ops-removed"):
        assert needle in text
    assert [line.split("│")[2].strip() for line in text.splitlines() if "ops-removed" in line] == ["1", "0"]


def test_verify_semantics_names_the_first_pass_that_changes_a_result():
    pm = PassManager.parse("cse,test-add-to-sub,dce", instrumentations=[VerifySemantics(seed=3)])
    with pytest.raises(PassError) as info:
        pm.run(parse(SMALL))
    message = info.value.message
    assert message.startswith("pass test-add-to-sub (#2) changed the program's results (seed 3): output y: "
                              "max abs diff ")
    x = random_inputs(parse(SMALL), 3)["x"]
    expected = 2 * np.exp(x).astype(np.float32)
    assert f"max abs diff {float(np.abs(expected).max()):.3g}" in message


def test_verify_semantics_accepts_the_cleanup_pipeline():
    PassManager.parse("canonicalize,fold-constants,cse,dce,decompose,canonicalize,cse,dce",
                      instrumentations=[VerifySemantics()]).run(classifier())


def test_random_inputs_respect_index_bounds():
    graph = classifier()
    bounds = {v.name: b for v, b in index_bounds(graph).items() if v.name}
    assert bounds == {"ids": 11, "labels": 5}
    inputs = random_inputs(graph, seed=1)
    assert inputs["ids"].dtype == np.int32 and inputs["ids"].max() < 11 and inputs["ids"].max() >= 5
    assert inputs["labels"].max() < 5
    assert (random_inputs(graph, seed=1)["ids"] == inputs["ids"]).all()
