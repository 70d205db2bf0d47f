"""`map` stages: one elementwise loop nest over the output shape.

Axes that every access walks contiguously are merged first, so a chain of
elementwise, broadcast and injective ops becomes one simple counted loop the
vectorizer handles. The parallel axis is the outermost remaining axis.
"""
from __future__ import annotations

from typing import Callable, Sequence

import llvmlite.ir as ir

from backend.pef.stages import MapStage
from runtime.jit import codegen as cg
from runtime.jit.layout import Access, Expression, coalesce
from runtime.jit.module import KernelModule


def simplify(shape: Sequence[int], out: Access, body: Expression) -> tuple[tuple[int, ...], Access, Expression]:
    """The same loop nest over coalesced axes (at least one axis)."""
    groups = [out.strides, *body.strides]
    new_shape, strides, _ = coalesce(shape, groups)
    if not new_shape:  # a scalar: one iteration
        new_shape, strides = (1,), [(0,)] * len(groups)
    return new_shape, out.with_strides(strides[0]), body.with_strides(strides[1:])


def nest(b: ir.IRBuilder, shape: Sequence[int], lo: ir.Value, hi: ir.Value,
         body: Callable[[list[ir.Value]], None], indices: tuple[ir.Value, ...] = ()) -> None:
    """Loops over `shape` (axis 0 restricted to [lo, hi)), calling `body(indices)` innermost."""
    depth = len(indices)
    if depth == len(shape):
        body(list(indices))
        return
    start, stop = (lo, hi) if depth == 0 else (0, shape[depth])
    with cg.loop(b, start, stop, name=f"i{depth}") as i:
        nest(b, shape, lo, hi, body, indices + (i,))


def lower_map(km: KernelModule, name: str, stage: MapStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent."""
    shape, out, expression = simplify(km.buffer(stage.out).shape, km.whole(stage.out),
                                      km.expression(stage.body))

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        nest(b, shape, lo, hi, lambda idx: out.store(b, expression.emit(b, ptrs, idx), ptrs, idx))

    km.function(name, body)
    return shape[0]
