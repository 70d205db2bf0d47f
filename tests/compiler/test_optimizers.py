"""Optimizers and clipping against plain numpy implementations of PyTorch's formulas."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.training import TrainingOptions, build_training_graph
from ir.builder import Builder
from ir.dtypes import DType
from ir.graph import Graph, Role
from ir.init import Init
from ir.interpreter import initial_params, interpret
from ir.types import TensorType

f32 = DType.f32
X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]], np.float32)
Y = np.array([1.0, -2.0], np.float32)
W0 = np.array([0.3, -0.2, 0.1], np.float32)
B0 = np.array(0.05, np.float32)


def regression() -> Graph:
    """loss = mean((x @ w + b - y)**2): w f32[3], b f32[]."""
    b = Builder(Graph("regression"))
    x = b.input("x", TensorType((2, 3), f32))
    y = b.input("y", TensorType((2,), f32))
    w = b.param("w", TensorType((3,), f32), Init("zeros"))
    bias = b.param("b", TensorType((), f32), Init("zeros"))
    pred = b.add(b.reshape(b.matmul(x, b.reshape(w, shape=(3, 1))), shape=(2,)), bias)
    err = b.sub(pred, y)
    b.output("loss", b.mean(b.mul(err, err)))
    return b.graph


def grads_np(w, b):
    err = X.astype(np.float64) @ w + b - Y
    return {"w": 2 * X.T @ err / len(Y), "b": np.array(2 * err.mean())}


def clip_np(grads, max_norm):
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    scale = 1.0 if max_norm is None else min(1.0, max_norm / (norm + 1e-6))
    return {k: g * scale for k, g in grads.items()}, norm


def sgd_np(lrs, momentum, weight_decay, max_norm):
    params = {"w": W0.astype(np.float64), "b": B0.astype(np.float64)}
    bufs = {k: np.zeros_like(v) for k, v in params.items()}
    for lr in lrs:
        grads, norm = clip_np(grads_np(params["w"], params["b"]), max_norm)
        for k in params:
            g = grads[k] + weight_decay * params[k]
            bufs[k] = momentum * bufs[k] + g if momentum else g
            params[k] = params[k] - lr * bufs[k]
        yield params, bufs, norm


def adamw_np(lrs, betas, eps, weight_decay, max_norm):
    params = {"w": W0.astype(np.float64), "b": B0.astype(np.float64)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, lr in enumerate(lrs, start=1):
        grads, norm = clip_np(grads_np(params["w"], params["b"]), max_norm)
        for k in params:
            params[k] = params[k] * (1 - lr * weight_decay)
            m[k] = betas[0] * m[k] + (1 - betas[0]) * grads[k]
            v[k] = betas[1] * v[k] + (1 - betas[1]) * grads[k] ** 2
            denom = np.sqrt(v[k]) / np.sqrt(1 - betas[1] ** t) + eps
            params[k] = params[k] - lr / (1 - betas[0] ** t) * m[k] / denom
        yield params, (m, v), norm


def run(options: TrainingOptions, lrs):
    graph = build_training_graph(regression(), options)
    state = initial_params(graph)
    state.update({"w": W0, "b": B0})
    for lr in lrs:  # one compiled graph, a new learning rate every step
        result = interpret(graph, {"x": X, "y": Y, "lr": np.float32(lr)}, state)
        state.update(result.updates)
        yield state, result.outputs["grad_norm"]


LRS = [0.1, 0.05, 0.2, 0.01]


@pytest.mark.parametrize("momentum,weight_decay,max_norm", [(0.0, 0.0, None), (0.9, 0.0, None),
                                                            (0.9, 0.1, 1.0), (0.0, 0.5, 0.5)])
def test_sgd_matches_numpy(momentum, weight_decay, max_norm):
    options = TrainingOptions(optimizer="sgd", momentum=momentum, weight_decay=weight_decay, max_grad_norm=max_norm)
    for (state, norm), (params, bufs, want_norm) in zip(run(options, LRS), sgd_np(LRS, momentum, weight_decay, max_norm)):
        assert norm == pytest.approx(want_norm, rel=1e-5)
        for k in params:
            np.testing.assert_allclose(state[k], params[k], rtol=1e-5, atol=1e-6)
            if momentum:
                np.testing.assert_allclose(state[f"optimizer.momentum_buffer.{k}"], bufs[k], rtol=1e-5, atol=1e-6)
    assert state["optimizer.step"] == len(LRS)


@pytest.mark.parametrize("betas,eps,weight_decay,max_norm", [((0.9, 0.999), 1e-8, 0.0, None),
                                                             ((0.8, 0.99), 1e-3, 0.1, 1.0),
                                                             ((0.5, 0.9), 1e-6, 0.01, 0.1)])
def test_adamw_matches_numpy(betas, eps, weight_decay, max_norm):
    options = TrainingOptions(optimizer="adamw", betas=betas, eps=eps, weight_decay=weight_decay,
                              max_grad_norm=max_norm)
    steps = zip(run(options, LRS), adamw_np(LRS, betas, eps, weight_decay, max_norm))
    for (state, norm), (params, (m, v), want_norm) in steps:
        assert norm == pytest.approx(want_norm, rel=1e-5)
        for k in params:
            np.testing.assert_allclose(state[k], params[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state[f"optimizer.exp_avg.{k}"], m[k], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(state[f"optimizer.exp_avg_sq.{k}"], v[k], rtol=1e-5, atol=1e-9)


def test_clipping_only_scales_large_gradients():
    _, norm0 = clip_np(grads_np(W0, B0), None)
    first = lambda max_norm: next(run(TrainingOptions(optimizer="sgd", max_grad_norm=max_norm), [1.0]))[0]  # noqa: E731
    unclipped, loose, tight = first(None), first(norm0 * 2), first(norm0 / 4)
    np.testing.assert_allclose(loose["w"], unclipped["w"], rtol=1e-6)
    # plain SGD with lr=1: the step is the (clipped) gradient
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([W0 - tight["w"], [B0 - tight["b"]]])),
                               norm0 / 4, rtol=1e-5)


def test_state_is_named_zero_initialized_and_resumable():
    graph = build_training_graph(regression(), TrainingOptions(optimizer="adamw"))
    states = {p.name: p for p in graph.params if p.role == Role.state}
    assert set(states) == {"optimizer.step", "optimizer.exp_avg.w", "optimizer.exp_avg_sq.w",
                           "optimizer.exp_avg.b", "optimizer.exp_avg_sq.b",
                           "optimizer.bias_correction1", "optimizer.bias_correction2"}
    assert states["optimizer.step"].type == TensorType((), DType.i32)
    assert states["optimizer.bias_correction2"].type == TensorType((), f32)
    assert all(p.init == Init("zeros") for p in states.values())
    assert set(graph.updates) == set(states) | {"w", "b"}
    assert graph.input("lr").type == TensorType((), f32)
    # a run resumed from saved state continues exactly as an uninterrupted one
    straight = [dict(s) for s, _ in run(TrainingOptions(optimizer="adamw"), LRS)][-1]
    state = initial_params(graph)
    state.update({"w": W0, "b": B0})
    for lr in LRS[:2]:
        state.update(interpret(graph, {"x": X, "y": Y, "lr": np.float32(lr)}, state).updates)
    saved = {k: v.copy() for k, v in state.items()}
    for lr in LRS[2:]:
        saved.update(interpret(graph, {"x": X, "y": Y, "lr": np.float32(lr)}, saved).updates)
    for k in straight:
        np.testing.assert_array_equal(saved[k], straight[k])


def test_plain_sgd_has_no_buffers():
    graph = build_training_graph(regression(), TrainingOptions(optimizer="sgd"))
    assert [p.name for p in graph.params if p.role == Role.state] == ["optimizer.step"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_half_precision_params_keep_their_dtype(optimizer):
    """f16 params: the f32 learning rate, norm and corrections are cast; updates stay f16."""
    b = Builder(Graph("half"))
    x = b.input("x", TensorType((3,), DType.f16))
    w = b.param("w", TensorType((3,), DType.f16), Init("ones"))
    b.output("loss", b.cast(b.sum(b.mul(b.mul(w, w), x)), dtype=f32))
    options = TrainingOptions(optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=0.1,
                              max_grad_norm=1.0)
    graph = build_training_graph(b.graph, options)
    x_value = np.array([1.0, -2.0, 0.5], np.float16)
    result = interpret(graph, {"x": x_value, "lr": np.float32(0.01)})
    assert result.updates["w"].dtype == np.float16
    grad = 2 * x_value.astype(np.float64)  # d/dw of sum(w * w * x) at w = 1
    assert result.outputs["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-3)
    assert np.all(np.sign(1.0 - result.updates["w"].astype(np.float64)) == np.sign(grad))
