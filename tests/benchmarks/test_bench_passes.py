"""Pass pipeline speed on a GPT-2 training graph (run with --benchmark-enable)."""
from __future__ import annotations

import pytest

from compiler import zoo
from compiler.config import Setting
from compiler.frontend import build
from compiler.passes import PassManager
from compiler.pass_manager.levels import level_pipeline
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


#: GPT-2 small's width (12 heads of 64, 50257 tokens, 128 positions of batch 1) at three depths:
#: the -O3 pipeline (verifier included) should take time linear in the layers, under 5 s at 12
GPT2_768 = {"n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024, "seq_len": 128, "batch_size": 1}


@pytest.mark.slow
@pytest.mark.parametrize("layers", [6, 12, 24])
def test_bench_o3_gpt2_768_training(benchmark, layers):
    settings = [Setting(key, value, "benchmark") for key, value in {**GPT2_768, "n_layer": layers}.items()]
    forward = build(zoo.source("gpt2"), settings, training=True)
    pm = PassManager.parse(level_pipeline("O3"))
    graph = benchmark.pedantic(pm.run, setup=lambda: ((build_training_graph(forward),), {}), rounds=3)
    benchmark.extra_info["kernels"] = len(graph.ops)
    assert pm.counters["fuse.kernels-after"] == len(graph.ops) < pm.counters["fuse.kernels-before"]
    assert pm.counters["plan-memory.tensors"] > 0 and pm.counters["tile.ops-tiled"] > 0
