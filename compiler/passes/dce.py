"""dce: dead code elimination."""
from __future__ import annotations

import attrs

from compiler.pass_manager.base import Pass, PassContext
from compiler.pass_manager.registry import register_pass
from ir.graph import Graph
from ir.rewrite import erase_dead


@register_pass
@attrs.frozen
class DCE(Pass):
    """Drop ops whose results reach no output or param update (inside regions too)."""

    name = "dce"
    statistics = {"ops-removed": "ops whose results nothing used"}

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place; inputs and params are kept (they are the program's interface)."""
        ctx.count("ops-removed", erase_dead(graph))
        return graph
