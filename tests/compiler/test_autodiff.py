"""Reverse-mode autodiff over whole graphs: zoo models against float64 finite differences,
accumulation over uses, integers, pruning, fused regions, errors and determinism."""
from __future__ import annotations

import numpy as np
import pytest

from autodiff_helpers import run_f64, run_with_gradients, zoo_forward
from compiler.autodiff import append_gradients
from compiler.training import build_training_graph, clone
from ir.builder import Builder, make_op
from ir.dtypes import DType
from ir.errors import IRError
from ir.graph import Graph, Phase, Region, Role, Value
from ir.init import Init
from ir.interpreter import initial_params
from ir.ops import lookup
from ir.parser import parse
from ir.printer import print_graph
from ir.types import TensorType

f32, i32 = DType.f32, DType.i32

#: small configs of every zoo model, and the integer ranges of their inputs
ZOO = {
    "logreg": (("model.batch_size=4",), {"labels": 10}),
    "mlp": (("model.batch_size=4",), {"labels": 10}),
    "lenet": (("model.batch_size=2",), {"labels": 10}),
    "gpt2": (("model.n_layer=1", "model.n_embd=8", "model.n_head=2", "model.vocab_size=16",
              "model.n_positions=8", "model.seq_len=6", "model.initializer_range=0.5"),
             {"input_ids": 16, "token_type_ids": 2}),
    "llama": (("model.num_hidden_layers=1", "model.hidden_size=8", "model.intermediate_size=12",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.vocab_size=16",
               "model.max_position_embeddings=8", "model.seq_len=6", "model.initializer_range=0.5"),
              {"input_ids": 16, "token_type_ids": 2}),
}


def random_inputs(graph: Graph, bounds: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        if v.type.dtype.is_int:
            out[v.name] = r.integers(0, bounds[v.name], v.type.shape).astype(v.type.dtype.np)
        else:
            out[v.name] = r.standard_normal(v.type.shape).astype(v.type.dtype.np)
    if "token_type_ids" in out:  # completion tokens everywhere but the first position
        out["token_type_ids"][...] = 1
        out["token_type_ids"][:, 0] = 0
    return out


def f64_env(graph: Graph, inputs: dict, params: dict) -> dict[Value, np.ndarray]:
    env = {v: np.asarray(inputs[v.name]) for v in graph.inputs}
    for p in graph.params:
        value = np.asarray(params[p.name])
        env[p.value] = value.astype(np.float64) if p.type.dtype.is_float else value
    return env


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_gradients_match_finite_differences(name):
    """<grad, d> against (L(p + h d) - L(p - h d)) / 2h in float64, for random directions d."""
    overrides, bounds = ZOO[name]
    forward = zoo_forward(name, *overrides)
    graph = clone(forward)
    grads = append_gradients(graph)
    trained = [p for p in graph.params if p.role == Role.param]
    assert set(grads) == {p.name for p in trained}
    inputs, params = random_inputs(graph, bounds), initial_params(graph, seed=1)

    env = f64_env(graph, inputs, params)
    run_f64(graph.ops, env)

    def loss(shift: dict[str, np.ndarray]) -> float:
        env = f64_env(forward, inputs, {k: params[k] + shift.get(k, 0.0) for k in params})
        run_f64(forward.ops, env)
        return float(env[forward.outputs["loss"]])

    r, h = np.random.default_rng(2), 1e-6
    for _ in range(2):
        direction = {p.name: r.standard_normal(p.type.shape) for p in trained}
        analytic = sum(float(np.sum(env[grads[k]] * d)) for k, d in direction.items())
        numeric = (loss({k: h * d for k, d in direction.items()})
                   - loss({k: -h * d for k, d in direction.items()})) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def scalar_graph(build) -> Graph:
    """A graph with input x: f32[3], param w: f32[3] and whatever `build(b, x, w)` outputs."""
    b = Builder(Graph("g"))
    x = b.input("x", TensorType((3,), f32))
    w = b.param("w", TensorType((3,), f32), Init("normal"))
    build(b, x, w)
    return b.graph


def gradient_of(graph: Graph, inputs: dict, params: dict) -> dict[str, np.ndarray]:
    return run_with_gradients(graph, inputs, params)[1]


def test_gradients_accumulate_over_uses():
    # loss = sum(w * w + w * x + w): d/dw = 2w + x + 1
    graph = scalar_graph(lambda b, x, w: b.output("loss", b.sum(b.add(b.add(b.mul(w, w), b.mul(w, x)), w))))
    x, w = np.array([1.0, 2.0, 3.0], np.float32), np.array([0.5, -1.0, 2.0], np.float32)
    np.testing.assert_allclose(gradient_of(graph, {"x": x}, {"w": w})["w"], 2 * w + x + 1)


def test_no_gradient_through_integers_buffers_or_unused_params():
    def build(b, x, w):
        n = b.param("n", TensorType((3,), i32), Init("ones"))  # an integer param: not trained
        frozen = b.param("frozen", TensorType((3,), f32), Init("ones"), Role.buffer)
        b.param("unused", TensorType((3,), f32), Init("ones"))
        via_int = b.cast(b.cast(w, dtype=i32), dtype=f32)  # w reaches the loss through an integer too
        total = b.add(b.mul(w, b.cast(n, dtype=f32)), b.mul(via_int, frozen))
        b.output("loss", b.sum(b.mul(total, x)))
    graph = scalar_graph(build)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    grads = gradient_of(graph, {"x": x}, {"w": np.ones(3, np.float32), "n": np.full(3, 2, np.int32)})
    assert set(grads) == {"w"}
    np.testing.assert_allclose(grads["w"], 2 * x)
    training = build_training_graph(graph)
    assert "unused" not in training.updates and "frozen" not in training.updates and "n" not in training.updates
    assert "w" in training.updates


def test_unneeded_gradient_ops_are_dropped():
    """The matmul's gradient for its data input x is not built: every bwd op feeds a gradient."""
    graph = build_training_graph(zoo_forward("logreg"))
    users = graph.users()
    live = graph.live_outs()
    for op in graph.ops:
        if op.phase == Phase.bwd:
            assert all(r in users or r in live for r in op.results), op
    matmuls = [op for op in graph.ops if op.phase == Phase.bwd and op.name == "matmul"]
    assert [op.result.type for op in matmuls] == [graph.param("fc.weight").type]  # no d/dx


@pytest.mark.parametrize("transpose_b", [False, True], ids=["w", "w_transposed"])
def test_a_weight_the_batch_shares_gets_one_product_over_batch_and_rows(transpose_b):
    """x[B, T, K] @ W: dW is one rank-2 product whose depth is the B*T rows stacked, not B products
    summed over the batch afterwards (which would hold B copies of dW at once)."""
    b = Builder(Graph("shared"))
    x = b.input("x", TensorType((3, 5, 4), f32))
    w = b.param("w", TensorType((6, 4) if transpose_b else (4, 6), f32), Init("ones"))
    y = b.matmul(x, w, transpose_b=transpose_b)
    b.output("loss", b.sum(b.mul(y, y)))
    graph = b.graph
    product = append_gradients(clone(graph))["w"].producer
    assert product.name == "matmul" and [v.type.shape[0] for v in product.operands] == [15, 15]
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((3, 5, 4)).astype(np.float32)
    wv = rng.standard_normal(w.type.shape).astype(np.float32)
    got = gradient_of(graph, {"x": xv}, {"w": wv})["w"]
    rows = xv.reshape(15, 4).astype(np.float64)
    dy = 2 * (rows @ (wv.T if transpose_b else wv))
    want = dy.T @ rows if transpose_b else rows.T @ dy
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_shared_weight_with_no_depth_gets_an_empty_gradient():
    """x[B, T, 0] @ W[0, N]: the stacked-rows gradient of W is empty, not a division by zero."""
    b = Builder(Graph("empty"))
    x = b.input("x", TensorType((3, 5, 0), f32))
    w = b.param("w", TensorType((0, 6), f32), Init("ones"))
    b.output("loss", b.sum(b.matmul(x, w)))
    assert append_gradients(clone(b.graph))["w"].type.shape == (0, 6)


def fused_graph(fused: bool) -> Graph:
    """loss = sum(exp(w) * x + w), with the elementwise part in a fused region or not."""
    b = Builder(Graph("g"))
    x = b.input("x", TensorType((3,), f32))
    w = b.param("w", TensorType((3,), f32), Init("normal"))
    if not fused:
        b.output("loss", b.sum(b.add(b.mul(b.exp(w), x), w)))
        return b.graph
    region = Region([Value(TensorType((3,), f32)), Value(TensorType((3,), f32))])
    inner = Builder(ops=region.ops)
    rw, rx = region.args
    region.results = [inner.add(inner.mul(inner.exp(rw), rx), rw)]
    op = make_op("fused", [w, x], {"label": "k"}, region=region)
    b.ops.append(op)
    b.output("loss", b.sum(op.result))
    return b.graph


def test_fused_regions_are_differentiated_by_inlining():
    x, w = np.array([1.0, -2.0, 0.5], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
    got = gradient_of(fused_graph(True), {"x": x}, {"w": w})["w"]
    np.testing.assert_allclose(got, gradient_of(fused_graph(False), {"x": x}, {"w": w})["w"], rtol=1e-6)
    np.testing.assert_allclose(got, np.exp(w) * x + 1, rtol=1e-6)


def test_loss_errors():
    graph = scalar_graph(lambda b, x, w: b.output("out", b.sum(w)))
    with pytest.raises(IRError, match="graph @g has no 'loss' output to differentiate"):
        append_gradients(graph)
    graph = scalar_graph(lambda b, x, w: b.output("loss", b.mul(w, x)))
    with pytest.raises(IRError, match=r"output 'loss' must be a float scalar to differentiate, got f32\[3\]"):
        append_gradients(graph)


def test_an_op_without_a_vjp_is_named(monkeypatch):
    graph = scalar_graph(lambda b, x, w: b.output("loss", b.sum(b.exp(w))))
    monkeypatch.setattr(lookup("exp"), "vjp", None)
    with pytest.raises(IRError, match="cannot differentiate 'exp': the op declares no gradient"):
        append_gradients(graph)


def test_training_graph_text_is_deterministic_and_round_trips():
    texts = [print_graph(build_training_graph(zoo_forward("gpt2", "model.n_layer=1"))) for _ in range(2)]
    assert texts[0] == texts[1]
    assert print_graph(parse(texts[0])) == texts[0]
