"""The memory plan: one arena per memory tier, one byte offset per tensor.

A tensor lives off-chip when it must outlive its section: graph inputs,
params and optimizer state, outputs and param updates, and values used by a
later section. The others — values produced and used within one section, and
kernel temporaries — live on-chip. Off-chip tensors go to the target's fastest
tier with room (HBM before DDR). This plan gives every tensor its own
64-byte-aligned range (no reuse), which is simple and always correct.

When the graph carries the `plan-memory` pass's plan (`Value.mem` on every
input, param and top-level result; `mem(ddr:4096)` in IR text) and it fits the
target, graph tensors keep the tier and offset it gives — ranges shared by
tensors that are never live at once — and only kernel temporaries are placed
here, after it.
`lifetimes` and `overlapping` let a reader check such a plan.
"""
from __future__ import annotations

import math

import attrs

from backend.kernel_program import KernelCost, KernelProgram, UpdateSliceStage
from backend.targets import ONCHIP, Target
from ir.dtypes import DType
from ir.errors import BackendError

ALIGN = 64


@attrs.frozen
class Arena:
    """One memory tier's region: the on-chip scratchpads or an off-chip tier."""

    name: str
    size: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class Allocation:
    """A tensor's byte range in an arena."""

    tensor: str
    arena: str
    offset: int = attrs.field(validator=attrs.validators.ge(0))
    nbytes: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class MemoryPlan:
    arenas: tuple[Arena, ...] = attrs.field(converter=tuple)
    allocations: tuple[Allocation, ...] = attrs.field(converter=tuple)

    def lookup(self) -> dict[str, Allocation]:
        return {a.tensor: a for a in self.allocations}


def temp_symbol(program: KernelProgram, buffer: str) -> str:
    """The plan's name of a kernel temporary."""
    return f"{program.name}/{buffer}"


def offchip_tensors(programs: list[KernelProgram], section_of: list[int], persistent: set[str]) -> set[str]:
    """Tensors that must live off-chip: `persistent` ones and those crossing sections."""
    producer = {b.name: i for i, p in enumerate(programs) for b in p.with_role("output")}
    crossing = set(persistent)
    for i, program in enumerate(programs):
        for buffer in program.with_role("input"):
            source = producer.get(buffer.name)
            if source is None or section_of[source] != section_of[i]:
                crossing.add(buffer.name)
    return crossing


def plan_memory(programs: list[KernelProgram], tensors: list[tuple[str, int]], offchip: set[str],
                target: Target, chips: int, placed: dict[str, tuple[str, int]] | None = None) -> MemoryPlan:
    """Allocate `tensors` ((symbol, nbytes), in order) and every kernel temporary; a tensor in
    `placed` (symbol -> (tier, offset), the IR's plan) keeps its place."""
    used = {tier.name: 0 for tier in target.offchip} | {ONCHIP: 0}
    allocations = []

    def place(symbol: str, nbytes: int, arena: str) -> None:
        offset = -(-used[arena] // ALIGN) * ALIGN
        allocations.append(Allocation(symbol, arena, offset, nbytes))
        used[arena] = offset + nbytes

    def keep(symbol: str, nbytes: int, arena: str, offset: int) -> None:
        allocations.append(Allocation(symbol, arena, offset, nbytes))
        used[arena] = max(used[arena], offset + nbytes)

    for symbol, nbytes in tensors:
        if placed and symbol in placed:
            keep(symbol, nbytes, *placed[symbol])
            continue
        place(symbol, nbytes, _tier_with_room(symbol, nbytes, used, target, chips) if symbol in offchip else ONCHIP)
    for program in programs:
        for buffer in program.with_role("temp"):
            place(temp_symbol(program, buffer.name), buffer.nbytes, ONCHIP)
    arenas = [Arena(name, -(-size // ALIGN) * ALIGN) for name, size in used.items() if size or name == ONCHIP]
    return MemoryPlan(tuple(arenas), tuple(allocations))


def lifetimes(programs: list[KernelProgram], kept: set[str], whole: set[str] = frozenset()) -> dict[str, tuple[int, int]]:
    """When each tensor's range is in use, in half steps: kernel k reads at 2k and writes at
    2k + 1, so a result may take the range of an input its kernel reads last (the plan-memory
    pass does that for elementwise kernels only). Tensors no kernel writes (inputs, params)
    start at 0; `kept` ones last to the end; `whole` ones (an update the runtime swaps with its
    param) hold their range all run; a temporary lives in its kernel. A tensor no kernel
    touches is absent: it holds its range for the whole run."""
    live: dict[str, list[int]] = {}
    for k, program in enumerate(programs):
        for buffer in program.buffers:
            if buffer.role == "temp":
                live[temp_symbol(program, buffer.name)] = [2 * k, 2 * k + 1]
            elif buffer.role == "output":
                live.setdefault(buffer.name, [2 * k + 1, 2 * k + 1])
            else:
                span = live.setdefault(buffer.name, [0, 0])
                span[1] = max(span[1], 2 * k)
    for name in kept:
        live.setdefault(name, [0, 0])[1] = 2 * len(programs) + 1
    for name in whole:
        live[name] = [0, 2 * len(programs) + 1]
    return {name: (a, b) for name, (a, b) in live.items()}


def overlapping(allocations: tuple[Allocation, ...], live: dict[str, tuple[int, int]]) -> tuple[Allocation, Allocation] | None:
    """Two allocations sharing bytes of an arena while both are live (see `lifetimes`), if any."""
    whole = (0, 1 << 62)
    arenas: dict[str, list[Allocation]] = {}
    for a in allocations:
        if a.nbytes:
            arenas.setdefault(a.arena, []).append(a)
    for ranked in arenas.values():
        ranked.sort(key=lambda a: (a.offset, a.nbytes, a.tensor))
        for i, a in enumerate(ranked):
            (a0, a1) = live.get(a.tensor, whole)
            for b in ranked[i + 1:]:
                if b.offset >= a.offset + a.nbytes:
                    break
                (b0, b1) = live.get(b.tensor, whole)
                if a0 <= b1 and b0 <= a1:
                    return a, b
    return None


def _tier_with_room(symbol: str, nbytes: int, used: dict[str, int], target: Target, chips: int) -> str:
    for tier in target.offchip:
        if used[tier.name] + nbytes + ALIGN <= tier.capacity * chips:
            return tier.name
    total = sum(t.capacity for t in target.offchip) * chips
    raise BackendError(f"tensor '{symbol}' ({nbytes} bytes) does not fit in off-chip memory: "
                       f"{sum(used.values())} bytes are placed of {total} on {chips} chip(s) of '{target.name}'")


def bind(program: KernelProgram, plan: dict[str, Allocation]) -> KernelProgram:
    """The program with every buffer's tier and offset from the plan, and its bytes per tier."""
    buffers = []
    for buffer in program.buffers:
        symbol = temp_symbol(program, buffer.name) if buffer.role == "temp" else buffer.name
        where = plan[symbol]
        buffers.append(attrs.evolve(buffer, tier=where.arena, offset=where.offset))
    read: dict[str, int] = {}
    written: dict[str, int] = {}
    for buffer in buffers:
        table = read if buffer.role == "input" else written
        table[buffer.tier] = table.get(buffer.tier, 0) + buffer.nbytes
        if buffer.role == "temp":
            read[buffer.tier] = read.get(buffer.tier, 0) + buffer.nbytes
    cost = KernelCost(program.cost.flops, dict(sorted(read.items())), dict(sorted(written.items())))
    return attrs.evolve(program, buffers=tuple(buffers), cost=cost)


def mark_in_place(program: KernelProgram) -> KernelProgram:
    """A bound program whose `update_slice` stages write over their operand's own range marked
    `in_place` (they then write only the update's rows), with the bytes they no longer move."""
    stages, read, written = [], dict(program.cost.bytes_read), dict(program.cost.bytes_written)
    for stage in program.stages:
        if isinstance(stage, UpdateSliceStage) and not stage.in_place:
            out, operand = program.buffer(stage.out), program.buffer(stage.operand.buffer)
            if (out.tier, out.offset) == (operand.tier, operand.offset) and not stage.operand.offset \
                    and tuple(stage.operand.strides) == out.strides:
                stage = attrs.evolve(stage, in_place=True)
                update = math.prod(stage.update_shape) * DType(out.dtype).itemsize
                read[operand.tier] -= operand.nbytes
                written[out.tier] -= out.nbytes - update
        stages.append(stage)
    return attrs.evolve(program, stages=tuple(stages), cost=KernelCost(program.cost.flops, read, written))

