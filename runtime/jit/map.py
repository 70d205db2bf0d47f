"""`map` stages: one elementwise loop nest over the output shape.

Axes that every access walks contiguously are merged first, so a chain of
elementwise, broadcast and injective ops becomes one simple counted loop the
vectorizer handles. The parallel axis is the outermost remaining axis.

Consecutive map stages over one shape that read what the run writes only where
it is written (element i at step i) become one loop storing each stage's value
in turn (`runs`): an optimizer's moment and parameter updates pass over memory
once, not once per stage. The arithmetic is the stages' (LLVM may contract another product
of a multiply-add into an FMA than in a loop of its own: a rounding apart).
"""
from __future__ import annotations

from typing import Callable, Sequence

import llvmlite.ir as ir

from backend.pef.records import canonical
from backend.pef.stages import MapStage
from runtime.jit import codegen as cg
from runtime.jit.layout import Access, Expression, coalesce
from runtime.jit.module import KernelModule

#: the most buffers one fused loop touches (a bound on the memory streams one loop walks at once)
MAX_STREAMS = 8


def simplify(shape: Sequence[int], outs: Sequence[Access], bodies: Sequence[Expression]
             ) -> tuple[tuple[int, ...], list[Access], list[Expression]]:
    """The same loop nest over coalesced axes (at least one axis), for outputs and bodies over it."""
    groups = [out.strides for out in outs] + [s for body in bodies for s in body.strides]
    new_shape, strides, _ = coalesce(shape, groups)
    if not new_shape:  # a scalar: one iteration
        new_shape, strides = (1,), [(0,)] * len(groups)
    rest = iter(strides[len(outs):])
    return (new_shape, [out.with_strides(s) for out, s in zip(outs, strides)],
            [body.with_strides([next(rest) for _ in body.strides]) for body in bodies])


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
    return lower_maps(km, name, (stage,))


def lower_maps(km: KernelModule, name: str, run: Sequence[MapStage]) -> int:
    """Emit a run of map stages over one shape (see `runs`) as one loop, function `name`;
    returns its parallel extent."""
    shape, outs, bodies = simplify(km.buffer(run[0].out).shape, [km.whole(stage.out) for stage in run],
                                   [km.expression(stage.body) for stage in run])

    def emit(b: ir.IRBuilder, ptrs, lo, hi):
        def step(idx):
            for out, body in zip(outs, bodies):
                out.store(b, body.emit(b, ptrs, idx), ptrs, idx)
        nest(b, shape, lo, hi, step)

    km.function(name, emit)
    return shape[0]


def runs(km: KernelModule, stages: Sequence) -> list[tuple]:
    """The stages in order, consecutive map stages that `fusable` allows grouped: one tuple per
    function to emit."""
    grouped: list[tuple] = []
    for stage in stages:
        last = grouped[-1] if grouped else ()
        if isinstance(stage, MapStage) and last and isinstance(last[0], MapStage) and fusable(km, (*last, stage)):
            grouped[-1] = (*last, stage)
        else:
            grouped.append((stage,))
    return grouped


def fusable(km: KernelModule, run: Sequence[MapStage]) -> bool:
    """Whether one loop computes what the map stages `run` compute one after another: one output
    shape, outputs that overlap nothing but buffers sharing their pointer, and every access
    through a written pointer the whole buffer in row-major order (step i sees element i only)."""
    shape = km.buffer(run[0].out).shape
    if any(km.buffer(stage.out).shape != shape for stage in run):
        return False
    outs = [km.whole(stage.out) for stage in run]
    pointer = km.aliasing.pointer
    if not all(km.aliasing.noalias[out.arg] for out in outs):
        return False
    accesses = outs + [read for stage in run for read in km.expression(stage.body).reads]
    if len({pointer[a.arg] for a in accesses}) > MAX_STREAMS:
        return False
    whole = {pointer[out.arg]: (0, canonical(shape, out.strides), out.dtype) for out in outs}
    return all((a.offset, canonical(shape, a.strides), a.dtype) == whole[pointer[a.arg]]
               for a in accesses if pointer[a.arg] in whole)
