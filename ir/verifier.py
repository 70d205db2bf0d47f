"""The verifier: checks every IR rule and names the op, its location and what is wrong."""
from __future__ import annotations

import re

from ir.builder import unknown_op_message
from ir.errors import Location, VerifyError
from ir.graph import Graph, Op, Role, Value
from ir.ops import REGISTRY, TypeRuleError, lookup
from ir.printer import Namer

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Verifier:
    def __init__(self, graph: Graph, positions: dict[object, Location] | None):
        self.graph = graph
        self.positions = positions or {}
        self.namer = Namer(graph)
        #: each collective group's world size, from its first op
        self.groups: dict[str, int] = {}

    def fail(self, message: str, op: Op | None = None, at: object = None) -> VerifyError:
        """An error located at `op`, or at the `positions` entry `at` (a declaration, output or update)."""
        if op is None:
            return VerifyError(message, self.positions.get(at))
        where = self.positions.get(op) or (op.locs[0] if op.locs else None)
        results = ", ".join(self.namer[v] for v in op.results) or "<no results>"
        return VerifyError(f"op {results} = {op.name}: {message}", where)

    def run(self) -> None:
        if not _NAME.match(self.graph.name or ""):
            raise self.fail(f"graph name '{self.graph.name}' is not a valid identifier")
        scope = self.declarations()
        self.ops(self.graph.ops, scope)
        for name, value in self.graph.outputs.items():
            if not _OUTPUT_NAME.match(name):
                raise self.fail(f"output name '{name}' is not a valid identifier", at=("output", name))
            if value not in scope:
                raise self.fail(f"output '{name}' uses a value not defined in the graph", at=("output", name))
        roles = {p.name: p for p in self.graph.params}
        for name, value in self.graph.updates.items():
            param = roles.get(name)
            at = ("update", name)
            if param is None or param.role == Role.buffer:
                raise self.fail(f"update of @{name}, which is not a trainable param or state", at=at)
            if value not in scope:
                raise self.fail(f"update of @{name} uses a value not defined in the graph", at=at)
            if value.type != param.type:
                raise self.fail(f"update of @{name} has type {value.type}, the param is {param.type}", at=at)

    def declarations(self) -> set[Value]:
        seen: set[str] = set()
        scope: set[Value] = set()
        values = [(v, "input") for v in self.graph.inputs] + [(p.value, "param") for p in self.graph.params]
        for value, what in values:
            if not value.name or not _NAME.match(value.name):
                raise self.fail(f"{what} name '{value.name}' is not a valid identifier", at=value)
            if value.name in seen:
                raise self.fail(f"{what} name '{value.name}' is declared twice", at=value)
            if value.producer is not None:
                raise self.fail(f"{what} '{value.name}' has a producing op", at=value)
            seen.add(value.name)
            scope.add(value)
        return scope

    def ops(self, ops: list[Op], scope: set[Value]) -> None:
        for op in ops:
            for value in op.results:
                self.namer.define(value)
            self.op(op, scope)
            for value in op.results:
                if value in scope:
                    raise self.fail("defines a value that is already defined", op)
                scope.add(value)

    def op(self, op: Op, scope: set[Value]) -> None:
        if op.name not in REGISTRY:
            raise self.fail(unknown_op_message(op.name), op)
        opdef = lookup(op.name)
        for i, operand in enumerate(op.operands):
            if operand not in scope:
                raise self.fail(f"operand {i} is used before it is defined (or is from another scope)", op)
        try:
            opdef.check_arity(len(op.operands))
            if opdef.check_attrs(op.attrs) != op.attrs:
                raise TypeRuleError("attributes are not in canonical form (defaults filled, values normalized)")
            if op.region is not None:
                self.region(op)
            expected = opdef.infer_op(op)
        except TypeRuleError as err:
            raise self.fail(str(err), op) from None
        if op.region is not None and not opdef.owns_region:
            raise self.fail(f"has a region, but '{op.name}' ops do not own one", op)
        actual = [v.type for v in op.results]
        if actual != expected:
            raise self.fail(f"result types {', '.join(map(str, actual))} do not match the type rule, "
                            f"which gives {', '.join(map(str, expected))}", op)
        for i, value in enumerate(op.results):
            if value.producer is not op or value.index != i:
                raise self.fail(f"result {i} does not point back to its op", op)
        if opdef.group is not None:
            self.group(op, *opdef.group(op))

    def group(self, op: Op, name: str, size: int) -> None:
        """Every collective of one group agrees on its world size."""
        known = self.groups.setdefault(name, size)
        if known != size:
            raise self.fail(f"group '{name}' has world_size {size} here, {known} at an earlier collective", op)

    def region(self, op: Op) -> None:
        region = op.region
        inner: set[Value] = set()
        for arg in region.args:
            if arg.producer is not None:
                raise TypeRuleError("a region argument has a producing op")
            inner.add(arg)
            self.namer.define(arg)
        self.ops(region.ops, inner)
        for i, value in enumerate(region.results):
            if value not in inner:
                raise TypeRuleError(f"region result {i} is not defined inside the region")


def verify(graph: Graph, positions: dict[object, Location] | None = None) -> None:
    """Raise `VerifyError` for the first broken rule; `positions` (from `parse_with_positions`)
    locate ops, declarations, outputs and updates in IR text."""
    _Verifier(graph, positions).run()
