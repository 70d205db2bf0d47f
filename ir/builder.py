"""A small API for building graphs: `b.matmul(x, w, transpose_b=True)`.

Every registered op is a method of the builder; each call checks the op's
attributes and type rule at once and stamps the current location and phase.
"""
from __future__ import annotations

import contextlib
import difflib
from functools import partial
from typing import Iterator

from ir.dtypes import DType
from ir.errors import Location, VerifyError
from ir.graph import Graph, Op, Param, Phase, Role, Value
from ir.init import Init
from ir.ops import REGISTRY, TypeRuleError, lookup
from ir.types import TensorType


def unknown_op_message(name: str) -> str:
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown op '{name}'{hint}"


def make_op(name: str, operands: list[Value], attrs: dict, locs: tuple[Location, ...] = (),
            phase: Phase | None = None, region=None) -> Op:
    """A checked op with typed results; VerifyError (with the op's location) if it is ill-formed."""
    where = locs[0] if locs else None
    if name not in REGISTRY:
        raise VerifyError(unknown_op_message(name), where)
    opdef = lookup(name)
    op = Op(name, list(operands), {}, locs=locs, phase=phase, region=region)
    try:
        opdef.check_arity(len(operands))
        op.attrs = opdef.check_attrs(attrs)
        types = opdef.infer_op(op)
    except TypeRuleError as err:
        raise VerifyError(f"'{name}': {err}", where) from None
    op.results = [Value(t, op, i) for i, t in enumerate(types)]
    return op


class Builder:
    """Appends ops to a graph (or to any op list) at the current location and phase."""

    def __init__(self, graph: Graph | None = None, ops: list[Op] | None = None):
        self.graph = graph if graph is not None else Graph("main")
        self.ops = ops if ops is not None else self.graph.ops
        self.locs: tuple[Location, ...] = ()
        self.phase: Phase | None = None

    def input(self, name: str, type: TensorType) -> Value:
        value = Value(type, name=name)
        self.graph.inputs.append(value)
        return value

    def param(self, name: str, type: TensorType, init: Init, role: Role = Role.param) -> Value:
        value = Value(type, name=name)
        self.graph.params.append(Param(value, init, role))
        return value

    def output(self, name: str, value: Value) -> None:
        self.graph.outputs[name] = value

    def update(self, param_name: str, value: Value) -> None:
        self.graph.updates[param_name] = value

    def op(self, name: str, *operands: Value, **attrs) -> Value | tuple[Value, ...]:
        op = make_op(name, list(operands), attrs, self.locs, self.phase)
        self.ops.append(op)
        return op.results[0] if len(op.results) == 1 else tuple(op.results)

    def scalar(self, value: float, dtype: DType) -> Value:
        """A rank-0 constant."""
        return self.op("full", shape=(), value=float(value), dtype=dtype)

    @contextlib.contextmanager
    def at(self, *locs: Location) -> Iterator[None]:
        saved, self.locs = self.locs, tuple(locs)
        try:
            yield
        finally:
            self.locs = saved

    @contextlib.contextmanager
    def in_phase(self, phase: Phase | None) -> Iterator[None]:
        saved, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = saved

    def __getattr__(self, name: str):
        if name in REGISTRY:
            return partial(self.op, name)
        raise AttributeError(name)
