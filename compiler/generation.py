"""Generation entry points: a model with `cache` declarations compiled for inference.

Besides its forward pass, such a model gets two more graphs, lowered from the
same source in the RDL modes "prefill" (a chunk of `seq_len` prompt tokens per
sequence, written into the KV caches at each sequence's position; the logits
of each sequence's last token) and "decode" (one token per sequence). The
three graphs become one PEF whose entries share their params: every graph gets
the same param list, in one order — the forward pass's params, then the ones
only generation declares (the caches, zero-initialized state, unused by the
forward pass) — so the memory plan places each param alike in all of them.
"""
from __future__ import annotations

from typing import Any

from compiler.frontend import Module, lower
from compiler.frontend.lower import declares_caches
from ir.errors import FrontendError
from ir.graph import Graph, Param, Value
from ir.verifier import verify

#: the generation entry points, in the order the PEF lists them
ENTRIES = ("prefill", "decode")


def generation_graphs(module: Module, config: dict[str, Any]) -> dict[str, Graph]:
    """The prefill and decode graphs of `module`, verified (none if it declares no cache)."""
    if not declares_caches(module):
        return {}
    graphs = {name: lower(module, config, training=False, generate=name) for name in ENTRIES}
    for graph in graphs.values():
        verify(graph)
    return graphs


def share_params(graphs: list[Graph]) -> None:
    """Give every graph the union of their params, ordered as the first graph has them, then the
    others' new ones in order; a param missing from a graph is added there (unused)."""
    union: dict[str, Param] = {}
    for graph in graphs:
        for param in graph.params:
            known = union.setdefault(param.name, param)
            if known.type != param.type or known.role != param.role:
                raise FrontendError(f"param '{param.name}' is {known.role.value} {known.type} in graph "
                                    f"'{graphs[0].name}' but {param.role.value} {param.type} when generating")
    for graph in graphs:
        own = {p.name: p for p in graph.params}
        graph.params = [own.get(name) or _copy(param) for name, param in union.items()]


def _copy(param: Param) -> Param:
    return Param(Value(param.type, name=param.name), param.init, param.role)
