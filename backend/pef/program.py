"""Kernel programs: the contract between the backend and the runtime.

A kernel is one top-level op of the optimized graph (often a `fused` op). Its
`KernelProgram` is self-contained plain data that the runtime lowers without
the compiler:

* `buffers`: every tensor the kernel touches (`backend.pef.records.Buffer`);
* `stages`: run in order, each writing one buffer whole (`backend.pef.stages`:
  one declaration per stage kind);
* `schedule`: tile sizes per stage, over the stage's loop nest, and the
  PCUs/PMUs the mapping gave the kernel;
* `cost`: modeled flops and bytes read/written per memory tier.

`reduce`, `gemm`, `conv2d` and `pool2d` take an optional `epilogue`: a body over
the out shape whose `acc` leaf is the stage's raw result (in the dtype the stage
computes: its operands' or body's, i32 for argmax); the epilogue's value is what is stored.
"""
from __future__ import annotations

import attrs

from backend.pef.records import Buffer, nonneg, nonneg_values, one_of
from backend.pef.stages import Stage

PHASES = ("fwd", "bwd", "allreduce", "gradnorm", "opt")


@attrs.frozen
class Schedule:
    """Tile sizes per stage (over its `loop_nest`; empty: not chosen) and the mapped resources."""

    tiles: tuple[tuple[int, ...], ...] = attrs.field(converter=tuple, default=())
    pcus: int = attrs.field(default=0, validator=nonneg)
    pmus: int = attrs.field(default=0, validator=nonneg)


@attrs.frozen
class KernelCost:
    """Modeled work: flops and bytes read/written per memory tier."""

    flops: int = attrs.field(validator=nonneg)
    bytes_read: dict[str, int] = attrs.field(factory=dict, validator=nonneg_values)
    bytes_written: dict[str, int] = attrs.field(factory=dict, validator=nonneg_values)


@attrs.frozen
class KernelProgram:
    """One kernel: its buffers, stages, schedule and cost."""

    name: str
    op: str
    phase: str | None = attrs.field(validator=attrs.validators.optional(one_of(*PHASES)))
    loc: str
    buffers: tuple[Buffer, ...] = attrs.field(converter=tuple)
    stages: tuple[Stage, ...] = attrs.field(converter=tuple)
    schedule: Schedule = Schedule()
    cost: KernelCost = KernelCost(0)

    def buffer(self, name: str) -> Buffer:
        for buffer in self.buffers:
            if buffer.name == name:
                return buffer
        raise KeyError(name)

    def with_role(self, role: str) -> list[Buffer]:
        return [b for b in self.buffers if b.role == role]

    def loop_nest(self, stage: Stage) -> tuple[int, ...]:
        """The extents of the loop nest a stage's tile sizes."""
        return stage.loop_nest(self.buffer(stage.out).shape)

    def work(self) -> int:
        """Element operations one run of the kernel performs."""
        buffers = {b.name: b for b in self.buffers}
        return sum(stage.work(buffers) for stage in self.stages)


