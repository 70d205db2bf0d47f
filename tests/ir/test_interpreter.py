"""The reference interpreter: input checking, deterministic params, run-time index errors."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ir.builder import Builder, make_op
from ir.dtypes import bf16, f32, i32, i64
from ir.errors import ExecutionError, Location
from ir.graph import Graph, Region, Role, Value
from ir.init import Init
from ir.interpreter import initial_params, interpret
from ir.parser import parse
from ir.types import TensorType


def _linear() -> Graph:
    b = Builder(Graph("linear"))
    x = b.input("x", TensorType((2, 3), f32))
    ids = b.input("ids", TensorType((2,), i32))
    w = b.param("w", TensorType((4, 3), f32), Init("normal", {"std": 0.5}))
    v = b.param("v", TensorType((4, 3), f32), Init("normal", {"std": 0.5}))
    scale = b.param("scale", TensorType((4,), f32), Init("ones"), Role.buffer)
    m = b.param("m", TensorType((4, 3), f32), Init("zeros"), Role.state)
    y = b.mul(b.matmul(x, w, transpose_b=True), scale)
    b.output("y", y)
    b.output("rows", b.gather(v, ids))
    b.update("m", b.add(m, w))
    return b.graph


INPUTS = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([3, 0], np.int32)}


def error(graph: Graph, inputs, params=None) -> str:
    with pytest.raises(ExecutionError) as info:
        interpret(graph, inputs, params)
    return info.value.message


def test_runs_and_matches_numpy():
    graph = _linear()
    params = initial_params(graph, seed=3)
    result = interpret(graph, INPUTS, seed=3)
    np.testing.assert_allclose(result.outputs["y"], INPUTS["x"] @ params["w"].T * params["scale"], rtol=1e-6)
    np.testing.assert_array_equal(result.outputs["rows"], params["v"][[3, 0]])
    np.testing.assert_array_equal(result.updates["m"], params["w"])
    assert list(result.outputs) == ["y", "rows"] and list(result.updates) == ["m"]


def test_given_params_override_initializers():
    graph = _linear()
    w = np.full((4, 3), 0.5, np.float32)
    result = interpret(graph, INPUTS, {"w": w})
    np.testing.assert_allclose(result.outputs["y"], INPUTS["x"] @ w.T, rtol=1e-6)


@pytest.mark.parametrize("value,message", [
    (np.zeros((3, 2), np.float32), "input 'x' must be f32[2,3], got f32[3,2]"),
    (np.zeros((2, 3), np.float64), "input 'x' must be f32[2,3], got float64[2,3]"),
    (np.zeros((2, 3), ml_dtypes.bfloat16), "input 'x' must be f32[2,3], got bf16[2,3]"),
    (np.zeros(6, np.float32), "input 'x' must be f32[2,3], got f32[6]"),
    (1.5, "input 'x' must be f32[2,3], got float64[]"),
    ([[1, 2, 3], [4, 5, 6]], "input 'x' must be f32[2,3], got i64[2,3]"),
])
def test_input_of_the_wrong_type(value, message):
    assert error(_linear(), {**INPUTS, "x": value}) == message


def test_integer_input_of_the_wrong_width():
    assert error(_linear(), {**INPUTS, "ids": INPUTS["ids"].astype(np.int64)}) == \
        "input 'ids' must be i32[2], got i64[2]"


def test_param_of_the_wrong_type():
    message = error(_linear(), INPUTS, {"w": np.zeros((3, 4), np.float32)})
    assert message == "param 'w' must be f32[4,3], got f32[3,4]"


def test_missing_inputs():
    assert error(_linear(), {}) == "missing input(s): x, ids"
    assert error(_linear(), {"ids": INPUTS["ids"]}) == "missing input(s): x"


def test_params_are_deterministic_per_name_and_seed():
    graph = _linear()
    first, again = initial_params(graph, seed=7), initial_params(_linear(), seed=7)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    other_seed = initial_params(graph, seed=8)
    assert not np.array_equal(first["w"], other_seed["w"])
    # two params with the same initializer and type, different names: different values
    assert not np.array_equal(first["w"], first["v"])
    assert first["w"].dtype == np.float32 and first["w"].shape == (4, 3)
    assert 0.3 < float(np.std(np.concatenate([first["w"], first["v"]]))) < 0.7
    np.testing.assert_array_equal(first["scale"], np.ones(4, np.float32))
    np.testing.assert_array_equal(first["m"], np.zeros((4, 3), np.float32))


def test_param_values_do_not_depend_on_declaration_order():
    b = Builder(Graph("g"))
    b.param("v", TensorType((4, 3), f32), Init("normal", {"std": 0.5}))
    b.param("w", TensorType((4, 3), f32), Init("normal", {"std": 0.5}))
    reordered = initial_params(b.graph, seed=3)
    original = initial_params(_linear(), seed=3)
    np.testing.assert_array_equal(reordered["w"], original["w"])
    np.testing.assert_array_equal(reordered["v"], original["v"])


def test_interpret_uses_the_seed_for_params():
    graph = _linear()
    a, b = interpret(graph, INPUTS, seed=1), interpret(graph, INPUTS, seed=1)
    np.testing.assert_array_equal(a.outputs["y"], b.outputs["y"])
    assert not np.array_equal(a.outputs["y"], interpret(graph, INPUTS, seed=2).outputs["y"])


def test_initializers_in_low_precision():
    b = Builder(Graph("g"))
    b.param("e", TensorType((8, 4), bf16), Init("xavier_uniform"))
    b.param("k", TensorType((2, 2), i64), Init("constant", {"value": 3}))
    params = initial_params(b.graph, seed=0)
    assert params["e"].dtype == ml_dtypes.bfloat16
    bound = np.sqrt(6.0 / (8 + 4))
    assert np.all(np.abs(params["e"].astype(np.float32)) <= bound * 1.01)
    np.testing.assert_array_equal(params["k"], np.full((2, 2), 3, np.int64))


@pytest.mark.parametrize("ids", [[4, 0], [0, -1]])
def test_gather_out_of_range(ids):
    graph = _linear()
    gather = next(op for op in graph.ops if op.name == "gather")
    gather.locs = (Location("model.rdl", 5, 12),)
    message = error(graph, {**INPUTS, "ids": np.array(ids, np.int32)})
    assert message == "'gather' at model.rdl:5:12: gather index out of range [0, 4)"


def test_gather_out_of_range_inside_a_fused_region():
    text = """graph @g {
  input %ids : i64[3]
  param @emb : f32[5,2] = normal(std=1.0)
  %0 = fused(@emb, %ids) : f32[3,2] {
  ^(%1: f32[5,2], %2: i64[3]):
    %3 = gather(%1, %2) : f32[3,2] loc("m.rdl":2:7)
    yield %3
  }
  output y = %0
}
"""
    graph = parse(text)
    assert error(graph, {"ids": np.array([0, 5, 1], np.int64)}) == \
        "'gather' at m.rdl:2:7: gather index out of range [0, 5)"
    table = initial_params(graph)["emb"]
    np.testing.assert_array_equal(interpret(graph, {"ids": np.array([4, 0, 4])}).outputs["y"], table[[4, 0, 4]])


def test_cross_entropy_label_out_of_range():
    b = Builder(Graph("g"))
    logits = b.input("logits", TensorType((2, 3), f32))
    labels = b.input("labels", TensorType((2,), i32))
    b.output("loss", b.cross_entropy(logits, labels))
    message = error(b.graph, {"logits": np.zeros((2, 3), np.float32), "labels": np.array([1, 3], np.int32)})
    assert message == "'cross_entropy': label out of range [0, 3)"


def test_fused_region_runs_like_its_ops():
    b = Builder(Graph("g"))
    x = b.input("x", TensorType((2, 3), f32))
    region = Region([Value(x.type)])
    inner = Builder(b.graph, region.ops)
    region.results = [inner.tanh(region.args[0]), inner.sum(region.args[0], axes=(1,))]
    op = make_op("fused", [x], {"label": "k"}, region=region)
    b.graph.ops.append(op)
    b.output("t", op.results[0])
    b.output("s", op.results[1])
    data = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    out = interpret(b.graph, {"x": data}).outputs
    np.testing.assert_allclose(out["t"], np.tanh(data), rtol=1e-6)
    np.testing.assert_allclose(out["s"], data.sum(1), rtol=1e-6, atol=1e-7)
