"""Generic graph rewriting: one forward sweep that may replace each op by simpler ones.

`rewrite(graph, rule)` visits every op in order (region ops included, each region
on its own). A rule gets a `Builder` stamped with the op's locations and phase,
and the op with its operands already substituted; it returns the values that
replace the op's results (existing values, or values it built with the builder),
or None to keep the op. Ops a rule builds are offered to the rule in turn, so
rewrites apply recursively. Uses of a replaced value, graph outputs and param
updates included, are redirected; the replaced op is dropped.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ir.builder import Builder
from ir.graph import Graph, Op, Region, Value
from ir.ops import lookup

#: rule(b, op) -> replacement values for op.results, or None to keep op
Rule = Callable[[Builder, Op], "Sequence[Value] | None"]

#: how many times ops built by a rule may themselves be rewritten, nested
MAX_DEPTH = 64


class Substitution:
    """A map from replaced values to their replacements, followed to the end of chains."""

    def __init__(self) -> None:
        self.map: dict[Value, Value] = {}

    def __setitem__(self, old: Value, new: Value) -> None:
        if old.type != new.type:
            raise TypeError(f"replacing a {old.type} value by a {new.type} value")
        if self[new] is not old:
            self.map[old] = new

    def __getitem__(self, value: Value) -> Value:
        seen = value
        while seen in self.map:
            seen = self.map[seen]
        if seen is not value:
            self.map[value] = seen
        return seen

    def apply_to_exits(self, graph: Graph) -> None:
        """Redirect the graph's outputs and param updates (a forward sweep has already
        substituted every op's operands and region results on its way)."""
        graph.outputs = {k: self[v] for k, v in graph.outputs.items()}
        graph.updates = {k: self[v] for k, v in graph.updates.items()}


class _Sweep:
    def __init__(self, graph: Graph, rule: Rule):
        self.graph = graph
        self.rule = rule
        self.subst = Substitution()
        self.count = 0

    def block(self, ops: list[Op]) -> list[Op]:
        out: list[Op] = []
        for op in ops:
            self.visit(op, out, 0)
        return out

    def region(self, region: Region) -> None:
        region.ops = self.block(region.ops)
        region.results = [self.subst[v] for v in region.results]

    def visit(self, op: Op, out: list[Op], depth: int) -> None:
        op.operands = [self.subst[v] for v in op.operands]
        if op.region is not None:
            self.region(op.region)
        b = Builder(self.graph, ops=[])
        b.locs, b.phase = op.locs, op.phase
        replacement = self.rule(b, op)
        if replacement is None:
            out.append(op)
            return
        if depth >= MAX_DEPTH:
            raise RecursionError(f"rewriting '{op.name}' did not settle after {MAX_DEPTH} nested rewrites")
        if len(replacement) != len(op.results):
            raise ValueError(f"'{op.name}' has {len(op.results)} results but the rule gave {len(replacement)}")
        self.count += 1
        for new_op in b.ops:
            self.visit(new_op, out, depth + 1)
        for old, new in zip(op.results, replacement):
            self.subst[old] = self.subst[new]


def rewrite(graph: Graph, rule: Rule) -> int:
    """Apply `rule` to every op of `graph` in place; the number of ops replaced."""
    sweep = _Sweep(graph, rule)
    graph.ops = sweep.block(graph.ops)
    sweep.subst.apply_to_exits(graph)
    return sweep.count


def erase_unused(ops: list[Op], live: set[Value]) -> list[Op]:
    """`ops` without those whose results neither reach `live` nor feed a kept op (regions too)."""
    needed = set(live)
    kept: list[Op] = []
    for op in reversed(ops):
        if not any(v in needed for v in op.results):
            continue
        if op.region is not None:
            op.region.ops = erase_unused(op.region.ops, set(op.region.results))
        needed.update(op.operands)
        kept.append(op)
    kept.reverse()
    return kept


def erase_dead(graph: Graph) -> int:
    """Drop the ops of `graph` whose results reach no output or param update (regions too);
    the number of ops dropped."""
    before = sum(1 for _ in graph.walk())
    graph.ops = erase_unused(graph.ops, graph.live_outs())
    return before - sum(1 for _ in graph.walk())


def splat_value(value: Value) -> float | None:
    """The element of a value its producer declares a splat (see `OpDef.splat`), else None."""
    return None if value.producer is None else lookup(value.producer.name).splat(value.producer)
