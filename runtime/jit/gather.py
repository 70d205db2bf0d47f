"""`gather` (take along an axis) and `scatter_add` (its gradient) stages.

An index outside the table makes the kernel return `INDEX_ERROR` (the read is
clamped so memory stays safe); the executor turns that into an ExecutionError.
A table in blocks (q8_0, q4_0, q4_1: an embedding stored quantized) is gathered along an
axis before its blocked last one, a whole block at a time: the rows keep their bytes, and
the cast that follows dequantizes them as every other read of blocks does.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from backend.pef.stages import GatherStage, ScatterAddStage
from runtime.jit import codegen as cg
from runtime.jit.codegen import I32, i64
from runtime.jit.layout import Access
from runtime.jit.map import nest
from runtime.jit.module import KernelModule


def _checked_index(b: ir.IRBuilder, raw: ir.Value, extent: int, status) -> ir.Value:
    """The index as i64, clamped into [0, extent); records INDEX_ERROR in `status` if it was not."""
    index = b.sext(raw, cg.I64) if raw.type.width < 64 else raw
    bad = b.or_(b.icmp_signed("<", index, i64(0)), b.icmp_signed(">=", index, i64(extent)))
    b.store(b.select(bad, ir.Constant(I32, cg.INDEX_ERROR), b.load(status)), status)
    return b.select(bad, i64(0), index)


def lower_gather(km: KernelModule, name: str, stage: GatherStage) -> int:
    """out[o..., i..., r...] = table[o..., indices[i...], r...]; parallel over out axis 0."""
    table, indices, out = km.access(stage.table), km.access(stage.indices), km.whole(stage.out)
    axis, ishape = stage.axis, tuple(stage.indices_shape)
    out_shape = tuple(km.buffer(stage.out).shape)
    rank, nidx = len(out_shape), len(ishape)
    out_shape = out_shape or (1,)  # a scalar: one iteration, no index

    blocked = table.dtype.is_blocked
    if blocked and (table.dtype != out.dtype or axis + nidx >= rank or out_shape[-1] % table.dtype.block):
        raise ValueError(f"gather of a {table.dtype} table must keep its blocked last axis whole")
    loops = (*out_shape[:-1], out_shape[-1] // table.dtype.block) if blocked else out_shape

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        with b.goto_entry_block():
            status = b.alloca(I32)
        b.store(ir.Constant(I32, 0), status)

        def element(idx):
            idx = idx[:rank]
            position = indices.load(b, ptrs, idx[axis:axis + nidx])
            row = _checked_index(b, position, stage.table_shape[axis], status)
            source = [*idx[:axis], row, *idx[axis + nidx:]]
            if not blocked:
                out.store(b, table.load(b, ptrs, source), ptrs, idx)
                return
            first = i64(table.dtype.block)
            source[-1], idx = b.mul(source[-1], first), [*idx[:-1], b.mul(idx[-1], first)]
            _copy_block(b, ptrs, table, source, out, idx)

        nest(b, loops, lo, hi, element)
        return b.load(status)

    km.function(name, body)
    return out_shape[0]


def _copy_block(b: ir.IRBuilder, ptrs, source: Access, source_index, target: Access, target_index) -> None:
    """The bytes of the block holding element `source_index` of `source` into the one of `target`."""
    size = source.dtype.itemsize

    def start(access: Access, index) -> ir.Value:
        return b.mul(b.udiv(access.address(b, index), i64(access.dtype.block)), i64(size))
    at, to = start(source, source_index), start(target, target_index)
    for offset in range(size):
        byte = b.load(cg.element_ptr(b, ptrs[source.arg], b.add(at, i64(offset))))
        b.store(byte, cg.element_ptr(b, ptrs[target.arg], b.add(to, i64(offset))))


def lower_scatter_add(km: KernelModule, name: str, stage: ScatterAddStage) -> int:
    """out = base (zeros without one; already there in place), then
    out[o..., indices[i...], r...] += updates[o..., i..., r...].

    Work splits over the leading table axes (or, for axis 0, the trailing ones), so
    no two threads add into the same element.
    """
    updates, indices, out = km.access(stage.updates), km.access(stage.indices), km.whole(stage.out)
    base = km.access(stage.base) if stage.base is not None else None
    phases = ("add",) if stage.in_place else ("fill", "add")
    axis, ishape = stage.axis, tuple(stage.indices_shape)
    shape = tuple(km.buffer(stage.out).shape)
    outer, inner = shape[:axis], shape[axis + 1:]
    split_outer = math.prod(outer) > 1 or not inner
    extent = math.prod(outer) if split_outer else math.prod(inner)

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        with b.goto_entry_block():
            status = b.alloca(I32)
        b.store(ir.Constant(I32, 0), status)
        outer_range = (lo, hi) if split_outer else (i64(0), i64(math.prod(outer)))
        inner_range = (i64(0), i64(math.prod(inner))) if split_outer else (lo, hi)
        for phase in phases:
            with cg.loop(b, *outer_range, name=f"o{phase}") as o:
                o_idx = cg.unravel(b, o, outer)
                if phase == "fill":
                    with cg.loop(b, 0, shape[axis], name="fa") as a:
                        with cg.loop(b, *inner_range, name="fr") as r:
                            idx = [*o_idx, a, *cg.unravel(b, r, inner)]
                            value = cg.constant(out.dtype, 0) if base is None else base.load(b, ptrs, idx)
                            out.store(b, value, ptrs, idx)
                    continue
                with cg.loop(b, 0, math.prod(ishape), name="j") as j:
                    j_idx = cg.unravel(b, j, ishape)
                    row = _checked_index(b, indices.load(b, ptrs, j_idx), shape[axis], status)
                    with cg.loop(b, *inner_range, name="r") as r:
                        r_idx = cg.unravel(b, r, inner)
                        target = [*o_idx, row, *r_idx]
                        value = updates.load(b, ptrs, [*o_idx, *j_idx, *r_idx])
                        current = out.load(b, ptrs, target)
                        total = b.fadd(current, value) if out.dtype.is_float else b.add(current, value)
                        out.store(b, cg.round_to(b, total, out.dtype) if out.dtype.is_float else total, ptrs, target)
        return b.load(status)

    km.function(name, body)
    return max(extent, 1)
