"""The optimization part of `rduflow compile --stats`: fusion, tiles and the memory plan, per section.

Everything is read back from the optimized graph — fused regions, `tile` attributes,
`Value.mem` placements — so the report describes exactly what the backend compiled.
Sections come from the PEF (`(phase, kernel indices)`; a kernel is a top-level op).
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from backend.pef.targets import Target
from compiler.passes.fuse import is_generator, op_traffic
from compiler.passes.plan_memory import Buffer, memory_report, planned_buffers
from compiler.passes.tile import Problem, default_tile, score
from ir.graph import Graph, Op


@attrs.frozen
class KernelStats:
    """What fusion and tiling made of a run of kernels."""

    kernels: int = 0
    fused: int = 0
    ops: int = 0
    onchip_bytes: int = 0
    unfused_traffic: int = 0
    traffic: int = 0
    tiled: int = 0
    tile_traffic: int = 0
    tile_bound: int = 0
    tile_default: int = 0

    def __add__(self, other: KernelStats) -> KernelStats:
        return KernelStats(*(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other))))


def kernel_stats(op: Op, target: Target) -> KernelStats:
    """One kernel: its ops, intermediates kept on chip, traffic with and without fusion, tiles."""
    inner = [o for o in (op.region.ops if op.region is not None else [op]) if not is_generator(o)] or [op]
    yielded = set(op.region.results) if op.region is not None else set()
    onchip = sum(v.type.nbytes for o in inner for v in o.results if op.region is not None and v not in yielded)
    stats = KernelStats(1, int(op.region is not None), len(inner), onchip, sum(op_traffic(o) for o in inner), op_traffic(op))
    for o in inner:
        if o.attrs.get("tile"):
            problem = Problem.of(o)
            stats += KernelStats(tiled=1, tile_traffic=score(problem, o.attrs["tile"], target).traffic,
                                 tile_bound=problem.lower_bound(),
                                 tile_default=score(problem, default_tile(problem.nest, target.pcu.lanes), target).traffic)
    return stats


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}x" if b else "-"


def optimization_report(graph: Graph, target: Target, sections: Sequence[tuple[str | None, Sequence[int]]] = ()) -> str:
    """Lines for `--stats`: totals of fusion, tiles and the memory plan, then one row per section."""
    per_kernel = [kernel_stats(op, target) for op in graph.ops]
    total = sum(per_kernel, KernelStats())
    lines = [
        f"fusion: {total.ops} ops in {total.kernels} kernels ({total.fused} fused); inside fused kernels "
        f"{total.onchip_bytes:,} bytes of intermediate values (summed over kernels) pass on chip, never through "
        f"memory; modeled kernel traffic {total.traffic:,} bytes, {_ratio(total.unfused_traffic, total.traffic)} "
        f"less than the {total.unfused_traffic:,} bytes of one op per kernel",
        _tiles_text(total),
    ]
    buffers = _buffers(graph)
    if buffers is None:
        lines.append("memory plan: none in the IR (the backend placed every tensor)")
    else:
        lines.append("memory plan of the graph's tensors (ranges shared by tensors never live at once): " + "; ".join(
            f"{r.tier} arena {r.arena:,} bytes = {r.ratio:.3f}x the peak-live bound {r.lower_bound:,} (the most "
            f"bytes live at once; without reuse {r.no_reuse:,})" for r in memory_report(graph)))
    if sections:
        lines += _section_table(per_kernel, sections, buffers)
    return "\n".join(lines)


def _tiles_text(total: KernelStats) -> str:
    if not total.tiled:
        return "tiles: no op is tiled (the tile pass runs at -O3)"
    return (f"tiles: {total.tiled} ops tiled; modeled traffic {total.tile_traffic:,} bytes = "
            f"{_ratio(total.tile_traffic, total.tile_bound)} the lower bound {total.tile_bound:,} of any tiling "
            f"(default tiles: {total.tile_default:,} bytes, {_ratio(total.tile_default, total.tile_bound)})")


def _buffers(graph: Graph) -> list[Buffer] | None:
    try:
        return planned_buffers(graph)
    except ValueError:
        return None


def _section_table(per_kernel: list[KernelStats], sections, buffers: list[Buffer] | None) -> list[str]:
    tiers = sorted({b.tier for b in buffers or []})
    legend = ("per section: kernels, fused kernels, ops, bytes of intermediates kept on chip, tiled traffic over "
              "its lower bound" + (", and the most bytes of each tier live at once" if tiers else ""))
    head = f"{'section':>7} {'phase':<8} {'kernels':>7} {'fused':>5} {'ops':>5} {'on-chip bytes':>13} " \
           f"{'tile traffic/bound':>18}" + "".join(f" {'live ' + t:>14}" for t in tiers)
    rows = [legend, head]
    for index, (phase, kernels) in enumerate(sections):
        s = sum((per_kernel[k] for k in kernels), KernelStats())
        live = [_peak_live(buffers, t, min(kernels), max(kernels)) for t in tiers]
        rows.append(f"{index:>7} {phase or '-':<8} {s.kernels:>7} {s.fused:>5} {s.ops:>5} {s.onchip_bytes:>13,} "
                    f"{_ratio(s.tile_traffic, s.tile_bound):>18}" + "".join(f" {v:>14,}" for v in live))
    return rows


def _peak_live(buffers: list[Buffer], tier: str, first: int, last: int) -> int:
    """The most bytes of `tier` live at once while kernels first..last run."""
    live = np.zeros(last - first + 1, dtype=np.int64)
    for b in buffers:
        if b.tier == tier and b.start <= last and b.end >= first:
            live[max(b.start, first) - first:min(b.end, last) - first + 1] += b.size
    return int(live.max(initial=0))
