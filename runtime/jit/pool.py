"""`pool2d` stages: max (padding is -inf) or average (padding counts as zero) windows."""
from __future__ import annotations

import math

import llvmlite.ir as ir

from backend import kernel_program as kp
from runtime.jit import codegen as cg
from runtime.jit.codegen import F32, i64
from runtime.jit.module import KernelModule


def lower_pool2d(km: KernelModule, name: str, stage: kp.Pool2dStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent (N*C)."""
    x = km.access(stage.x)
    out = km.whole(stage.out)
    n, c, h, w = stage.x_shape
    _, _, oh, ow = km.buffer(stage.out).shape
    (kh, kw), (s0, s1), (p0, p1) = stage.kernel, stage.stride, stage.padding
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
                    for i in range(kh):
                        for j in range(kw):
                            row = b.add(b.mul(y, i64(s0)), i64(i - p0))
                            col = b.add(b.mul(z, i64(s1)), i64(j - p1))
                            inside = b.and_(
                                b.and_(b.icmp_signed(">=", row, i64(0)), b.icmp_signed("<", row, i64(h))),
                                b.and_(b.icmp_signed(">=", col, i64(0)), b.icmp_signed("<", col, i64(w))))
                            safe = [ni, ci, b.select(inside, row, i64(0)), b.select(inside, col, i64(0))]
                            value = b.select(inside, x.load(b, ptrs, safe),
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

