"""What a PEF would cost on the target RDU, from the target's public figures.

Per kernel (its PCUs and PMUs from the mapping, its flops and bytes per tier
from its cost record):

* compute: flops / (PCUs x FLOP/cycle of the kernel's element type x clock);
* on-chip: every byte the kernel reads or writes streams through its PMUs:
  bytes / (PMUs x PMU bandwidth x clock);
* off-chip: bytes of each off-chip tier / (tier bandwidth x chips).

A kernel alone takes the largest of the three (a roofline: the units overlap).
Per section, the kernels run at once as one pipeline, so the slowest stage
bounds its throughput: steady time = max(slowest kernel's compute and on-chip
time, the section's off-chip traffic over the shared bandwidth); the pipeline
also fills and drains (each kernel's time for one tile of its loop nest), and
the chip is reconfigured between sections (`SECTION_LOAD_S`, an assumption:
RDUs switch configurations in microseconds). The program's time is the sum of
its sections'.
"""
from __future__ import annotations

import math
from typing import Literal

import attrs

from backend import kernel_program as kp
from backend.pef import PEF, Section
from backend.targets import ONCHIP, Target

#: seconds to load a section's configuration onto the chip (modeling assumption)
SECTION_LOAD_S = 2e-6

Bound = Literal["compute", "onchip", "offchip"]


@attrs.frozen
class KernelEstimate:
    """One kernel's modeled time and what bounds it."""

    index: int
    name: str
    op: str
    section: int
    phase: str | None
    pcus: int
    pmus: int
    flops: int
    compute_s: float
    onchip_bytes: int
    onchip_s: float
    offchip_bytes: dict[str, int]
    offchip_s: float
    fill_s: float

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.onchip_s, self.offchip_s)

    @property
    def bound(self) -> Bound:
        times = {"compute": self.compute_s, "onchip": self.onchip_s, "offchip": self.offchip_s}
        return max(times, key=times.get)


@attrs.frozen
class SectionEstimate:
    """One section's modeled time: its pipeline's steady state, fill and configuration load."""

    index: int
    phase: str | None
    kernels: tuple[int, ...]
    pcus: int
    pmus: int
    stage_s: float
    offchip_bytes: dict[str, int]
    offchip_s: float
    fill_s: float
    load_s: float

    @property
    def time_s(self) -> float:
        return max(self.stage_s, self.offchip_s) + self.fill_s + self.load_s

    bottleneck: Bound = "compute"

    @property
    def bound(self) -> str:
        """The largest contribution: the slowest kernel's bound, off-chip traffic, fill, or configuration."""
        parts = {self.bottleneck: self.stage_s, "offchip": self.offchip_s, "fill": self.fill_s, "config": self.load_s}
        return max(parts, key=parts.get)


@attrs.frozen
class CostReport:
    """The modeled program: per kernel, per section, totals."""

    target: str
    chips: int
    kernels: tuple[KernelEstimate, ...]
    sections: tuple[SectionEstimate, ...]
    peak_flops: float

    @property
    def time_s(self) -> float:
        return sum(s.time_s for s in self.sections)

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def utilization(self) -> float:
        """Achieved over peak compute of the chips used, for the modeled time."""
        return self.flops / (self.peak_flops * self.time_s) if self.time_s else 0.0

    def by_phase(self) -> dict[str, float]:
        """Modeled seconds per training phase (`-` for untagged sections)."""
        out: dict[str, float] = {}
        for s in self.sections:
            out[s.phase or "-"] = out.get(s.phase or "-", 0.0) + s.time_s
        return out


def _dtype(program: kp.KernelProgram) -> str:
    outputs = program.with_role("output") or list(program.buffers)
    return outputs[0].dtype if outputs else "f32"


def _rate(target: Target, dtype: str) -> float:
    table = target.pcu.flops_per_cycle
    return table.get(dtype, min(table.values()))


def _tiles(program: kp.KernelProgram) -> int:
    """Tiles of the kernel's largest loop nest: how many steps its pipeline stage takes."""
    counts = [1]
    for stage, tile in zip(program.stages, program.schedule.tiles):
        nest = kp.loop_nest(program, stage)
        if len(tile) == len(nest):
            counts.append(math.prod(math.ceil(d / max(t, 1)) for d, t in zip(nest, tile)))
    return max(counts)


def estimate_kernel(index: int, program: kp.KernelProgram, section: int, target: Target,
                    chips: int, budget_pcus: int, budget_pmus: int) -> KernelEstimate:
    pcus = min(max(program.schedule.pcus, 1), budget_pcus)
    pmus = min(max(program.schedule.pmus, 1), budget_pmus)
    clock = target.clock_hz
    cost = program.cost
    flops = cost.flops
    compute = flops / (pcus * _rate(target, _dtype(program)) * clock)
    onchip_bytes = sum(cost.bytes_read.values()) + sum(cost.bytes_written.values())
    onchip = onchip_bytes / (pmus * target.pmu.bandwidth * clock)
    offchip_bytes = {}
    for table in (cost.bytes_read, cost.bytes_written):
        for tier, n in table.items():
            if tier != ONCHIP:
                offchip_bytes[tier] = offchip_bytes.get(tier, 0) + n
    offchip = _offchip_seconds(offchip_bytes, target, chips)
    fill = max(compute, onchip) / _tiles(program)
    return KernelEstimate(index, program.name, program.op, section, program.phase, pcus, pmus, flops, compute,
                          onchip_bytes, onchip, offchip_bytes, offchip, fill)


def _offchip_seconds(traffic: dict[str, int], target: Target, chips: int) -> float:
    """Transfers of different tiers overlap; each tier's bytes share its bandwidth."""
    times = [n / (_tier_bandwidth(target, tier) * chips) for tier, n in traffic.items()]
    return max(times, default=0.0)


def _tier_bandwidth(target: Target, tier: str) -> float:
    try:
        return target.tier(tier).bandwidth
    except KeyError:  # re-modeled on a target without this tier: its slowest one stands in
        return min(t.bandwidth for t in target.offchip)


def estimate_section(section: Section, kernels: list[KernelEstimate], target: Target, chips: int) -> SectionEstimate:
    members = [kernels[i] for i in section.kernels]
    traffic: dict[str, int] = {}
    for table in (section.offchip_read, section.offchip_written):
        for tier, n in table.items():
            traffic[tier] = traffic.get(tier, 0) + n
    slowest = max(members, key=lambda k: max(k.compute_s, k.onchip_s))
    return SectionEstimate(
        section.index, section.phase, tuple(section.kernels), section.pcus, section.pmus,
        max(slowest.compute_s, slowest.onchip_s), traffic, _offchip_seconds(traffic, target, chips),
        sum(k.fill_s for k in members), SECTION_LOAD_S,
        "compute" if slowest.compute_s >= slowest.onchip_s else "onchip")


def estimate(pef: PEF, target: Target | None = None) -> CostReport:
    """The modeled cost of `pef` on its own target, or re-modeled on `target`."""
    target = target or pef.header.target
    chips = min(pef.header.n_chips, target.chips_per_node)
    budget_pcus = chips * target.pcus
    budget_pmus = chips * target.pmus
    section_of = {k: s.index for s in pef.sections for k in s.kernels}
    kernels = [estimate_kernel(i, p, section_of[i], target, chips, budget_pcus, budget_pmus)
               for i, p in enumerate(pef.kernels)]
    sections = tuple(estimate_section(s, kernels, target, chips) for s in pef.sections)
    dtype = _dtype(pef.kernels[0]) if pef.kernels else "f32"
    peak = target.peak_flops(dtype) * chips
    return CostReport(target.name, chips, tuple(kernels), sections, peak)
