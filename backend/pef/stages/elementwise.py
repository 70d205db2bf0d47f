"""Elementwise stages: `map` (an expression over the output's index space) and `literal` (constants)."""
from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Body, Buffer
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType


@declare
@attrs.frozen
class MapStage(StageKind):
    """out[i] = body(i) over the out buffer's shape."""

    kind: ClassVar[str] = "map"
    has_core: ClassVar[bool] = False
    out: str
    body: Body

    def work(self, buffers) -> int:
        return buffers[self.out].size * len(self.body.nodes)

    def check(self, v, where, out: Buffer) -> str:
        v.body(f"{where}.body", self.body, out.shape)
        return self.body.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        return r.evaluate(self.body, out.shape)


@declare
@attrs.frozen
class LiteralStage(StageKind):
    """out = `values` (flat, row-major): an operand-less op evaluated at compile time."""

    kind: ClassVar[str] = "literal"
    has_core: ClassVar[bool] = False
    out: str
    values: tuple[int | float, ...] = attrs.field(converter=tuple)

    def check(self, v, where, out: Buffer) -> str:
        if len(self.values) != out.size:
            raise v.fail(where, f"{len(self.values)} values for {out.size} elements")
        wanted = float if DType(out.dtype).is_float else int
        if any(type(x) is not wanted for x in self.values):
            raise v.fail(where, f"{out.dtype} values must all be {wanted.__name__}s")
        if wanted is int:
            v.fits(where, min(self.values, default=0), out.dtype)
            v.fits(where, max(self.values, default=0), out.dtype)
        return out.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        return np.asarray(self.values, DType(out.dtype).np)
