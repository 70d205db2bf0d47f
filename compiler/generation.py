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
from compiler.frontend.lower import GENERATION_MODES, declares_caches
from ir.errors import FrontendError
from ir.graph import Graph, Param, Value
from ir.verifier import verify

#: the generation entry points, in the order the PEF lists them
ENTRIES = GENERATION_MODES


#: each entry point's inputs as the runtime feeds them (name -> rank), besides `logits` [B, vocab] out
INPUTS = {"prefill": {"input_ids": 2, "positions": 1, "lengths": 1}, "decode": {"input_ids": 2, "positions": 1}}


def generation_graphs(module: Module, config: dict[str, Any]) -> dict[str, Graph]:
    """The prefill and decode graphs of `module`, verified (none if it declares no cache)."""
    if not declares_caches(module):
        return {}
    if not isinstance(config.get("max_seq_length"), int):
        raise FrontendError(f"model '{module.name}' declares caches but no int config field 'max_seq_length' "
                            "(the positions each cache holds, which the runtime needs)")
    graphs = {name: lower(module, config, training=False, generate=name) for name in ENTRIES}
    for name, graph in graphs.items():
        verify(graph)
        check_interface(name, graph)
    return graphs


def check_interface(name: str, graph: Graph) -> None:
    """FrontendError unless the graph has the inputs and output the runtime's generation loop uses."""
    inputs = {v.name: v.type for v in graph.inputs}
    wanted = INPUTS[name]
    batch = inputs["input_ids"].shape[0] if "input_ids" in inputs and inputs["input_ids"].rank else None
    logits = graph.outputs.get("logits")
    problems = [f"input '{n}' must be an integer tensor of rank {rank} with the batch first"
                for n, rank in wanted.items() if n not in inputs or not inputs[n].dtype.is_int
                or inputs[n].rank != rank or inputs[n].shape[0] != batch]
    problems += [f"it has input '{n}', which the runtime does not feed" for n in inputs if n not in wanted]
    if logits is None or logits.type.rank != 2 or logits.type.shape[0] != batch:
        problems.append("output 'logits' must be [batch, vocab]: the next token's logits of each sequence")
    if name == "decode" and batch is not None and inputs["input_ids"].shape[1:2] != (1,):
        problems.append("input 'input_ids' must hold one token per sequence ([batch, 1])")
    if problems:
        raise FrontendError(f"the {name} step of model '{graph.name}': " + "; ".join(problems))


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
