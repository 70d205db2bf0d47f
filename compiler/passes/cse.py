"""cse: common subexpression elimination by structural equality.

Two ops are equal when they have the same name, the same operands (after
earlier replacements), the same attributes and result types, and either no
region or structurally identical regions. Each region is its own scope.
"""
from __future__ import annotations

from typing import Any, Hashable

import attrs

from compiler.pass_manager.base import Pass, PassContext
from compiler.pass_manager.registry import register_pass
from ir.graph import Graph, Op, Region
from ir.rewrite import Substitution


@register_pass
@attrs.frozen
class CSE(Pass):
    """Replace each op by an earlier identical one (same name, operands, attributes, region)."""

    name = "cse"
    statistics = {"ops-removed": "ops replaced by an earlier identical op"}

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place."""
        subst = Substitution()
        before = sum(1 for _ in graph.walk())
        graph.ops = _block(graph.ops, subst)
        subst.apply_to_exits(graph)
        ctx.count("ops-removed", before - sum(1 for _ in graph.walk()))
        return graph


def _block(ops: list[Op], subst: Substitution) -> list[Op]:
    seen: dict[Hashable, Op] = {}
    kept: list[Op] = []
    for op in ops:
        op.operands = [subst[v] for v in op.operands]
        if op.region is not None:
            op.region.ops = _block(op.region.ops, subst)
            op.region.results = [subst[v] for v in op.region.results]
        key = (op.name, tuple(op.operands), _attrs_key(op.attrs),
               tuple(v.type for v in op.results), _region_key(op.region))
        earlier = seen.setdefault(key, op)
        if earlier is op:
            kept.append(op)
            continue
        for old, new in zip(op.results, earlier.results):
            subst[old] = new
    return kept


def _literal_key(value: Any) -> Hashable:
    """Floats by their bits, so -0.0 and 0.0 differ and equal NaNs match."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, tuple):
        return tuple(_literal_key(v) for v in value)
    return (type(value).__name__, value)


def _attrs_key(attrs_: dict) -> Hashable:
    return tuple((k, _literal_key(v)) for k, v in sorted(attrs_.items()))


def _region_key(region: Region | None) -> Hashable:
    """The region's structure with its values numbered in definition order."""
    if region is None:
        return None
    numbers = {v: i for i, v in enumerate(region.args)}
    parts: list[Hashable] = [tuple(v.type for v in region.args)]
    for op in region.ops:
        parts.append((op.name, tuple(numbers[v] for v in op.operands), _attrs_key(op.attrs),
                      tuple(v.type for v in op.results), _region_key(op.region)))
        for v in op.results:
            numbers[v] = len(numbers)
    parts.append(tuple(numbers[v] for v in region.results))
    return tuple(parts)
