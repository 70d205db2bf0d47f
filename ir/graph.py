"""The SSA dataflow graph: values, ops, params, regions and graphs.

A `Graph` holds named inputs, params (name, type, initializer, role), ops in
topological order, named outputs and, for training, `updates` (the new value of a
param or optimizer state after one step). A fused kernel is an op that owns a
`Region`: an isolated sub-graph whose arguments stand for the op's operands.
"""
from __future__ import annotations

import enum
from typing import Any, Iterator

import attrs

from ir.errors import Location
from ir.init import Init
from ir.types import TensorType


class Role(enum.Enum):
    """What a param is: trained, frozen, or optimizer state."""

    param = "param"
    buffer = "buffer"
    state = "state"


class Phase(enum.Enum):
    """The section tag of an op in a training graph."""

    fwd = "fwd"
    bwd = "bwd"
    #: data parallel: gradients combined across replicas (`all_reduce`)
    allreduce = "allreduce"
    gradnorm = "gradnorm"
    opt = "opt"


@attrs.frozen
class Placement:
    """Where the memory plan puts a tensor: `offset` bytes into the arena of memory tier `tier`."""

    tier: str
    offset: int

    def __str__(self) -> str:
        return f"{self.tier}:{self.offset}"


@attrs.define(eq=False, repr=False)
class Value:
    """An SSA value. `producer` is None for graph inputs, params and region arguments.

    `mem` is its place in the memory plan (set by the `plan-memory` pass; printed as
    `mem(ddr:4096)`); the backend reads the plan from there.
    """

    type: TensorType
    producer: Op | None = None
    index: int = 0
    name: str | None = None
    mem: Placement | None = None

    def __repr__(self) -> str:
        label = self.name or (self.producer.name if self.producer else "arg")
        return f"<Value {label}: {self.type}>"


@attrs.define(eq=False, repr=False)
class Param:
    """A named persistent tensor with its initializer and role."""

    value: Value
    init: Init
    role: Role = Role.param

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def type(self) -> TensorType:
        return self.value.type


@attrs.define(eq=False, repr=False)
class Op:
    """One operation: a registry name, operands, typed attributes, results."""

    name: str
    operands: list[Value]
    attrs: dict[str, Any]
    results: list[Value] = attrs.field(factory=list)
    region: Region | None = None
    locs: tuple[Location, ...] = ()
    phase: Phase | None = None

    @property
    def result(self) -> Value:
        """The single result of a one-result op."""
        assert len(self.results) == 1, f"'{self.name}' has {len(self.results)} results"
        return self.results[0]

    def __repr__(self) -> str:
        return f"<Op {self.name}>"


@attrs.define(eq=False, repr=False)
class Region:
    """An isolated sub-graph: arguments, ops and yielded results."""

    args: list[Value]
    ops: list[Op] = attrs.field(factory=list)
    results: list[Value] = attrs.field(factory=list)

    def walk(self) -> Iterator[Op]:
        yield from walk_ops(self.ops)


@attrs.define(eq=False, repr=False)
class Graph:
    """A whole program."""

    name: str
    inputs: list[Value] = attrs.field(factory=list)
    params: list[Param] = attrs.field(factory=list)
    ops: list[Op] = attrs.field(factory=list)
    outputs: dict[str, Value] = attrs.field(factory=dict)
    updates: dict[str, Value] = attrs.field(factory=dict)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def input(self, name: str) -> Value:
        for value in self.inputs:
            if value.name == name:
                return value
        raise KeyError(name)

    def walk(self) -> Iterator[Op]:
        """Every op, region ops included, in order."""
        yield from walk_ops(self.ops)

    def users(self) -> dict[Value, list[Op]]:
        """Top-level ops using each value (a value used twice by one op is listed twice)."""
        users: dict[Value, list[Op]] = {}
        for op in self.ops:
            for operand in op.operands:
                users.setdefault(operand, []).append(op)
        return users

    def live_outs(self) -> set[Value]:
        """Values the graph hands back: outputs and param updates."""
        return set(self.outputs.values()) | set(self.updates.values())


def walk_ops(ops: list[Op]) -> Iterator[Op]:
    """Every op of `ops`, each followed by its region's ops, recursively."""
    for op in ops:
        yield op
        if op.region is not None:
            yield from walk_ops(op.region.ops)
