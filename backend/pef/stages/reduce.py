"""The `reduce` stage: a body over a loop nest, combined across some of its axes."""
from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Body, Buffer, nonneg_all, ints, one_of
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType

COMBINES = ("add", "max", "min", "argmax")


@declare
@attrs.frozen
class ReduceStage(StageKind):
    """Over the loop nest `shape`, combine body(i) across `axes` with `combine` (add, max, min,
    argmax: the first index of the maximum along a single axis, as i32) starting from `identity`;
    out is the kept axes in row-major order (keepdims or not: same layout)."""

    kind: ClassVar[str] = "reduce"
    ops: ClassVar[tuple[str, ...]] = ("sum", "max", "mean", "argmax")
    out: str
    shape: tuple[int, ...] = ints(nonneg_all)
    axes: tuple[int, ...] = ints(nonneg_all)
    combine: str = attrs.field(validator=one_of(*COMBINES))
    identity: float
    body: Body
    epilogue: Body | None = None

    def loop_nest(self, out_shape) -> tuple[int, ...]:
        return tuple(self.shape)

    def contracted(self, rank: int) -> tuple[int, ...]:
        return tuple(sorted(self.axes))

    def work(self, buffers) -> int:
        return math.prod(self.shape) * len(self.body.nodes)

    def check(self, v, where, out: Buffer) -> str:
        rank = len(self.shape)
        if len(set(self.axes)) != len(self.axes) or any(a >= rank for a in self.axes):
            raise v.fail(f"{where}.axes", f"bad axes {list(self.axes)} for rank {rank}")
        if self.combine == "argmax" and len(self.axes) != 1:
            raise v.fail(f"{where}.axes", "argmax reduces exactly one axis")
        kept = math.prod(d for i, d in enumerate(self.shape) if i not in self.axes)
        if out.size != kept:
            raise v.fail(where, f"output '{out.name}' has {out.size} elements, the reduction gives {kept}")
        v.body(f"{where}.body", self.body, self.shape)
        if self.body.dtype == "bool":
            raise v.fail(f"{where}.body", "cannot reduce bool values")
        if not DType(self.body.dtype).is_float and not math.isinf(self.identity):
            v.fits(f"{where}.identity", self.identity, self.body.dtype)
        return "i32" if self.combine == "argmax" else self.body.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        values = r.evaluate(self.body, self.shape)
        axes = tuple(self.axes)
        if self.combine == "argmax":
            return np.argmax(values, axis=axes[0])
        if self.combine == "add":
            return np.sum(values, axis=axes, dtype=values.dtype)
        fn = np.max if self.combine == "max" else np.min
        return fn(values, axis=axes, initial=np.asarray(self.identity, values.dtype))

    @classmethod
    def lower(cls, k, op, combine: str, identity: float, axes) -> ReduceStage:
        (x,) = op.operands
        return cls(k.target(op.result), x.type.shape, tuple(axes), combine, float(identity), k.body_of(x))
