"""Scalar expressions: the body language of elementwise kernels.

Elementwise op declarations give their semantics as a `scalar(e, attrs, *xs)`
method building an `Expr` with the `ScalarBuilder` `e`. The backend records these
trees into kernel programs; the runtime lowers each primitive to LLVM. `evaluate`
runs a tree with numpy, so every op's scalar form is checked against its reference.
"""
from __future__ import annotations

import math
from typing import Callable

import attrs
import numpy as np

from ir.dtypes import DType, dequantize, holds_blocks

_erf = np.frompyfunc(math.erf, 1, 1)

#: primitive -> numpy implementation. This table *is* the primitive set.
PRIMITIVES: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum, "pow": np.power,
    "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "erf": lambda x: np.asarray(_erf(x)).astype(np.asarray(x).dtype),
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal,
    "select": np.where,
}
COMPARISONS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})


@attrs.frozen
class Expr:
    """A node: a primitive over args, an `arg` (value = operand index), a `const`, or a `cast`."""

    op: str
    args: tuple[Expr, ...]
    dtype: DType
    value: float | int | None = None


class ScalarBuilder:
    """Builds `Expr` trees; one method per primitive, plus `arg`, `const`, `cast`."""

    def arg(self, index: int, dtype: DType) -> Expr:
        return Expr("arg", (), dtype, index)

    def const(self, value: float, dtype: DType) -> Expr:
        return Expr("const", (), dtype, float(value) if dtype.is_float else int(value))

    def cast(self, x: Expr, dtype: DType) -> Expr:
        return x if x.dtype == dtype else Expr("cast", (x,), dtype)

    def __getattr__(self, name: str) -> Callable[..., Expr]:
        if name not in PRIMITIVES:
            raise AttributeError(name)

        def build(*args: Expr) -> Expr:
            dtype = DType.bool if name in COMPARISONS else args[-1].dtype
            return Expr(name, tuple(args), dtype)

        return build


def evaluate(expr: Expr, args: list[np.ndarray]) -> np.ndarray:
    """Run an expression tree elementwise with numpy broadcasting."""
    if expr.op == "arg":
        return np.asarray(args[expr.value])
    if expr.op == "const":
        return np.asarray(expr.value, dtype=expr.dtype.np)
    operands = [evaluate(a, args) for a in expr.args]
    if expr.op == "cast":
        if holds_blocks(operands[0]):
            return dequantize(operands[0]).astype(expr.dtype.np, copy=False)
        return operands[0].astype(expr.dtype.np)
    with np.errstate(all="ignore"):
        return np.asarray(PRIMITIVES[expr.op](*operands)).astype(expr.dtype.np)
