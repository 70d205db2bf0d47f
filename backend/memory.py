"""The graph's memory plan as the backend takes it, kernel temporaries, and binding buffers.

The `plan-memory` pass plans the graph's tensors (graph inputs, params and the
results of top-level ops): one arena per memory tier, an offset for each, ranges
shared by tensors never live at once, written into the IR as `Value.mem`
(`mem(ddr:4096)` in IR text). The backend keeps every graph tensor where that
plan puts it; a graph without a plan, or with one that does not fit the target
(made for another target, or gone stale under a later pass), is refused
(`check_planned`: the compiler runs the pass for the target first). Kernel
temporaries live on chip, each its own 64-byte-aligned range after the graph's
on-chip tensors. The plan's records are the PEF's (`backend.pef.memory_plan`).
"""
from __future__ import annotations

import attrs

from backend.pef.memory_plan import ALIGN, Allocation, Arena, MemoryPlan, temp_symbol
from backend.pef.program import KernelCost, KernelProgram
from backend.pef.targets import ONCHIP, Target
from ir.errors import BackendError
from ir.graph import Graph, Value


def plan_problem(graph: Graph, target: Target) -> str | None:
    """Why the graph's memory plan cannot be used on `target` (a tensor without a place, or
    placed beyond the target's tiers), or None if it can."""
    room = {t.name: t.capacity for t in target.offchip} | {ONCHIP: target.sram_bytes}
    planned = [*((f"param '{p.name}'", p.value) for p in graph.params),
               *((f"input '{v.name}'", v) for v in graph.inputs),
               *((f"the result of '{op.name}'", v) for op in graph.ops for v in op.results)]
    for what, value in planned:
        if value.mem is None:
            return f"{what} has no place in the memory plan"
        tier, end = value.mem.tier, value.mem.offset + value.type.nbytes
        if tier not in room:
            return f"{what} is planned in '{tier}', a memory tier target '{target.name}' does not have"
        if end > room[tier]:
            return f"{what} is planned up to byte {end} of '{tier}', which has {room[tier]} on target '{target.name}'"
    return None


def check_planned(graph: Graph, target: Target) -> None:
    """BackendError unless the graph carries a memory plan that fits `target` (see `plan_problem`)."""
    problem = plan_problem(graph, target)
    if problem is not None:
        raise BackendError(f"{problem}: run the 'plan-memory' pass for target '{target.name}' before the backend")


def memory_plan(programs: list[KernelProgram], tensors: list[tuple[str, int]], names: dict[Value, str],
                target: Target) -> MemoryPlan:
    """The PEF's plan: `tensors` ((symbol, nbytes), in order) where the graph's plan puts them
    (`names`: each value's symbol), then every kernel temporary on chip after them."""
    where = {names[value]: (value.mem.tier, value.mem.offset) for value in names if value.mem is not None}
    used = {tier.name: 0 for tier in target.offchip} | {ONCHIP: 0}
    allocations = []
    for symbol, nbytes in tensors:
        tier, offset = where[symbol]
        allocations.append(Allocation(symbol, tier, offset, nbytes))
        used[tier] = max(used[tier], offset + nbytes)
    for program in programs:
        for buffer in program.with_role("temp"):
            offset = _aligned(used[ONCHIP])
            allocations.append(Allocation(temp_symbol(program, buffer.name), ONCHIP, offset, buffer.nbytes))
            used[ONCHIP] = offset + buffer.nbytes
    arenas = [Arena(name, _aligned(size)) for name, size in used.items() if size or name == ONCHIP]
    return MemoryPlan(tuple(arenas), tuple(allocations))


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


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
