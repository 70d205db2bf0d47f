"""Shared helpers of the autodiff tests: a float64 evaluator and zoo forward graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compiler import zoo
from compiler.config import parse_overrides
from compiler.frontend import build
from ir.graph import Graph, Op, Value
from ir.ops import lookup

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
