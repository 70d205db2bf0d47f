"""canonicalize: algebraic identities and op-declared simplifications.

Two sources of rules, neither naming an op:

* every op declaration's `canonicalize` hook (identity reshape/transpose/
  broadcast_to/slice/concat, reshape of reshape, transpose of transpose, ...);
* for elementwise ops, their scalar bodies: the body is built over the operands —
  splat constants become scalar constants, an elementwise producer is inlined —
  and simplified with the algebra of the scalar primitives (x+0, x*1, x-0, x/1,
  neg(neg x), x*0 for integers, cast to the same dtype, select with equal arms,
  constant subexpressions). A body that simplifies to one operand or to a
  constant replaces the op.
"""
from __future__ import annotations

import attrs

from compiler.pass_manager.base import Pass, PassContext
from compiler.pass_manager.registry import register_pass
from ir.builder import Builder
from ir.dtypes import DType
from ir.graph import Graph, Op, Value
from ir.ops import FusionKind, lookup
from ir.rewrite import erase_dead, rewrite, splat_value
from ir.scalar import Expr, ScalarBuilder, evaluate

_SCALAR_KINDS = (FusionKind.elementwise, FusionKind.broadcast)


@register_pass
@attrs.frozen
class Canonicalize(Pass):
    """Simplify ops by algebraic identities and op-declared rules; drop ops left unused."""

    name = "canonicalize"
    statistics = {"ops-simplified": "ops replaced by a simpler equivalent",
                  "ops-erased": "ops erased because nothing used them any more"}

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place."""
        ctx.count("ops-simplified", rewrite(graph, _simplify))
        ctx.count("ops-erased", erase_dead(graph))
        return graph


def _simplify(b: Builder, op: Op) -> list[Value] | None:
    opdef = lookup(op.name)
    if opdef.canonicalize is not None:
        result = opdef.canonicalize(b, op)
        if result is not None:
            return list(result)
    if opdef.scalar is not None and opdef.kind in _SCALAR_KINDS and len(op.results) == 1:
        return _simplify_body(b, op)
    return None


# --- the scalar body of an elementwise op, over "leaves" (distinct operand Values) ---------

class _Body:
    """Builds an op's scalar expression with operands as leaves, inlining one producer level."""

    def __init__(self, op: Op):
        self.e = ScalarBuilder()
        self.leaves: list[Value] = []
        self.expr = simplify(self.of(op, inline=True))

    def leaf(self, value: Value) -> Expr:
        if value not in self.leaves:
            self.leaves.append(value)
        return self.e.arg(self.leaves.index(value), value.type.dtype)

    def operand(self, value: Value, inline: bool) -> Expr:
        splat = splat_value(value)
        if splat is not None:
            return self.e.const(splat, value.type.dtype)
        producer = value.producer
        if inline and producer is not None and _is_scalar_op(producer):
            return self.of(producer, inline=False)
        return self.leaf(value)

    def of(self, op: Op, inline: bool) -> Expr:
        args = [self.operand(v, inline) for v in op.operands]
        return lookup(op.name).scalar(self.e, op.attrs, *args)


def _is_scalar_op(op: Op) -> bool:
    opdef = lookup(op.name)
    return opdef.scalar is not None and opdef.kind in _SCALAR_KINDS and len(op.results) == 1


def _simplify_body(b: Builder, op: Op) -> list[Value] | None:
    body = _Body(op)
    expr, result = body.expr, op.result
    if expr.op == "const":
        return [b.full(shape=result.type.shape, value=float(expr.value), dtype=result.type.dtype)]
    if expr.op != "arg":
        return None
    leaf = body.leaves[expr.value]
    if leaf.type.dtype != result.type.dtype:
        return None
    if leaf.type.shape == result.type.shape:
        return [leaf]
    return [b.broadcast_to(leaf, shape=result.type.shape)]


# --- the algebra of scalar primitives ------------------------------------------------------

def _is_const(x: Expr, value: float) -> bool:
    return x.op == "const" and x.value == value


def _same(x: Expr, y: Expr) -> bool:
    return x == y and x.op in ("arg", "const")


def simplify(expr: Expr) -> Expr:
    """`expr` simplified bottom-up by constant folding and the identities in `_RULES`."""
    if not expr.args:
        return expr
    expr = attrs.evolve(expr, args=tuple(simplify(a) for a in expr.args))
    if all(a.op == "const" for a in expr.args):
        return _fold(expr)
    rule = _RULES.get(expr.op)
    out = rule(expr, *expr.args) if rule is not None else None
    return expr if out is None or out.dtype != expr.dtype else out


def _fold(expr: Expr) -> Expr:
    value = evaluate(expr, []).item()
    if expr.dtype == DType.bool:
        value = int(value)
    return Expr("const", (), expr.dtype, float(value) if expr.dtype.is_float else int(value))


def _zero_of(expr: Expr) -> Expr:
    return Expr("const", (), expr.dtype, 0.0 if expr.dtype.is_float else 0)


def _add(expr, x, y):
    return y if _is_const(x, 0) else x if _is_const(y, 0) else None


def _sub(expr, x, y):
    if _is_const(y, 0):
        return x
    return _zero_of(expr) if expr.dtype.is_int and _same(x, y) else None


def _mul(expr, x, y):
    if _is_const(y, 1):
        return x
    if _is_const(x, 1):
        return y
    if expr.dtype.is_int and (_is_const(x, 0) or _is_const(y, 0)):
        return _zero_of(expr)
    return None


def _div(expr, x, y):
    return x if _is_const(y, 1) else None


def _neg(expr, x):
    return x.args[0] if x.op == "neg" else None


def _idempotent(expr, x, y):
    return x if _same(x, y) else None


def _select(expr, cond, x, y):
    if cond.op == "const":
        return x if cond.value else y
    return x if _same(x, y) else None


def _pow(expr, x, y):
    return x if _is_const(y, 1) else None


def _compare(truth: bool):
    def rule(expr, x, y):
        if x.dtype.is_int and _same(x, y):
            return Expr("const", (), DType.bool, int(truth))
        return None
    return rule


_RULES = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "neg": _neg, "pow": _pow,
    "max": _idempotent, "min": _idempotent, "select": _select,
    "eq": _compare(True), "le": _compare(True), "ge": _compare(True),
    "ne": _compare(False), "lt": _compare(False), "gt": _compare(False),
}
