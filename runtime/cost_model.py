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

Data parallel: an `all_reduce` kernel moves its tensor over the target's links
(`Target.links`) as a ring all-reduce: 2 (n - 1) steps, each sending 1/n of the
tensor to the next replica, every step paying the link's latency and the slowest
link on the ring bounding its bandwidth (RDU-to-RDU inside a node; the node's
network port once the ring spans nodes). With `--reduce-on-rdu` that is the
whole story; otherwise (host reduction, SambaFlow's default) the gradient also
crosses each RDU's host link twice (down, then the sum back up) and the ring runs
between the hosts, one per node. `scaling` models a step on 1, 8, 64 replicas.
"""
from __future__ import annotations

import math
from typing import Literal

import attrs

from backend.pef.file import PEF, Section
from backend.pef.program import KernelProgram
from backend.pef.targets import ONCHIP, Target

#: seconds to load a section's configuration onto the chip (modeling assumption)
SECTION_LOAD_S = 2e-6

Bound = Literal["compute", "onchip", "offchip", "link"]


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
    #: a collective's time on the links between replicas
    link_s: float = 0.0

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.onchip_s, self.offchip_s, self.link_s)

    @property
    def bound(self) -> Bound:
        times = {"compute": self.compute_s, "onchip": self.onchip_s, "offchip": self.offchip_s, "link": self.link_s}
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

    @property
    def allreduce_s(self) -> float:
        """Modeled seconds of the gradient all-reduce sections (data parallel)."""
        return sum(s.time_s for s in self.sections if s.phase == "allreduce")


def _dtype(program: KernelProgram) -> str:
    outputs = program.with_role("output") or list(program.buffers)
    return outputs[0].dtype if outputs else "f32"


def _rate(target: Target, dtype: str) -> float:
    table = target.pcu.flops_per_cycle
    return table.get(dtype, min(table.values()))


def _tiles(program: KernelProgram) -> int:
    """Tiles of the kernel's largest loop nest: how many steps its pipeline stage takes."""
    counts = [1]
    for stage, tile in zip(program.stages, program.schedule.tiles):
        nest = program.loop_nest(stage)
        if len(tile) == len(nest):
            counts.append(math.prod(math.ceil(d / max(t, 1)) for d, t in zip(nest, tile)))
    return max(counts)


def estimate_kernel(index: int, program: KernelProgram, section: int, target: Target,
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
    links = sum(k.link_s for k in members)  # collectives share the links: one after another
    slowest = max(members, key=lambda k: max(k.compute_s, k.onchip_s))
    stage = max(slowest.compute_s, slowest.onchip_s)
    bound = "link" if links > stage else "compute" if slowest.compute_s >= slowest.onchip_s else "onchip"
    return SectionEstimate(
        section.index, section.phase, tuple(section.kernels), section.pcus, section.pmus,
        max(stage, links), traffic, _offchip_seconds(traffic, target, chips),
        sum(k.fill_s for k in members), SECTION_LOAD_S, bound)


def estimate(pef: PEF, target: Target | None = None) -> CostReport:
    """The modeled cost of `pef` on its own target, or re-modeled on `target`."""
    target = target or pef.header.target
    chips = min(pef.header.n_chips, target.chips_per_node)
    budget_pcus = chips * target.pcus
    budget_pmus = chips * target.pmus
    section_of = {k: s.index for s in pef.sections for k in s.kernels}
    on_rdu = bool(_option(pef, "training.reduce_on_rdu"))
    kernels = [_with_links(estimate_kernel(i, p, section_of[i], target, chips, budget_pcus, budget_pmus), p, target,
                           on_rdu) for i, p in enumerate(pef.kernels)]
    sections = tuple(estimate_section(s, kernels, target, chips) for s in pef.sections)
    dtype = _dtype(pef.kernels[0]) if pef.kernels else "f32"
    peak = target.peak_flops(dtype) * chips
    return CostReport(target.name, chips, tuple(kernels), sections, peak)


# --- data parallel -------------------------------------------------------------------------
def _option(pef: PEF, name: str):
    return next((o.value for o in pef.header.options if o.name == name), None)


def _with_links(estimate: KernelEstimate, program: KernelProgram, target: Target, on_rdu: bool) -> KernelEstimate:
    """A collective kernel's estimate with its time on the links."""
    stages = [s for s in program.stages if s.on_host]
    if not stages:
        return estimate
    seconds = sum(all_reduce_seconds(program.buffer(s.out).nbytes, s.world_size, target, on_rdu) for s in stages)
    return attrs.evolve(estimate, link_s=seconds)


def ring_seconds(nbytes: int, replicas: int, link_bandwidth: float, latency: float) -> float:
    """A ring all-reduce of `nbytes` over `replicas`: 2 (n - 1) steps of n-th parts."""
    if replicas <= 1:
        return 0.0
    return 2 * (replicas - 1) * (latency + nbytes / replicas / link_bandwidth)


def all_reduce_seconds(nbytes: int, replicas: int, target: Target, on_rdu: bool) -> float:
    """Modeled time to all-reduce `nbytes` over `replicas` chips of `target`, filling nodes first."""
    if replicas <= 1:
        return 0.0
    links = target.links
    nodes = math.ceil(replicas / target.chips_per_node)
    if on_rdu:
        slowest = links.rdu if nodes == 1 else min(links.rdu, links.node, key=lambda link: link.bandwidth)
        latency = links.rdu.latency if nodes == 1 else max(links.rdu.latency, links.node.latency)
        return ring_seconds(nbytes, replicas, slowest.bandwidth, latency)
    host = 2 * (links.host.latency + nbytes / links.host.bandwidth)
    return host + ring_seconds(nbytes, nodes, links.node.bandwidth, links.node.latency)


@attrs.frozen
class ScalingPoint:
    """A modeled training step on `replicas` chips (each with the PEF's batch)."""

    replicas: int
    step_s: float
    allreduce_s: float

    @property
    def share(self) -> float:
        """The all-reduce's part of the step."""
        return self.allreduce_s / self.step_s if self.step_s else 0.0

    def speedup(self, single: ScalingPoint) -> float:
        """Samples per second over one chip's."""
        return self.replicas * single.step_s / self.step_s if self.step_s else 0.0


def scaling(pef: PEF, target: Target | None = None, counts: tuple[int, ...] = (1, 8, 64),
            on_rdu: bool | None = None) -> list[ScalingPoint]:
    """A training step on each count of replicas: the PEF's step without its collectives, plus the
    all-reduce of every trained param's gradient (as the data-parallel graph has it: one f32 buffer)."""
    target = target or pef.header.target
    on_rdu = bool(_option(pef, "training.reduce_on_rdu")) if on_rdu is None else on_rdu
    report = estimate(pef, target)
    local = report.time_s - sum(k.link_s for k in report.kernels)
    nbytes = sum(4 * math.prod(p.shape) for p in pef.symbols.params if p.role == "param" and p.dtype in FLOATS)
    points = []
    for n in counts:
        reduce = all_reduce_seconds(nbytes, n, target, on_rdu)
        points.append(ScalingPoint(n, local + reduce, reduce))
    return points


def scaling_lines(pef: PEF, target: Target | None = None, counts: tuple[int, ...] = (1, 8, 64)) -> list[str]:
    """The modeled scaling as text lines (for `compile --stats` and `run --profile`)."""
    target = target or pef.header.target
    on_rdu = bool(_option(pef, "training.reduce_on_rdu"))
    points = scaling(pef, target, counts, on_rdu)
    where = "on the RDUs (--reduce-on-rdu)" if on_rdu else "through the hosts"
    lines = [f"Data-parallel scaling on {target.name} (modeled; gradients all-reduced {where}, "
             f"{target.chips_per_node} RDUs per node):"]
    for p in points:
        lines.append(f"  {p.replicas:>4} RDUs: step {p.step_s * 1e3:10.3f} ms, all-reduce {p.allreduce_s * 1e3:10.3f} ms "
                     f"({p.share:6.1%}), {p.speedup(points[0]):8.2f}x samples/s of 1 RDU")
    return lines


#: float dtypes whose gradients are all-reduced
FLOATS = frozenset({"f32", "bf16", "f16"})
