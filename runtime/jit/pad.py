"""`pad` stages: `low`/`high` fill values around each axis and `interior` ones between elements."""
from __future__ import annotations

import llvmlite.ir as ir

from backend.pef.stages import PadStage
from runtime.jit import codegen as cg
from runtime.jit.codegen import i64
from runtime.jit.map import nest
from runtime.jit.module import KernelModule


def lower_pad(km: KernelModule, name: str, stage: PadStage) -> int:
    """out[i] = x[(i - low) / (interior + 1)] where that lands on an element, else `value`."""
    x, out = km.access(stage.x), km.whole(stage.out)
    shape = tuple(km.buffer(stage.out).shape) or (1,)
    rank = len(stage.x_shape)

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        def element(idx):
            inside = ir.Constant(cg.I1, 1)
            source = []
            for i, (extent, low, gap) in enumerate(zip(stage.x_shape, stage.low, stage.interior)):
                shifted = b.sub(idx[i], i64(low))
                position = b.sdiv(shifted, i64(gap + 1)) if gap else shifted
                ok = b.and_(b.icmp_signed(">=", shifted, i64(0)), b.icmp_signed("<", position, i64(extent)))
                if gap:
                    ok = b.and_(ok, b.icmp_signed("==", b.srem(shifted, i64(gap + 1)), i64(0)))
                inside = b.and_(inside, ok)
                source.append(b.select(ok, position, i64(0)))
            value = x.load(b, ptrs, source)
            out.store(b, b.select(inside, value, cg.constant(out.dtype, stage.value)), ptrs, idx[:rank])

        nest(b, shape, lo, hi, element)

    km.function(name, body)
    return shape[0]
