"""Small graphs for pass tests, built with the IR builder."""
from __future__ import annotations

import numpy as np

from ir.builder import Builder
from ir.dtypes import f32, i32
from ir.errors import Location
from ir.graph import Graph, Phase, Region, Role, Value
from ir.init import Init
from ir.types import TensorType


def classifier() -> Graph:
    """Embedding, layer norm, linear, softmax cross-entropy: every composite op of a small model."""
    b = Builder(Graph("classifier"))
    ids = b.input("ids", TensorType((2, 4), i32))
    labels = b.input("labels", TensorType((2, 4), i32))
    table = b.param("wte", TensorType((11, 8), f32), Init("normal", {"std": 0.5}))
    w = b.param("w", TensorType((5, 8), f32), Init("xavier_uniform"))
    gamma = b.param("gamma", TensorType((8,), f32), Init("ones"))
    beta = b.param("beta", TensorType((8,), f32), Init("zeros"))
    with b.in_phase(Phase.fwd), b.at(Location("model.rdl", 3, 5)):
        h = b.gather(table, ids)
        h = b.layer_norm(h, gamma, beta)
        logits = b.matmul(h, w, transpose_b=True)
        probs = b.softmax(logits)
        loss = b.cross_entropy(logits, labels)
        rms = b.rms_norm(h, gamma)
    b.output("loss", loss)
    b.output("probs", probs)
    b.output("rms", b.mean(rms, axes=(1,)))
    return b.graph


def sample_inputs() -> dict:
    return {"ids": np.array([[1, 2, 3, 4], [5, 6, 7, 10]], np.int32),
            "labels": np.array([[0, 1, 2, 3], [4, 0, 1, 2]], np.int32)}


def training_step() -> Graph:
    """A hand-written SGD step with momentum: phases, updates, optimizer state."""
    b = Builder(Graph("train"))
    x = b.input("x", TensorType((4, 3), f32))
    y = b.input("y", TensorType((4, 2), f32))
    lr = b.input("lr", TensorType((), f32))
    w = b.param("w", TensorType((3, 2), f32), Init("normal", {"std": 0.3}))
    m = b.param("m", TensorType((3, 2), f32), Init("zeros"), Role.state)
    with b.in_phase(Phase.fwd):
        err = b.sub(b.matmul(x, w), y)
        loss = b.mean(b.mul(err, err))
    with b.in_phase(Phase.bwd):
        two = b.scalar(2.0, f32)
        grad = b.matmul(x, b.div(b.mul(err, two), b.scalar(8.0, f32)), transpose_a=True)
    with b.in_phase(Phase.gradnorm):
        norm = b.sqrt(b.sum(b.mul(grad, grad)))
    with b.in_phase(Phase.opt):
        new_m = b.add(b.mul(m, b.scalar(0.9, f32)), grad)
        step = b.mul(new_m, b.add(lr, b.scalar(0.0, f32)))
        new_w = b.sub(w, b.mul(step, b.scalar(1.0, f32)))
    b.output("loss", loss)
    b.output("grad_norm", norm)
    b.update("w", new_w)
    b.update("m", new_m)
    return b.graph


def fused_graph() -> Graph:
    """A graph with a fused kernel holding a composite op and constants."""
    from ir.builder import make_op

    b = Builder(Graph("fused"))
    x = b.input("x", TensorType((2, 5), f32))
    region = Region([Value(TensorType((2, 5), f32))])
    inner = Builder(b.graph, ops=region.ops)
    scaled = inner.mul(region.args[0], inner.scalar(1.0, f32))
    region.results = [inner.add(inner.softmax(scaled), inner.scalar(0.0, f32))]
    fused = make_op("fused", [x], {"label": "softmax"}, region=region)
    b.ops.append(fused)
    b.output("y", b.add(fused.result, b.exp(x)))
    return b.graph
