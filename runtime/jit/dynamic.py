"""`dynamic_slice` and `update_slice` stages: windows at a run-time start per row of axis 0.

A position outside the axis reads as zero (`dynamic_slice`) or is not written
(`update_slice`), so no access ever leaves its buffer. An `in_place` update slice
(a KV-cache write whose output the memory plan put over the cache itself) writes
only the update's rows; otherwise the operand is copied first, unless at run time it is
the output itself, in the same layout (an update whose size-1 axes the plan gave other
strides, so it was not marked in place). Both run in
parallel over axis 0: each row touches only its own part of the output.
"""
from __future__ import annotations

import llvmlite.ir as ir

from backend.pef.stages import DynamicSliceStage, UpdateSliceStage
from runtime.jit import codegen as cg
from runtime.jit.layout import Access
from runtime.jit.map import nest
from runtime.jit.module import KernelModule


def _position(b: ir.IRBuilder, ptrs, starts: Access, idx: list[ir.Value], axis: int,
              extent: int) -> tuple[ir.Value, ir.Value]:
    """(row start + idx[axis], whether it lies in [0, extent)) as i64 and i1."""
    start = starts.load(b, ptrs, [idx[0]])
    if start.type.width < 64:
        start = b.sext(start, cg.I64)
    position = b.add(start, idx[axis])
    inside = b.and_(b.icmp_signed(">=", position, cg.i64(0)), b.icmp_signed("<", position, cg.i64(extent)))
    return position, inside


def lower_dynamic_slice(km: KernelModule, name: str, stage: DynamicSliceStage) -> int:
    """out[b, ..., j, ...] = x[b, ..., starts[b] + j, ...], zero outside the axis."""
    x, starts, out = km.access(stage.x), km.access(stage.starts), km.whole(stage.out)
    shape, axis = tuple(km.buffer(stage.out).shape), stage.axis
    extent = stage.x_shape[axis]
    zero = cg.constant(out.dtype, 0)

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        def element(idx):
            position, inside = _position(b, ptrs, starts, idx, axis, extent)
            at = [*idx[:axis], b.select(inside, position, cg.i64(0)), *idx[axis + 1:]]
            out.store(b, b.select(inside, x.load(b, ptrs, at), zero), ptrs, idx)
        nest(b, shape, lo, hi, element)

    km.function(name, body)
    return shape[0]


def lower_update_slice(km: KernelModule, name: str, stage: UpdateSliceStage) -> int:
    """out = operand (unless in place), then each update row written at its row's start."""
    operand, update, starts = km.access(stage.operand), km.access(stage.update), km.access(stage.starts)
    out = km.whole(stage.out)
    shape, axis = tuple(km.buffer(stage.out).shape), stage.axis

    same_layout = not operand.offset and all(
        size == 1 or s == t for size, s, t in zip(shape, operand.strides, out.strides))

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        if not stage.in_place:
            copy = b.icmp_unsigned("!=", ptrs[operand.arg], ptrs[out.arg]) if same_layout else ir.Constant(cg.I1, 1)
            with b.if_then(copy):
                nest(b, shape, lo, hi, lambda idx: out.store(b, operand.load(b, ptrs, idx), ptrs, idx))

        def element(idx):
            position, inside = _position(b, ptrs, starts, idx, axis, shape[axis])
            with b.if_then(inside):
                out.store(b, update.load(b, ptrs, idx), ptrs, [*idx[:axis], position, *idx[axis + 1:]])
        nest(b, tuple(stage.update_shape), lo, hi, element)

    km.function(name, body)
    return shape[0]
