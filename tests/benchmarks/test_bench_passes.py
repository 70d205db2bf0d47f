"""Pass pipeline speed on a GPT-2 training graph (run with --benchmark-enable)."""
from __future__ import annotations

import pytest

from compiler import zoo
from compiler.config import Setting
from compiler.frontend import build
from compiler.passes import PassManager
from compiler.passes.pipelines import level_pipeline
from compiler.training import build_training_graph
from ir.parser import parse
from ir.printer import print_graph


@pytest.fixture(scope="module")
def gpt2_training_text() -> str:
    forward = build(zoo.source("gpt2"), [Setting("n_layer", 4, "benchmark")], training=True)
    return print_graph(build_training_graph(forward))


@pytest.mark.parametrize("pipeline, verify", [("O1", True), ("O1", False), ("O0", False)])
def test_bench_pipeline(benchmark, gpt2_training_text, pipeline, verify):
    pm = PassManager.parse(level_pipeline(pipeline), verify=verify)
    graph = benchmark.pedantic(pm.run, setup=lambda: ((parse(gpt2_training_text),), {}), rounds=3)
    assert sum(1 for _ in graph.walk()) < sum(1 for line in gpt2_training_text.splitlines() if " = " in line)
