"""Every pipeline keeps the program's results: hand-built graphs, random graphs, zoo models."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_graphs import classifier, fused_graph, training_step

from compiler.passes import PASSES, PassManager
from compiler.passes.cast_weights import CastWeights
from compiler.pass_manager.levels import PIPELINES, level_pipeline
from compiler.pass_manager.semantics import VerifySemantics, compare, random_inputs
from ir.builder import Builder, make_op
from ir.dtypes import f32, i32
from ir.errors import PassError
from ir.graph import Graph
from ir.interpreter import initial_params, interpret
from ir.ops import lookup
from ir.types import TensorType

BUILTIN = sorted(name for name, cls in PASSES.items() if cls.__module__.startswith("compiler.passes."))
PIPELINE_TEXTS = [level_pipeline(level) for level in PIPELINES] + BUILTIN
GRAPHS = {"classifier": classifier, "training_step": training_step, "fused": fused_graph}


def _results(graph: Graph, inputs: dict, params: dict) -> dict:
    result = interpret(graph, inputs, params)
    return {**result.outputs, **{f"@{k}": v for k, v in result.updates.items()}}


@pytest.mark.parametrize("pipeline", PIPELINE_TEXTS)
@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
def test_pipeline_keeps_results(pipeline, graph_name):
    """Same results before and after; a pass storing params narrower (cast-weights) is
    compared with the input graph run on the params rounded to the new types."""
    graph = GRAPHS[graph_name]()
    inputs = random_inputs(graph, seed=5)
    original = GRAPHS[graph_name]()
    graph = PassManager.parse(pipeline, instrumentations=[VerifySemantics(seed=5)]).run(graph)
    params = initial_params(graph, seed=0)
    rounded = {p.name: params[p.name].astype(p.type.dtype.np) for p in original.params}
    assert compare(_results(original, inputs, rounded), _results(graph, inputs, params)) is None


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
    params = initial_params(graph, seed=0)
    before = _results(graph, inputs, params)
    graph = PassManager.parse(level_pipeline("O1")).run(graph)
    assert compare(before, _results(graph, inputs, params)) is None


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


# --- passes that store params narrower ----------------------------------------------------

class _CastWeightsThenScale(CastWeights):
    """A broken cast-weights: it also scales what it widens."""

    name = "cast-weights-then-scale"

    def run(self, graph, ctx):
        graph = super().run(graph, ctx)
        index, cast = [(i, op) for i, op in enumerate(graph.ops) if op.name == "cast"][-1]  # the matmul's weight
        scale = make_op("full", [], {"shape": (), "value": 1.01, "dtype": f32})
        scaled = make_op("mul", [cast.results[0], scale.results[0]], {})
        for op in graph.ops:
            op.operands = [scaled.results[0] if v is cast.results[0] else v for v in op.operands]
        graph.ops[index + 1:index + 1] = [scale, scaled]
        return graph


def test_a_retyping_pass_is_checked_against_rounded_params():
    """cast-weights passes (rounding is the params' doing); a pass that also changes the math is named."""
    PassManager([CastWeights()], instrumentations=[VerifySemantics(seed=1)]).run(classifier())
    with pytest.raises(PassError, match=r"pass cast-weights-then-scale \(#1\) changed the program's results"):
        PassManager([_CastWeightsThenScale()], instrumentations=[VerifySemantics(seed=1)]).run(classifier())
