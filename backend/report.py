"""Summaries of a compiled program: for `rduflow pef info`, `rduflow compile --stats` and tests."""
from __future__ import annotations

from typing import Any

from backend.mapping import Budget, budget
from backend.pef.file import FORMAT_VERSION, PEF
from backend.pef.schema import encode
from backend.pef.targets import ONCHIP


def offchip_traffic(pef: PEF) -> dict[str, int]:
    """Modeled off-chip bytes over all sections: read, written, total."""
    read = sum(sum(s.offchip_read.values()) for s in pef.sections)
    written = sum(sum(s.offchip_written.values()) for s in pef.sections)
    return {"read": read, "written": written, "total": read + written}


def _budget(pef: PEF) -> Budget:
    """The PCUs and PMUs the program was compiled for (its chips and tiles of its target)."""
    return budget(pef.header.target, pef.header.n_chips, pef.header.num_tiles)


def info(pef: PEF, file_bytes: int) -> dict[str, Any]:
    """Header, symbols, sections with resources and traffic, and sizes, as plain data."""
    header, target = pef.header, pef.header.target
    limit = _budget(pef)
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": header.tool_version,
        "target": {"name": target.name, "description": target.description, "n_chips": header.n_chips,
                   "num_tiles": header.num_tiles, "pcus": limit.pcus, "pmus": limit.pmus},
        "mode": header.mode,
        "source_sha256": header.source_sha256,
        "options": [encode(o) for o in header.options],
        "symbols": encode(pef.symbols),
        "sections": [{"index": s.index, "phase": s.phase, "kernels": len(s.kernels), "pcus": s.pcus, "pmus": s.pmus,
                      "offchip_read": s.offchip_read, "offchip_written": s.offchip_written} for s in pef.sections],
        "sizes": {"file": file_bytes, "kernels": len(pef.kernels),
                  "param_bytes": sum(p.nbytes for p in pef.symbols.params),
                  "arenas": {a.name: a.size for a in pef.memory.arenas}},
        "offchip_traffic": offchip_traffic(pef),
        "entries": [{"name": e.name, "inputs": encode(e.symbols.inputs), "outputs": encode(e.symbols.outputs),
                     "kernels": len(e.kernels), "sections": len(e.sections),
                     "arenas": {a.name: a.size for a in e.memory.arenas}} for e in pef.entries],
    }


def stats_text(pef: PEF) -> str:
    """Resources, sections, traffic and memory, one sentence a line (the backend part of `compile --stats`)."""
    header, target = pef.header, pef.header.target
    limit = _budget(pef)
    phases: dict[str, int] = {}
    for s in pef.sections:
        phases[s.phase or "-"] = phases.get(s.phase or "-", 0) + 1
    traffic = offchip_traffic(pef)
    lines = [
        f"target {target.name}: {header.n_chips} chip(s) x {header.num_tiles} tile(s) = "
        f"{limit.pcus} PCUs and {limit.pmus} PMUs available",
        f"kernels: {len(pef.kernels)} in {len(pef.sections)} sections ("
        + ", ".join(f"{k} {v}" for k, v in phases.items()) + "), which run one after another; "
        f"a section uses at most {max((s.pcus for s in pef.sections), default=0)} PCUs and "
        f"{max((s.pmus for s in pef.sections), default=0)} PMUs",
        f"modeled off-chip traffic: {traffic['total']:,} bytes per step (read {traffic['read']:,}, "
        f"written {traffic['written']:,})",
        "memory the PEF reserves: " + "; ".join(_arena_text(pef, a.name, a.size) for a in pef.memory.arenas),
    ]
    return "\n".join(lines)


def _arena_text(pef: PEF, arena: str, size: int) -> str:
    """An arena's size; on chip, split into graph tensors and kernel temporaries (placed after them)."""
    if arena != ONCHIP:
        return f"{arena} {size:,} bytes (params, optimizer state, inputs, outputs and tensors passed between sections)"
    temps = [a.offset for a in pef.memory.allocations if a.arena == ONCHIP and "/" in a.tensor]
    graph = min(temps, default=size)
    return (f"on chip {size:,} bytes = {graph:,} of graph tensors used within one section + {size - graph:,} of "
            "kernel temporaries")
