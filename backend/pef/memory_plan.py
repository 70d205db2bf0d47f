"""The memory plan's records: one arena per memory tier, one byte range per tensor.

`lifetimes` and `overlapping` let a reader check a plan that shares ranges between
tensors never live at once (the PEF reader does, before trusting one).
"""
from __future__ import annotations

import attrs

from backend.pef.program import KernelProgram

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
