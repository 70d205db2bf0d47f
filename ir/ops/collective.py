"""Collectives: ops that combine a value across the replicas of a named group.

A data-parallel training graph is the program of one replica of `world_size`;
a collective is where the replicas meet. Semantics, for the reference
interpreter (one process): every replica of the group is taken to hold the
same value as this one, so `all_reduce(x, op="sum")` is `world_size * x` and
`op="mean"` is `x`. That keeps a graph's meaning a function of its own inputs,
so constant folding, CSE and `--verify-semantics` stay sound: a replicated
value really does reduce to that. The runtime runs the op through a
communicator across processes (MPI under `mpirun`, `runtime.distributed`), in
f32 and in rank order, so every replica gets bit-identical results.
"""
from __future__ import annotations

import re

from ir.ops.base import Attr, Cost, FusionKind, OpDef, TypeRuleError, register

_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@register
class AllReduce(OpDef):
    """Sum (or mean) of the operand over the `world_size` replicas of `group`; every replica gets it."""

    name = "all_reduce"
    kind = FusionKind.opaque
    attrs = {"op": Attr("str", "sum", choices=("sum", "mean")), "group": Attr("str"),
             "world_size": Attr("int")}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        if not x.dtype.is_float:
            raise TypeRuleError(f"reduces float values only, got {x}")
        if not _GROUP.match(attrs["group"]):
            raise TypeRuleError(f"group '{attrs['group']}' is not an identifier")
        if attrs["world_size"] < 1:
            raise TypeRuleError(f"group '{attrs['group']}' needs a world_size >= 1, got {attrs['world_size']}")
        return [x]

    @classmethod
    def ref(cls, attrs, x):
        return x * x.dtype.type(attrs["world_size"]) if attrs["op"] == "sum" else x.copy()

    @classmethod
    def vjp(cls, b, op, grads):
        """Every replica's result depends on every replica's operand: the cotangents are reduced alike."""
        return [b.all_reduce(grads[0], **op.attrs)]

    @classmethod
    def group(cls, op) -> tuple[str, int]:
        """The replica group the op communicates over: (name, world size)."""
        return op.attrs["group"], op.attrs["world_size"]

    @classmethod
    def cost(cls, op):
        """Local work of a ring all-reduce: (n-1)/n of the elements added, each sent and received twice."""
        x, n = op.operands[0].type, op.attrs["world_size"]
        moved = 2 * (n - 1) * x.nbytes // n
        return Cost(x.size * (n - 1) // n, x.nbytes + moved, x.nbytes + moved)

    @classmethod
    def stage(cls, op):
        return {"reduce": op.attrs["op"], "group": op.attrs["group"],
                "world_size": op.attrs["world_size"]}

