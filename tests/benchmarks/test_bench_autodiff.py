"""Time to build the training graph (autodiff + clipping + AdamW) of GPT-2 at 12 layers x 768.

Run with `python -m pytest tests/benchmarks/test_bench_autodiff.py --benchmark-enable -s`;
it prints the op count of each phase and stores it in `extra_info`.
"""
from __future__ import annotations

from collections import Counter

import pytest

from compiler import zoo
from compiler.config import parse_overrides
from compiler.frontend import build
from compiler.training import TrainingOptions, build_training_graph
from ir.graph import Phase

GPT2_SMALL = ["model.n_layer=12", "model.n_embd=768", "model.n_head=12"]


@pytest.fixture(scope="module")
def gpt2_forward():
    return build(zoo.source("gpt2"), parse_overrides(GPT2_SMALL), training=True)


def test_bench_gpt2_training_graph(benchmark, gpt2_forward):
    options = TrainingOptions(optimizer="adamw", weight_decay=0.01, max_grad_norm=1.0)
    graph = benchmark.pedantic(build_training_graph, args=(gpt2_forward, options), rounds=3, iterations=1)
    counts = Counter(op.phase.value for op in graph.ops)
    benchmark.extra_info.update(counts)
    print(f"\ngpt2 12x768 training graph ops per phase: {dict(counts)}, total {len(graph.ops)}")
    assert set(counts) == {p.value for p in Phase}
    assert counts["fwd"] == len(gpt2_forward.ops)
    trained = sum(1 for p in gpt2_forward.params)
    assert len(graph.updates) == 3 * trained + 3  # param, exp_avg, exp_avg_sq; step and 2 bias corrections
