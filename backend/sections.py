"""Sectioning: kernels grouped into sections that run one after another on the chip.

A section is a run of consecutive kernels configured onto the chip together and
run as a pipeline; between sections the chip is reconfigured, so a tensor
produced in one section and used in another lives off-chip. At -O0 each kernel
is a section (SambaFlow's o0); otherwise consecutive kernels are packed while
their minimum PCUs and PMUs fit the budget, never mixing training phases.
"""
from __future__ import annotations

import attrs

from backend.mapping import Budget, Needs, balance
from backend.pef.program import KernelProgram


@attrs.frozen
class Group:
    """A section being formed: its kernels' indices and phase."""

    phase: str | None
    kernels: tuple[int, ...]
    pcus: tuple[int, ...]
    pmus: int


def group(programs: list[KernelProgram], needs: list[Needs], limit: Budget, pack: bool) -> list[Group]:
    """Kernels in sections: one each, or packed greedily in order."""
    groups: list[list[int]] = []
    for i, (program, need) in enumerate(zip(programs, needs)):
        current = groups[-1] if groups else None
        if pack and current is not None and programs[current[0]].phase == program.phase \
                and sum(needs[j].pcus for j in current) + need.pcus <= limit.pcus \
                and sum(needs[j].pmus for j in current) + need.pmus <= limit.pmus:
            current.append(i)
        else:
            groups.append([i])
    out = []
    for members in groups:
        pcus = balance([needs[i] for i in members], limit.pcus)
        out.append(Group(programs[members[0]].phase, tuple(members), tuple(pcus),
                         sum(needs[i].pmus for i in members)))
    return out
