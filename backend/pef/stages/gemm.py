"""The `gemm` stage: batched matrix products accumulated in f32."""
from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Body, Buffer, canonical, ints, nonneg, nonneg_all
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType


@declare
@attrs.frozen
class GemmStage(StageKind):
    """out[b, m, n] = sum_k a[b, m, k] * b[b, k, n], accumulated in f32; the operands may be
    different float types (a bf16 weight times f32 activations; a block-quantized weight is
    dequantized as it loads), the product has the wider one. Loop nest (batch..., m, n, k)."""

    kind: ClassVar[str] = "gemm"
    ops: ClassVar[tuple[str, ...]] = ("matmul",)
    out: str
    batch: tuple[int, ...] = ints(nonneg_all)
    m: int = attrs.field(validator=nonneg)
    n: int = attrs.field(validator=nonneg)
    k: int = attrs.field(validator=nonneg)
    a: Access
    b: Access
    epilogue: Body | None = None

    def loop_nest(self, out_shape) -> tuple[int, ...]:
        return tuple(self.batch) + (self.m, self.n, self.k)

    def contracted(self, rank: int) -> tuple[int, ...]:
        return (rank - 1,)

    def work(self, buffers) -> int:
        return math.prod(self.batch) * self.m * self.n * max(self.k, 1)

    def check(self, v, where, out: Buffer) -> str:
        batch = tuple(self.batch)
        a = v.access(f"{where}.a", self.a, batch + (self.m, self.k))
        b = v.access(f"{where}.b", self.b, batch + (self.k, self.n))
        if not all(DType(x.dtype).is_float or DType(x.dtype).is_blocked for x in (a, b)):
            raise v.fail(where, f"gemm needs float operands, got {a.dtype} and {b.dtype}")
        v.expect_shape(where, out, batch + (self.m, self.n))
        return max(a.dtype, b.dtype, key=lambda name: 4 if DType(name).is_blocked else DType(name).itemsize)

    def reference(self, r, out: Buffer) -> np.ndarray:
        batch = tuple(self.batch)
        a = r.read(self.a, batch + (self.m, self.k))
        b = r.read(self.b, batch + (self.k, self.n))
        return np.matmul(a.astype(np.float32), b.astype(np.float32))

    @classmethod
    def lower(cls, k, op, transpose_a: bool, transpose_b: bool) -> GemmStage:
        out = op.result.type.shape
        batch, (m, n) = out[:-2], out[-2:]
        a, b = op.operands
        depth = a.type.shape[-2] if transpose_a else a.type.shape[-1]
        return cls(k.target(op.result), batch, m, n, depth,
                   _batched(k, a, batch, transpose_a), _batched(k, b, batch, transpose_b))

    def tile_elements(self, tile, access: Access) -> int:
        *batch, tm, tn, tk = tile
        rows, cols = (tm, tk) if access is self.a else (tk, tn)
        return math.prod(t for t, s in zip(batch, access.strides) if s) * rows * cols


def _batched(k, value, batch: tuple[int, ...], transpose: bool) -> Access:
    """A matrix operand's read over (batch..., rows, cols): batch axes broadcast, maybe transposed
    (a widening cast of a read stays a read of the narrow buffer: gemm loads convert to f32)."""
    access = k.operand_access(value, widened=True)
    strides = access.strides
    if transpose:
        strides = strides[:-2] + (strides[-1], strides[-2])
    lead = (0,) * (len(batch) - (len(strides) - 2)) + strides[:-2]
    return Access(access.buffer, access.offset, canonical(batch, lead) + strides[-2:])
