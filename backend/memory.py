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
here, after it. The plan's records are the PEF's (`backend.pef.memory_plan`).
"""
from __future__ import annotations

import attrs

from backend.pef.memory_plan import ALIGN, Allocation, Arena, MemoryPlan, temp_symbol
from backend.pef.program import KernelCost, KernelProgram
from backend.pef.targets import ONCHIP, Target
from ir.errors import BackendError


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
    """A bound program whose stages take the form their placement allows (a stage writing over its
    operand's own range works in place), with the bytes they no longer move."""
    buffers = {b.name: b for b in program.buffers}
    stages, read, written = [], dict(program.cost.bytes_read), dict(program.cost.bytes_written)
    for stage in program.stages:
        stage, less_read, less_written = stage.placed(buffers)
        for tier, nbytes in less_read.items():
            read[tier] -= nbytes
        for tier, nbytes in less_written.items():
            written[tier] -= nbytes
        stages.append(stage)
    return attrs.evolve(program, stages=tuple(stages), cost=KernelCost(program.cost.flops, read, written))
