"""Collective stages: `all_reduce`, run by the runtime on the host through a communicator."""
from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Buffer, one_of, positive
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType


@declare
@attrs.frozen
class AllReduceStage(StageKind):
    """out = the sum (`reduce` "sum") or mean ("mean") of x [out's shape] over the `world_size`
    replicas of `group`. Not native code: the runtime runs it on the host through a communicator
    (MPI), in f32 and in rank order; it is the only stage of its kernel."""

    kind: ClassVar[str] = "all_reduce"
    ops: ClassVar[tuple[str, ...]] = ("all_reduce",)
    on_host: ClassVar[bool] = True
    out: str
    x: Access
    reduce: str = attrs.field(validator=one_of("sum", "mean"))
    group: str
    world_size: int = attrs.field(validator=positive)

    def check(self, v, where, out: Buffer) -> str:
        if len(v.program.stages) != 1:
            raise v.fail(where, "an all_reduce stage must be its kernel's only stage")
        if not DType(out.dtype).is_float:
            raise v.fail(where, f"all_reduce reduces float values, got {out.dtype}")
        v.access(f"{where}.x", self.x, tuple(out.shape), out.dtype)
        return out.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        """As the `all_reduce` op's reference: every replica of the group holds this one's value."""
        x = r.read(self.x, out.shape).astype(np.float32)
        return x * np.float32(self.world_size) if self.reduce == "sum" else x

    @classmethod
    def lower(cls, k, op, reduce: str, group: str, world_size: int) -> AllReduceStage:
        """A kernel of its own: the runtime runs it on the host, through the communicator."""
        if k.op.region is not None and len(k.op.region.ops) > 1:
            raise k.error("a collective is a kernel of its own: it cannot be fused with other ops", op)
        (x,) = op.operands
        return cls(k.target(op.result), k.operand_access(x), reduce, group, world_size)
