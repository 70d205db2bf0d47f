"""Every pipeline keeps the program's results: hand-built graphs, random graphs, zoo models."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_graphs import classifier, fused_graph, training_step

from compiler.passes import PASSES, PassManager
from compiler.passes.pipelines import PIPELINES, level_pipeline
from compiler.passes.semantics import VerifySemantics, compare, random_inputs
from ir.builder import Builder
from ir.dtypes import f32, i32
from ir.graph import Graph
from ir.interpreter import interpret
from ir.ops import lookup
from ir.types import TensorType

BUILTIN = sorted(name for name, cls in PASSES.items() if cls.__module__.startswith("compiler.passes."))
PIPELINE_TEXTS = [level_pipeline(level) for level in PIPELINES] + BUILTIN
GRAPHS = {"classifier": classifier, "training_step": training_step, "fused": fused_graph}


def _results(graph: Graph, inputs: dict) -> dict:
    result = interpret(graph, inputs, seed=0)
    return {**result.outputs, **{f"@{k}": v for k, v in result.updates.items()}}


@pytest.mark.parametrize("pipeline", PIPELINE_TEXTS)
@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
def test_pipeline_keeps_results(pipeline, graph_name):
    graph = GRAPHS[graph_name]()
    inputs = random_inputs(graph, seed=5)
    before = _results(graph, inputs)
    graph = PassManager.parse(pipeline, instrumentations=[VerifySemantics(seed=5)]).run(graph)
    assert compare(before, _results(graph, inputs)) is None


# --- random graphs of elementwise and shape ops with splat constants --------------------

SPLATS = st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, -0.0])
FLOAT_UNARY = ["neg", "exp", "tanh", "abs", "relu"]
BINARY = ["add", "sub", "mul", "div", "maximum"]
INT_BINARY = ["add", "sub", "mul"]


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


@st.composite
def random_graphs(draw) -> Graph:
    b = Builder(Graph("random"))
    floats = [b.input("x", TensorType((3, 4), f32)), b.input("y", TensorType((4,), f32))]
    ints = [b.input("n", TensorType((3, 4), i32))]
    for _ in range(draw(st.integers(2, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "int", "shape", "cast", "where"]))
        x = draw(st.sampled_from(floats))
        partners = st.sampled_from([v for v in floats if _broadcasts(v.type.shape, x.type.shape)])
        if kind == "unary":
            floats.append(getattr(b, draw(st.sampled_from(FLOAT_UNARY)))(x))
        elif kind == "binary":
            other = draw(st.one_of(partners, SPLATS.map(lambda v: b.scalar(v, f32))))
            pair = (x, other) if draw(st.booleans()) else (other, x)
            floats.append(getattr(b, draw(st.sampled_from(BINARY)))(*pair))
        elif kind == "int":
            n = draw(st.sampled_from(ints))
            other = draw(st.one_of(st.sampled_from(ints), st.sampled_from([0, 1, 2]).map(
                lambda v: b.scalar(v, i32))))
            ints.append(getattr(b, draw(st.sampled_from(INT_BINARY)))(n, other))
        elif kind == "shape" and x.type.rank == 2:
            t = b.transpose(x, perm=(1, 0))
            floats.append(b.reshape(b.transpose(t, perm=(1, 0)), shape=(12,)) if draw(st.booleans())
                          else b.reshape(b.reshape(t, shape=(12,)), shape=(4, 3)))
        elif kind == "cast":
            floats.append(b.cast(x, dtype=f32))
        elif kind == "where":
            floats.append(b.where(b.gt(x, b.scalar(0.0, f32)), x, draw(partners)))
    b.output("f", floats[-1])
    b.output("g", floats[len(floats) // 2])
    b.output("i", ints[-1])
    return b.graph


def test_compare_matches_equal_nans_and_infinities():
    want = {"o": np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)}
    assert compare(want, {"o": want["o"].copy()}) is None
    assert compare(want, {"o": np.array([0.0, np.inf, -np.inf, 1.0], dtype=np.float32)}) is not None


@settings(max_examples=60, deadline=None)
@given(graph=random_graphs(), seed=st.integers(0, 3))
def test_o1_keeps_results_of_random_graphs(graph, seed):
    inputs = random_inputs(graph, seed)
    before = _results(graph, inputs)
    graph = PassManager.parse(level_pipeline("O1")).run(graph)
    assert compare(before, _results(graph, inputs)) is None


# --- zoo models, forward and training ----------------------------------------------------

def _zoo_names() -> list[str]:
    try:
        from compiler import zoo
    except ImportError:
        return []
    return zoo.names()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", _zoo_names())
def test_o1_keeps_results_of_zoo_models(name, training):
    from compiler import zoo
    from compiler.frontend import build
    from compiler.training import build_training_graph

    graph = build(zoo.source(name), training=training)
    if training:
        graph = build_training_graph(graph)
    pm = PassManager.parse(level_pipeline("O1"), instrumentations=[VerifySemantics(seed=1)])
    graph = pm.run(graph)
    assert not any(lookup(op.name).is_composite() for op in graph.walk())
