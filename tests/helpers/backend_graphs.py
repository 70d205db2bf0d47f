"""Graphs for backend tests: built with the IR builder, decomposed and fused by hand."""
from __future__ import annotations

import numpy as np

from ir.builder import Builder, make_op
from ir.dtypes import f32, i32
from ir.errors import Location
from ir.graph import Graph, Phase, Region, Value
from ir.init import Init
from ir.interpreter import initial_params
from ir.ops import lookup
from ir.rewrite import rewrite
from ir.types import TensorType


def decompose(graph: Graph) -> Graph:
    """Expand composite ops with their declarations' `decompose` (what the decompose pass does)."""
    def expand(b, op):
        fn = lookup(op.name).decompose
        return None if fn is None else list(fn(b, op))
    rewrite(graph, expand)
    return graph


def fuse(graph: Graph, start: int, stop: int, label: str = "") -> Graph:
    """Wrap top-level ops [start, stop) into one `fused` op (results used later become its results)."""
    inner = graph.ops[start:stop]
    defined = {v for op in inner for v in op.results}
    later = [v for op in graph.ops[stop:] for v in op.operands] + list(graph.outputs.values()) \
        + list(graph.updates.values())
    results = list(dict.fromkeys(v for v in later if v in defined))
    outside = list(dict.fromkeys(v for op in inner for v in op.operands if v not in defined))
    args = [Value(v.type) for v in outside]
    mapping = dict(zip(outside, args))
    for op in inner:
        op.operands = [mapping.get(v, v) for v in op.operands]
    region = Region(args, inner, results)
    op = make_op("fused", outside, {"label": label}, inner[0].locs, inner[0].phase, region)
    graph.ops[start:stop] = [op]
    for old, new in zip(results, op.results):
        for later_op in graph.ops[start + 1:]:
            later_op.operands = [new if v is old else v for v in later_op.operands]
        for table in (graph.outputs, graph.updates):
            for key, value in table.items():
                if value is old:
                    table[key] = new
    return graph


def fuse_phases(graph: Graph) -> Graph:
    """One fused op per run of ops with the same phase."""
    start = 0
    while start < len(graph.ops):
        stop = start + 1
        while stop < len(graph.ops) and graph.ops[stop].phase == graph.ops[start].phase:
            stop += 1
        fuse(graph, start, stop, label=graph.ops[start].phase.value if graph.ops[start].phase else "")
        start += 1
    return graph


def mlp(batch: int = 4, hidden: int = 16) -> Graph:
    """linear -> gelu -> linear -> softmax cross-entropy, with a hand-written SGD step."""
    b = Builder(Graph("mlp"))
    x = b.input("x", TensorType((batch, 8), f32))
    labels = b.input("labels", TensorType((batch,), i32))
    w1 = b.param("w1", TensorType((hidden, 8), f32), Init("xavier_uniform"))
    b1 = b.param("b1", TensorType((hidden,), f32), Init("normal", {"std": 0.1}))
    w2 = b.param("w2", TensorType((5, hidden), f32), Init("xavier_uniform"))
    with b.in_phase(Phase.fwd), b.at(Location("mlp.rdl", 4, 3)):
        h = b.gelu(b.add(b.matmul(x, w1, transpose_b=True), b1))
        logits = b.matmul(h, w2, transpose_b=True)
        loss = b.cross_entropy(logits, labels)
    with b.in_phase(Phase.opt):
        lr = b.scalar(0.1, f32)
        b.update("b1", b.sub(b1, b.mul(lr, b.tanh(b1))))
    b.output("loss", loss)
    b.output("logits", logits)
    return b.graph


def mlp_inputs(batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(batch, 8)).astype(np.float32),
            "labels": rng.integers(0, 5, size=(batch,)).astype(np.int32)}


def symbol_inputs(graph: Graph, inputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays keyed by tensor symbol: `%input` and `@param`."""
    env = {f"%{k}": v for k, v in inputs.items()}
    env.update({f"@{k}": v for k, v in initial_params(graph, seed).items()})
    return env
