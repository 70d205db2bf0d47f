"""`pool2d` stages: max (padding is -inf) or average (padding counts as zero) windows."""
from __future__ import annotations

import math

import llvmlite.ir as ir

from backend.pef.stages import Pool2dGradStage, Pool2dStage
from runtime.jit import codegen as cg
from runtime.jit.codegen import F32, i64
from runtime.jit.module import KernelModule


def lower_pool2d(km: KernelModule, name: str, stage: Pool2dStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent (N*C)."""
    x = km.access(stage.x)
    out = km.whole(stage.out)
    n, c, h, w = stage.x_shape
    _, _, oh, ow = km.buffer(stage.out).shape
    kh, kw = stage.kernel
    epilogue = km.expression(stage.epilogue) if stage.epilogue is not None else None
    is_max = stage.mode == "max"

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        with b.goto_entry_block():
            acc_slot = b.alloca(F32)
        with cg.loop(b, lo, hi, name="nc") as nc:
            ni, ci = cg.unravel(b, nc, (n, c))
            with cg.loop(b, 0, oh, name="oh") as y:
                with cg.loop(b, 0, ow, name="ow") as z:
                    b.store(ir.Constant(F32, -math.inf if is_max else 0.0), acc_slot)
                    for row, col, inside in _window(b, y, z, stage.kernel, stage.stride, stage.padding, h, w):
                        value = b.select(inside, x.load(b, ptrs, [ni, ci, row, col]),
                                         ir.Constant(F32, -math.inf if is_max else 0.0))
                        current = b.load(acc_slot)
                        new = cg.intrinsic(b, "llvm.maximum", current, value) if is_max \
                            else b.fadd(current, value)
                        b.store(new, acc_slot)
                    acc = b.load(acc_slot)
                    if not is_max:
                        acc = b.fdiv(acc, ir.Constant(F32, float(kh * kw)))
                    acc = cg.round_to(b, acc, x.dtype)
                    indices = [ni, ci, y, z]
                    if epilogue is not None:
                        acc = epilogue.emit(b, ptrs, indices, acc)
                    out.store(b, acc, ptrs, indices)

    km.function(name, body)
    return n * c


def _window(b: ir.IRBuilder, y, z, kernel, stride, padding, h: int, w: int):
    """(row, col, inside) of every window position of output (y, z), in row-major window order;
    a position in the padding reads row 0, col 0 instead (and `inside` is false)."""
    (kh, kw), (s0, s1), (p0, p1) = kernel, stride, padding
    for i in range(kh):
        for j in range(kw):
            row = b.add(b.mul(y, i64(s0)), i64(i - p0))
            col = b.add(b.mul(z, i64(s1)), i64(j - p1))
            inside = b.and_(
                b.and_(b.icmp_signed(">=", row, i64(0)), b.icmp_signed("<", row, i64(h))),
                b.and_(b.icmp_signed(">=", col, i64(0)), b.icmp_signed("<", col, i64(w))))
            yield b.select(inside, row, i64(0)), b.select(inside, col, i64(0)), inside


def lower_pool2d_grad(km: KernelModule, name: str, stage: Pool2dGradStage) -> int:
    """dx = zeros; each g[n, c, oh, ow] goes to the window's first maximum (max) or is
    spread evenly over the window (avg). Parallel over (n, c) planes."""
    g = km.access(stage.g)
    x = km.access(stage.x) if stage.x is not None else None
    out = km.whole(stage.out)
    n, c, h, w = km.buffer(stage.out).shape
    _, _, oh, ow = stage.g_shape
    kh, kw = stage.kernel

    def window(b: ir.IRBuilder, y, z):
        return _window(b, y, z, stage.kernel, stage.stride, stage.padding, h, w)

    def add(b, ptrs, plane, row, col, value, inside):
        idx = [*plane, row, col]
        current = out.load(b, ptrs, idx)
        out.store(b, b.select(inside, b.fadd(current, value), current), ptrs, idx)

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        with b.goto_entry_block():
            best = b.alloca(F32)
            where = [b.alloca(cg.I64) for _ in range(3)]
        with cg.loop(b, lo, hi, name="nc") as nc:
            plane = cg.unravel(b, nc, (n, c))
            with cg.loop(b, 0, h, name="zh") as y:
                with cg.loop(b, 0, w, name="zw") as z:
                    out.store(b, ir.Constant(F32, 0.0), ptrs, [*plane, y, z])
            with cg.loop(b, 0, oh, name="oh") as y:
                with cg.loop(b, 0, ow, name="ow") as z:
                    grad = g.load(b, ptrs, [*plane, y, z])
                    if x is None:
                        share = b.fdiv(grad, ir.Constant(F32, float(kh * kw)))
                        for row, col, inside in window(b, y, z):
                            add(b, ptrs, plane, row, col, share, inside)
                    else:
                        route_to_max(b, ptrs, plane, y, z, grad, best, where)

    def route_to_max(b, ptrs, plane, y, z, grad, best, where):
        b.store(ir.Constant(F32, -math.inf), best)
        for slot in where:
            b.store(i64(-1), slot)
        for row, col, inside in window(b, y, z):
            value = b.select(inside, x.load(b, ptrs, [*plane, row, col]), ir.Constant(F32, -math.inf))
            current = b.load(best)
            first = b.icmp_signed("<", b.load(where[0]), i64(0))
            first_nan = b.and_(b.fcmp_unordered("uno", value, value), b.fcmp_ordered("ord", current, current))
            better = b.or_(b.or_(b.fcmp_ordered(">", value, current), first), first_nan)
            b.store(b.select(better, value, current), best)
            for slot, v in zip(where, (row, col, b.zext(inside, cg.I64))):
                b.store(b.select(better, v, b.load(slot)), slot)
        inside = b.icmp_signed("!=", b.load(where[2]), i64(0))
        add(b, ptrs, plane, b.load(where[0]), b.load(where[1]), grad, inside)

    km.function(name, body)
    return n * c
