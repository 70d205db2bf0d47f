"""The optimization report of `rduflow compile --stats`."""
from __future__ import annotations

import re

from backend.pef.targets import load_target
from compiler.passes.fuse import kernel_traffic
from compiler.opt_report import KernelStats, kernel_stats, optimization_report
from compiler.passes.plan_memory import memory_report
from optpass_graphs import O3, run, zoo_graph
from planned_backend import backend_stage
from tools.cli import main


def test_report_totals_and_sections():
    graph, pm = run(O3, zoo_graph("gpt2", "train"))
    target = load_target("rdu-mini")
    pef = backend_stage(graph, target="rdu-mini")
    sections = [(s.phase, s.kernels) for s in pef.sections]
    text = optimization_report(graph, target, sections)
    total = sum((kernel_stats(op, target) for op in graph.ops), KernelStats())
    assert total.kernels == len(graph.ops) and total.traffic == kernel_traffic(graph)
    assert total.tile_traffic == pm.counters["tile.traffic-bytes"]
    assert total.tile_bound == pm.counters["tile.traffic-lower-bound"]
    lines = text.splitlines()
    assert lines[0].startswith(f"fusion: {total.ops} ops in {len(graph.ops)} kernels ({total.fused} fused)")
    assert f"modeled kernel traffic {kernel_traffic(graph):,} bytes" in lines[0]
    ddr = next(r for r in memory_report(graph) if r.tier == "ddr")
    assert f"ddr arena {ddr.arena:,} bytes = {ddr.ratio:.3f}x the peak-live bound {ddr.lower_bound:,}" in lines[2]
    rows = lines[5:]
    assert len(rows) == len(pef.sections)
    assert sum(int(row.split()[2]) for row in rows) == len(graph.ops)


def test_compile_stats_prints_the_optimization_report(tmp_path, capsys):
    assert main(["compile", "mlp", "-O3", "-o", str(tmp_path), "--target", "rdu-mini", "--stats"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fusion: \d+ ops in \d+ kernels \(\d+ fused\)", out, re.MULTILINE)
    assert re.search(r"^tiles: \d+ ops tiled; modeled traffic [\d,]+ bytes = [\d.]+x the lower bound [\d,]+ of any tiling", out, re.MULTILINE)
    assert re.search(r"^memory plan of the graph.s tensors .*ddr arena [\d,]+ bytes = 1\.0\d\dx the peak-live bound", out, re.MULTILINE)
    assert "section phase" in out


def test_report_without_a_plan_says_so():
    graph, _ = run("decompose,fuse", zoo_graph("mlp", "inference"))
    assert "memory plan: none in the IR" in optimization_report(graph, load_target("rdu-mini"))
