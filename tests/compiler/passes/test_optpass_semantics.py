"""fuse, tile and plan-memory leave every zoo model's results unchanged (the reference interpreter decides)."""
from __future__ import annotations

import pytest

from compiler import zoo
from compiler.passes import PassManager
from compiler.pass_manager.semantics import VerifySemantics
from compiler.training import build_training_graph
from optpass_graphs import MODES, PREFIX, mlp, transformer_block, zoo_graph

PASSES = "fuse,tile{target=rdu-mini},plan-memory{target=rdu-mini}"


def check(graph, pipeline: str) -> PassManager:
    """Run `pipeline`, interpreting after every pass; PassError names a pass that changes a result."""
    pm = PassManager.parse(pipeline, instrumentations=[VerifySemantics(seed=3)])
    pm.run(graph)
    return pm


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_keep_their_results(name, mode):
    pm = check(zoo_graph(name, mode), f"{PREFIX},{PASSES}")
    assert pm.counters["fuse.fused-kernels"] > 0 and pm.counters["plan-memory.tensors"] > 0


@pytest.mark.parametrize("name", zoo.names())
def test_each_pass_alone_after_decompose(name):
    for single in PASSES.split(","):
        check(zoo_graph(name, "train"), f"decompose,{single}")


@pytest.mark.parametrize("build", [mlp, transformer_block])
def test_builder_graphs_forward_and_training(build):
    check(build(), f"{PREFIX},{PASSES}")
    graph = build()
    if "loss" in graph.outputs:
        check(build_training_graph(graph), f"{PREFIX},{PASSES}")
