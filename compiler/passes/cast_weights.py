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

`dtype` may also be a block-quantized type (q8_0, q4_0, q4_1: see `ir.dtypes`),
blocked along the stored last axis. Only a param that is read solely as the
right operand of matmuls (and, if a matmul reads it, as the table of gathers
along another axis), and whose last axis is a whole number of blocks, takes it
(Llama's Linear weights [out, in] are blocked along the reduction axis; GPT-2's
Conv1D weights [in, out] along the output axis, in their stored layout; an
embedding tied to the LM head [vocab, width] along its rows, in the block type
`table`, q8_0 by default: the head is the matrix whose rounding costs the most
accuracy, and GGUF's 4-bit files keep it in 8 bits too); every other
candidate is stored as `fallback` (an embedding only a gather reads: the entry
points of one model must agree on each param's type, and some graphs slice
such a table instead, as GPT-2's forward pass does its position embeddings). The widening cast of blocks is an operand read of the gemm as well:
the kernels dequantize as they load; a gather copies whole blocks of the rows it
picks, which the cast behind it dequantizes.
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
STORAGE = ("bf16", "f16", "q8_0", "q4_0", "q4_1")


@register_pass
@attrs.frozen
class CastWeights(Pass):
    """Store weight matrices and embeddings (f32 params nothing updates) as bf16, f16 or in blocks."""

    name = "cast-weights"
    retypes_params = True
    statistics = {"params-cast": "params stored in the narrower type",
                  "bytes-saved": "bytes of parameter storage saved"}

    dtype: str = option("bf16", "the storage type of the weights: bf16, f16, q8_0, q4_0 or q4_1")
    fallback: str = option("f16", "with a block type: the storage type of weights it cannot hold (bf16 or f16)")
    table: str = option("q8_0", "with a block type: the block type of an embedding tied to the LM head (q8_0, q4_0 "
                                "or q4_1)")
    min_rank: int = option(2, "cast params of at least this rank (2: matrices and embeddings, not norms and biases)")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if self.dtype not in STORAGE:
            raise PassError(f"cast-weights: option 'dtype' expects one of {', '.join(STORAGE)}, got '{self.dtype}'")
        if self.fallback not in STORAGE[:2]:
            raise PassError(f"cast-weights: option 'fallback' expects bf16 or f16, got '{self.fallback}'")
        if self.table not in STORAGE[2:]:
            raise PassError(f"cast-weights: option 'table' expects q8_0, q4_0 or q4_1, got '{self.table}'")
        first_use = _first_uses(graph)
        blockable = _blockable(graph)
        tables = {op.operands[0] for op in graph.ops if op.name == "gather"}
        widened: dict[Value, Value] = {}
        casts: dict[int, list[Op]] = {}
        for index, param in enumerate(graph.params):
            if not self._casts(param, graph) or param.value not in first_use:
                continue
            stored = Value(param.type.with_dtype(self._storage(param, blockable, tables)), name=param.name)
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

    def _storage(self, param: Param, blockable: set[Value], tables: set[Value]) -> DType:
        narrow = DType(self.dtype)
        if not narrow.is_blocked:
            return narrow
        if param.value not in blockable or param.type.shape[-1] % narrow.block:
            return DType(self.fallback)
        return DType(self.table) if param.value in tables else narrow

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


def _blockable(graph: Graph) -> set[Value]:
    """Values read only as the right operand of top-level matmuls or as the table of top-level
    gathers along an axis before the last, by at least one matmul."""
    def reads_blocks(op: Op, i: int) -> bool:
        if op.name == "gather":
            return i == 0 and op.attrs["axis"] % op.operands[0].type.rank < op.operands[0].type.rank - 1
        return op.name == "matmul" and i == 1
    right = {op.operands[1] for op in graph.ops if op.name == "matmul"}
    other = {v for op in graph.ops for i, v in enumerate(op.operands) if not reads_blocks(op, i)}
    return right - other - set(graph.outputs.values())


def _replace_uses(graph: Graph, replacements: dict[Value, Value]) -> None:
    """Top-level operands and graph outputs read the replacements (regions are isolated: a fused
    op's region sees its operands through its own arguments)."""
    for op in graph.ops:
        op.operands = [replacements.get(v, v) for v in op.operands]
    graph.outputs = {name: replacements.get(v, v) for name, v in graph.outputs.items()}
