"""decompose: expand composite ops into simpler ones, recursively."""
from __future__ import annotations

import attrs

from compiler.pass_manager.base import Pass, PassContext
from compiler.pass_manager.registry import register_pass
from ir.builder import Builder
from ir.graph import Graph, Op, Value
from ir.ops import lookup
from ir.rewrite import rewrite


@register_pass
@attrs.frozen
class Decompose(Pass):
    """Expand every composite op (one whose declaration has `decompose`) until none is left."""

    name = "decompose"
    statistics = {"ops-expanded": "composite ops replaced by their expansion"}

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place; expansions keep the op's locations and phase."""
        ctx.count("ops-expanded", rewrite(graph, _expand))
        return graph


def _expand(b: Builder, op: Op) -> list[Value] | None:
    decompose = lookup(op.name).decompose
    return None if decompose is None else list(decompose(b, op))
