"""Layout stages: `concat` (parts joined along an axis) and `pad` (XLA's pad)."""
from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Buffer, ints, nonneg, nonneg_all
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType


@declare
@attrs.frozen
class ConcatStage(StageKind):
    """Parts [shapes[p]] joined along `axis`."""

    kind: ClassVar[str] = "concat"
    ops: ClassVar[tuple[str, ...]] = ("concat",)
    has_core: ClassVar[bool] = False
    out: str
    parts: tuple[Access, ...] = attrs.field(converter=tuple)
    shapes: tuple[tuple[int, ...], ...] = attrs.field(converter=tuple)
    axis: int = attrs.field(validator=nonneg)

    def check(self, v, where, out: Buffer) -> str:
        if not self.parts or len(self.parts) != len(self.shapes):
            raise v.fail(where, "concat needs one shape per part and at least one part")
        rank = len(out.shape)
        if self.axis >= rank:
            raise v.fail(f"{where}.axis", f"axis {self.axis} out of range")
        for i, (part, shape) in enumerate(zip(self.parts, self.shapes)):
            if len(shape) != rank or any(d != o for j, (d, o) in enumerate(zip(shape, out.shape)) if j != self.axis):
                raise v.fail(f"{where}.shapes[{i}]", f"{list(shape)} does not fit output {list(out.shape)}")
            v.access(f"{where}.parts[{i}]", part, tuple(shape), out.dtype)
        if sum(s[self.axis] for s in self.shapes) != out.shape[self.axis]:
            raise v.fail(where, "part sizes do not add up to the output along the axis")
        return out.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        return np.concatenate([r.read(p, s) for p, s in zip(self.parts, self.shapes)], axis=self.axis)

    @classmethod
    def lower(cls, k, op, axis: int) -> ConcatStage:
        parts = tuple(k.operand_access(v) for v in op.operands)
        return cls(k.target(op.result), parts, tuple(v.type.shape for v in op.operands), axis)


@declare
@attrs.frozen
class PadStage(StageKind):
    """out = `value` everywhere, then x[i] at out[low + i * (interior + 1)] (XLA's pad)."""

    kind: ClassVar[str] = "pad"
    ops: ClassVar[tuple[str, ...]] = ("pad",)
    out: str
    x: Access
    x_shape: tuple[int, ...] = ints(nonneg_all)
    low: tuple[int, ...] = ints(nonneg_all)
    high: tuple[int, ...] = ints(nonneg_all)
    interior: tuple[int, ...] = ints(nonneg_all)
    value: float

    def check(self, v, where, out: Buffer) -> str:
        rank = len(self.x_shape)
        if not len(self.low) == len(self.high) == len(self.interior) == rank:
            raise v.fail(where, f"low, high and interior need {rank} entries each")
        x = v.access(f"{where}.x", self.x, self.x_shape, out.dtype)
        if not DType(out.dtype).is_float:
            v.fits(f"{where}.value", self.value, out.dtype)
        shape = [lo + hi + d + max(d - 1, 0) * it for d, lo, hi, it in
                 zip(self.x_shape, self.low, self.high, self.interior)]
        v.expect_shape(where, out, tuple(shape))
        return x.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        x = r.read(self.x, self.x_shape)
        result = np.full(out.shape, self.value, x.dtype)
        result[tuple(slice(lo, lo + max(d - 1, 0) * (it + 1) + 1, it + 1)
                     for d, lo, it in zip(self.x_shape, self.low, self.interior))] = x
        return result

    @classmethod
    def lower(cls, k, op, low, high, interior, value: float) -> PadStage:
        (x,) = op.operands
        return cls(k.target(op.result), k.operand_access(x), x.type.shape, low, high, interior, value)
