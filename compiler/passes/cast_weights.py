"""cast-weights: store weight matrices and embeddings in a 16-bit float type, read them as f32.

Generating a token with a batch of one reads every weight once and does two
flops per weight read: the step is bound by how many bytes the weights take,
and on an RDU (like most inference hardware) they are kept in bf16. This pass
gives every f32 `param` of rank >= `min-rank` that no update writes (so, in a
training graph, only frozen ones) the type `dtype`, and puts a widening `cast`
back to f32 before its first use; everything downstream still computes in
f32. The casts cost nothing after fusion: a widening cast feeding a matmul is
one of its operand reads (the gemm converts as it loads) and one feeding a
gather is moved behind it by canonicalize (only the gathered rows widen).

Values change once, when a checkpoint's f32 weights are rounded to `dtype` as
they are loaded; from then on the graph is exact for the rounded weights.
"""
from __future__ import annotations

import attrs

from compiler.pass_manager.base import Pass, PassContext, option
from compiler.pass_manager.registry import register_pass
from ir.builder import make_op
from ir.dtypes import DType
from ir.errors import PassError
from ir.graph import Graph, Op, Param, Role, Value

#: the types a weight may be stored in
STORAGE = ("bf16", "f16")


@register_pass
@attrs.frozen
class CastWeights(Pass):
    """Store weight matrices and embeddings (f32 params nothing updates) as bf16 or f16."""

    name = "cast-weights"
    retypes_params = True
    statistics = {"params-cast": "params stored in the narrower type",
                  "bytes-saved": "bytes of parameter storage saved"}

    dtype: str = option("bf16", "the storage type of the weights: bf16 or f16")
    min_rank: int = option(2, "cast params of at least this rank (2: matrices and embeddings, not norms and biases)")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if self.dtype not in STORAGE:
            raise PassError(f"cast-weights: option 'dtype' expects one of {', '.join(STORAGE)}, got '{self.dtype}'")
        narrow = DType(self.dtype)
        first_use = _first_uses(graph)
        widened: dict[Value, Value] = {}
        casts: dict[int, list[Op]] = {}
        for index, param in enumerate(graph.params):
            if not self._casts(param, graph) or param.value not in first_use:
                continue
            stored = Value(param.type.with_dtype(narrow), name=param.name)
            user = graph.ops[first_use[param.value]]
            widen = make_op("cast", [stored], {"dtype": DType.f32}, user.locs, user.phase)
            widened[param.value] = widen.results[0]
            graph.params[index] = Param(stored, param.init, param.role)
            casts.setdefault(first_use[param.value], []).append(widen)
            ctx.count("params-cast")
            ctx.count("bytes-saved", param.type.nbytes - stored.type.nbytes)
        _replace_uses(graph, widened)
        graph.ops = [new for i, op in enumerate(graph.ops) for new in (*casts.get(i, ()), op)]
        return graph

    def _casts(self, param: Param, graph: Graph) -> bool:
        return (param.role is Role.param and param.type.dtype is DType.f32 and param.type.rank >= self.min_rank
                and param.name not in graph.updates)


def _first_uses(graph: Graph) -> dict[Value, int]:
    """Each value's first top-level user, by op index."""
    first: dict[Value, int] = {}
    for index, op in enumerate(graph.ops):
        for operand in op.operands:
            first.setdefault(operand, index)
    return first


def _replace_uses(graph: Graph, replacements: dict[Value, Value]) -> None:
    """Top-level operands and graph outputs read the replacements (regions are isolated: a fused
    op's region sees its operands through its own arguments)."""
    for op in graph.ops:
        op.operands = [replacements.get(v, v) for v in op.operands]
    graph.outputs = {name: replacements.get(v, v) for name, v in graph.outputs.items()}
