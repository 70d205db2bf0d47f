"""Shared helpers of the autodiff tests: a float64 evaluator and zoo forward graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compiler import zoo
from compiler.autodiff import append_gradients
from compiler.config import parse_overrides
from compiler.frontend import build
from compiler.training import clone
from ir.graph import Graph, Op, Value
from ir.interpreter import interpret
from ir.ops import lookup
from ir.verifier import verify

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run_f64(ops: list[Op], env: dict[Value, np.ndarray]) -> None:
    """Every op's `ref` on float64 arrays (float results widened back to float64), into `env`."""
    for op in ops:
        out = lookup(op.name).ref(op.attrs, *(env[v] for v in op.operands))
        for r, o in zip(op.results, out if isinstance(out, tuple) else (out,)):
            o = np.asarray(o)
            assert o.shape == r.type.shape, (op.name, o.shape, r.type)
            env[r] = o.astype(np.float64) if r.type.dtype.is_float else o


def zoo_forward(name: str, *overrides: str) -> Graph:
    """The training-mode forward graph (with its `loss`) of a zoo model."""
    return build(zoo.source(name), parse_overrides(list(overrides)), training=True)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference over the largest reference magnitude."""
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def run_with_gradients(forward: Graph, inputs: dict, params: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """Interpret `forward` and its backward pass: (outputs, gradient of each trained param by name)."""
    graph = clone(forward)
    keys = {}
    for i, (name, grad) in enumerate(append_gradients(graph).items()):
        keys[name] = f"grad_{i}"
        graph.outputs[keys[name]] = grad
    verify(graph)
    outputs = interpret(graph, inputs, params).outputs
    return outputs, {name: outputs[key] for name, key in keys.items()}
