"""Graphs for the optimization-pass tests: zoo models (training and inference) and Builder graphs."""
from __future__ import annotations

import copy
import functools

import numpy as np

from compiler import zoo
from compiler.frontend import build
from compiler.passes import PassManager
from compiler.pass_manager.semantics import random_inputs
from compiler.training import TrainingOptions, build_training_graph
from ir.builder import Builder
from ir.dtypes import f32, i32
from ir.errors import Location
from ir.graph import Graph, Op, Phase, Value
from ir.init import Init
from ir.interpreter import initial_params, interpret, run_region
from ir.ops import lookup
from ir.types import TensorType

#: the cleanup and expansion every level runs before the optimization passes
PREFIX = "canonicalize,fold-constants,cse,dce,decompose,canonicalize,cse,dce"
O3 = f"{PREFIX},fuse,tile{{target=rdu-mini}},plan-memory{{target=rdu-mini}}"
MODES = ("train", "inference")


@functools.cache
def _zoo(name: str, mode: str) -> Graph:
    forward = build(zoo.source(name), training=mode == "train")
    if mode == "inference":
        return forward
    # SGD with momentum keeps the step well-conditioned for comparisons (AdamW divides tiny
    # gradients by their own size, so rounding noise becomes whole steps)
    return build_training_graph(forward, TrainingOptions(optimizer="sgd", momentum=0.9, max_grad_norm=1.0))


def zoo_graph(name: str, mode: str) -> Graph:
    """A fresh copy of a zoo model's forward graph (`inference`) or training step (`train`)."""
    return copy.deepcopy(_zoo(name, mode))


def adamw_graph(name: str) -> Graph:
    forward = build(zoo.source(name), training=True)
    return build_training_graph(forward, TrainingOptions(optimizer="adamw"))


def run(pipeline: str, graph: Graph) -> tuple[Graph, PassManager]:
    pm = PassManager.parse(pipeline)
    return pm.run(graph), pm


def results(graph: Graph, inputs: dict, params: dict) -> dict[str, np.ndarray]:
    out = interpret(graph, inputs, params)
    return {**{f"output {k}": v for k, v in out.outputs.items()}, **{f"update @{k}": v for k, v in out.updates.items()}}


def oracle(graph: Graph, seed: int = 0) -> tuple[dict, dict, dict]:
    """Seeded inputs and params and the reference interpreter's results on them."""
    inputs, params = random_inputs(graph, seed), initial_params(graph, seed)
    return inputs, params, results(graph, inputs, params)


def mlp() -> Graph:
    """x @ w1 + b1 -> gelu -> @ w2 + b2 -> softmax; located ops in phase fwd."""
    b = Builder(Graph("mlp"))
    x = b.input("x", TensorType((4, 8), f32))
    w1 = b.param("w1", TensorType((8, 16), f32), Init("normal", {"std": 0.5}))
    b1 = b.param("b1", TensorType((16,), f32), Init("normal", {"std": 0.5}))
    w2 = b.param("w2", TensorType((16, 8), f32), Init("normal", {"std": 0.5}))
    with b.in_phase(Phase.fwd):
        with b.at(Location("mlp.rdl", 2, 3)):
            h = b.gelu(b.add(b.matmul(x, w1), b1))
        with b.at(Location("mlp.rdl", 3, 3)):
            y = b.softmax(b.matmul(h, w2))
    b.output("y", y)
    return b.graph


def transformer_block(batch: int = 2, seq: int = 8, width: int = 16, heads: int = 2) -> Graph:
    """Pre-norm attention + MLP block with layer_norm, causal softmax, residuals and a scalar loss."""
    b = Builder(Graph("block"))
    t = lambda *shape: TensorType(shape, f32)  # noqa: E731
    x = b.input("x", t(batch, seq, width))
    p = {name: b.param(name, t(*shape), Init("normal", {"std": 0.2})) for name, shape in [
        ("ln1_g", (width,)), ("ln1_b", (width,)), ("qkv", (width, 3 * width)), ("proj", (width, width)),
        ("ln2_g", (width,)), ("ln2_b", (width,)), ("fc", (width, 4 * width)), ("fc_b", (4 * width,)),
        ("out", (4 * width, width))]}
    hd = width // heads
    with b.in_phase(Phase.fwd), b.at(Location("block.rdl", 1, 1)):
        h = b.layer_norm(x, p["ln1_g"], p["ln1_b"])
        qkv = b.matmul(h, p["qkv"])
        q, k, v = (b.transpose(b.reshape(b.slice(qkv, starts=(0, 0, i * width), stops=(batch, seq, (i + 1) * width)),
                                         shape=(batch, seq, heads, hd)), perm=(0, 2, 1, 3)) for i in range(3))
        scores = b.mul(b.matmul(q, k, transpose_b=True), b.scalar(hd ** -0.5, f32))
        masked = b.where(b.causal_mask(rows=seq, cols=seq), scores, b.scalar(-1e9, f32))
        att = b.matmul(b.softmax(masked), v)
        y = b.reshape(b.transpose(att, perm=(0, 2, 1, 3)), shape=(batch, seq, width))
        x = b.add(x, b.matmul(y, p["proj"]))
        h = b.gelu(b.add(b.matmul(b.layer_norm(x, p["ln2_g"], p["ln2_b"]), p["fc"]), p["fc_b"]))
        x = b.add(x, b.matmul(h, p["out"]))
        loss = b.mean(b.mul(x, x), axes=(0, 1, 2))
    b.output("loss", loss)
    b.output("y", x)
    return b.graph


def gather_scatter() -> Graph:
    """An embedding lookup and its scatter-add gradient (an opaque op) around elementwise ops."""
    b = Builder(Graph("embed"))
    ids = b.input("ids", TensorType((2, 3), i32))
    table = b.param("table", TensorType((5, 4), f32), Init("normal", {"std": 1.0}))
    with b.in_phase(Phase.fwd):
        e = b.exp(b.gather(table, ids))
        g = b.neg(b.scatter_add(b.mul(e, e), ids, size=5))
    b.output("e", e)
    b.output("g", g)
    return b.graph


def run_in_arenas(graph: Graph, inputs: dict, params: dict, steps: int = 1) -> dict[str, np.ndarray]:
    """Run `graph` `steps` times with every placed tensor stored at its place in one byte arena per tier.

    A kernel's results are computed one after the other, each from what its operands'
    memory holds then — as the backend writes them — so a plan whose in-place writes or
    reuse clobber a tensor still needed gives different results. Between steps a param
    and its update trade places, as the runtime does, unless the update is in place.
    """
    values = [*graph.inputs, *(p.value for p in graph.params), *(v for op in graph.ops for v in op.results)]
    where = {value: value.mem for value in values}
    sizes: dict[str, int] = {}
    for value in values:
        sizes[value.mem.tier] = max(sizes.get(value.mem.tier, 0), value.mem.offset + value.type.nbytes)
    arenas = {tier: np.zeros(size, np.uint8) for tier, size in sizes.items()}

    def store(value: Value, array: np.ndarray) -> None:
        raw = np.ascontiguousarray(array, dtype=value.type.dtype.np).reshape(-1).view(np.uint8)
        arenas[where[value].tier][where[value].offset:where[value].offset + raw.size] = raw

    def load(value: Value) -> np.ndarray:
        raw = arenas[where[value].tier][where[value].offset:where[value].offset + value.type.nbytes]
        return raw.copy().view(value.type.dtype.np).reshape(value.type.shape)

    for param in graph.params:
        store(param.value, params[param.name])
    for step in range(steps):
        if step:
            for name, update in graph.updates.items():
                param = graph.param(name).value
                where[param], where[update] = where[update], where[param]
        for value in graph.inputs:
            store(value, inputs[value.name])
        for op in graph.ops:
            for k, result in enumerate(op.results):
                store(result, _evaluate(op, [load(v) for v in op.operands])[k])
    return {**{f"output {k}": load(v) for k, v in graph.outputs.items()},
            **{f"update @{k}": load(v) for k, v in graph.updates.items()}}


def _evaluate(op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
    with np.errstate(all="ignore"):
        return lookup(op.name).evaluate(op, args, run_region)
