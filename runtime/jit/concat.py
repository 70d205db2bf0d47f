"""`concat` stages (parts copied into slabs of the output) and `literal` stages (constants)."""
from __future__ import annotations

import math

import attrs
import llvmlite.ir as ir
import numpy as np

from backend.pef.records import Node
from backend.pef.stages import ConcatStage, LiteralStage
from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit.layout import Expression
from runtime.jit.map import nest, simplify
from runtime.jit.module import KernelModule

def lower_concat(km: KernelModule, name: str, stage: ConcatStage) -> int:
    """Emit the stage as function `name`; parallel over output axis 0 unless that is the concat axis."""
    out = km.whole(stage.out)
    axis = stage.axis
    shape = km.buffer(stage.out).shape
    parallel = axis != 0
    starts = np.cumsum([0] + [s[axis] for s in stage.shapes])[:-1]

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        for part, part_shape, start in zip(stage.parts, stage.shapes, starts):
            read = km.access(part)
            copy = Expression((Node("arg", read.dtype.value, (), 0),), (read,), ())
            target = attrs.evolve(out, offset=int(start) * out.strides[axis])
            if parallel:
                nest(b, part_shape, lo, hi, lambda idx, c=copy, t=target: t.store(b, c.emit(b, ptrs, idx), ptrs, idx))
                continue
            pshape, (ptarget,), (pcopy,) = simplify(part_shape, [target], [copy])
            nest(b, pshape, cg.i64(0), cg.i64(pshape[0]),
                 lambda idx, c=pcopy, t=ptarget: t.store(b, c.emit(b, ptrs, idx), ptrs, idx))

    km.function(name, body)
    return shape[0] if parallel else 1


def _storage_bits(values, dtype: DType) -> tuple[ir.Type, list[int | float]]:
    """Element type and initializer values of a constant array holding `values` as `dtype`."""
    array = np.asarray(values, dtype=np.float64 if dtype.is_float else np.int64).astype(dtype.np)
    if dtype in (DType.f16, DType.bf16):
        return cg.I16, array.view(np.uint16).astype(np.int64).tolist()
    if dtype == DType.bool:
        return cg.I8, array.astype(np.int64).tolist()
    return cg.storage_type(dtype), array.tolist()


def lower_literal(km: KernelModule, name: str, stage: LiteralStage) -> int:
    """Copy a constant array (a global of the module) into the output."""
    buffer = km.buffer(stage.out)
    dtype = DType(buffer.dtype)
    elem, values = _storage_bits(stage.values, dtype)
    count = max(math.prod(buffer.shape), 0)
    array_type = ir.ArrayType(elem, count)
    data = ir.GlobalVariable(km.module, array_type, f"{name}.data")
    data.global_constant = True
    data.linkage = "internal"
    data.initializer = ir.Constant(array_type, values)
    index = km.buffers[stage.out][0]

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        src = b.bitcast(data, elem.as_pointer())
        dst = b.bitcast(ptrs[index], elem.as_pointer())
        with cg.loop(b, 0, count, name="lit") as i:
            b.store(b.load(b.gep(src, [i])), b.gep(dst, [i]))

    km.function(name, body)
    return 1

