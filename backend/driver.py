"""The backend stage of a compile: an optimized graph in, PEF bytes out.

    from backend.driver import BackendOptions, compile_program
    data = compile_program(graph, BackendOptions(load_target("sn40l"), pack=True))

Steps: lower each top-level op to a kernel program; give each its tiles and
resource needs; group kernels into sections (one each at -O0, packed
otherwise); take the graph's memory plan (the `plan-memory` pass's, which must
fit the target) and place kernel temporaries on chip after it; bind buffers to
the plan; record symbols, sections and traffic in the PEF.
"""
from __future__ import annotations

import hashlib
from typing import Any

import attrs

from backend.lowering import lower_graph, tensor_names
from backend.mapping import budget, check_fits, kernel_needs, schedule_tiles
from backend.memory import bind, check_planned, mark_in_place, memory_plan
from backend.pef.file import (
    CompileOption, Entry, Header, PEF, ParamSymbol, Section, Symbols, TensorSymbol, UpdateSymbol, check_entries)
from backend.pef.program import KernelProgram, Schedule
from backend.pef.targets import ONCHIP, Target, load_target
from backend.sections import Group, group
from ir.graph import Graph, Value
from ir.version import tool_version

#: compile options that do not change the program (everything else needs a recompile)
NO_RECOMPILE = frozenset({"output_folder", "pef_name", "stats", "debug", "dump_dir", "time_passes",
                          "pass_statistics", "no_verify", "verify_semantics", "emit", "print_ir_before",
                          "print_ir_after", "print_ir_after_all", "print_ir_after_change", "config"})


def compile_options(values: dict[str, object]) -> tuple[CompileOption, ...]:
    """Options to record in the header, sorted, each marked if changing it needs a recompile."""
    out = []
    for name in sorted(values):
        value = values[name]
        if not (value is None or isinstance(value, (bool, int, float, str))):
            value = str(value)
        out.append(CompileOption(name, value, name not in NO_RECOMPILE))
    return tuple(out)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys: {"model": {"n_layer": 2}} -> {"model.n_layer": 2}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@attrs.frozen
class BackendOptions:
    """What the backend needs beyond the graph."""

    target: Target
    n_chips: int = 1
    num_tiles: int | None = None
    #: pack kernels into sections (-O1/-O3); False gives one kernel per section (-O0)
    pack: bool = True
    mode: str = "train"
    options: tuple[CompileOption, ...] = ()
    source_sha256: str = ""
    tool_version: str = attrs.field(factory=tool_version)


def backend_stage(graph: Graph, *, target: str, n_chips: int = 1, num_tiles: int | None = None, pack: bool = True,
                  inference: bool = False, settings: dict[str, Any] | None = None, source: str = "",
                  entries: dict[str, Graph] | None = None) -> PEF:
    """The compile driver's backend stage: `settings` (config and flags) are recorded in the
    header, `source` (the model text) by its sha256; `entries` are further entry points (graphs
    with the same params as `graph`)."""
    recorded = flatten(dict(settings or {})) | {"target": target, "n_chips": n_chips, "num_tiles": num_tiles,
                                                  "inference": inference, "pack_sections": pack}
    recorded["model"] = graph.name  # names the model family, e.g. for Hugging Face checkpoint export
    options = BackendOptions(load_target(target), n_chips, num_tiles, pack, "inference" if inference else "train",
                             compile_options(recorded), hashlib.sha256(source.encode()).hexdigest())
    return with_entries(build_pef(graph, options), {name: build_pef(g, options) for name, g in (entries or {}).items()})


def with_entries(main: PEF, entries: dict[str, PEF]) -> PEF:
    """`main` with the programs of `entries` as its entry points (checked to share its params)."""
    pef = attrs.evolve(main, entries=tuple(Entry(name, p.symbols, p.sections, p.kernels, p.memory)
                                           for name, p in entries.items()))
    check_entries(pef)
    return pef


def compile_program(graph: Graph, options: BackendOptions) -> bytes:
    """The PEF bytes of a decomposed (and optionally fused) graph with a memory plan for the target."""
    return build_pef(graph, options).to_bytes()


def build_pef(graph: Graph, options: BackendOptions) -> PEF:
    """The PEF record of a graph (see `backend/pef/file.py`)."""
    target = options.target
    names = tensor_names(graph)
    kernels = [_scheduled(k, target) for k in lower_graph(graph, names)]
    check_planned(graph, target)
    limit = budget(target, options.n_chips, options.num_tiles)
    needs = [kernel_needs(k, target) for k in kernels]
    for kernel, need in zip(kernels, needs):
        check_fits(kernel, need, limit, target)
    groups = group(kernels, needs, limit, options.pack)
    for g in groups:
        for k, pcus in zip(g.kernels, g.pcus):
            kernels[k] = attrs.evolve(kernels[k], schedule=attrs.evolve(kernels[k].schedule, pcus=pcus, pmus=needs[k].pmus))
    symbols = _symbols(graph, names)
    tensors = [(s.tensor, s.nbytes) for s in (*symbols.params, *symbols.inputs)]
    tensors += [(b.name, b.nbytes) for k in kernels for b in k.with_role("output")]
    plan = memory_plan(kernels, tensors, names, target)
    where = plan.lookup()
    kernels = [mark_in_place(bind(k, where)) for k in kernels]
    header = Header(options.tool_version, target, options.mode, limit.chips, limit.tiles, options.options,
                    options.source_sha256)
    sections = [_section(i, g, kernels) for i, g in enumerate(groups)]
    return PEF(header, symbols, tuple(sections), tuple(kernels), plan)


def _scheduled(program: KernelProgram, target: Target) -> KernelProgram:
    return attrs.evolve(program, schedule=Schedule(schedule_tiles(program, target)))


def _symbols(graph: Graph, names: dict[Value, str]) -> Symbols:
    def tensor(name: str, value: Value) -> TensorSymbol:
        return TensorSymbol(name, names[value], value.type.shape, value.type.dtype.value)
    inputs = [tensor(v.name, v) for v in graph.inputs]
    outputs = [tensor(k, v) for k, v in graph.outputs.items()]
    params = [ParamSymbol(p.name, names[p.value], p.type.shape, p.type.dtype.value, p.role.value, p.init.kind,
                          dict(p.init.args)) for p in graph.params]
    updates = [UpdateSymbol(k, names[v]) for k, v in graph.updates.items()]
    return Symbols(tuple(inputs), tuple(outputs), tuple(params), tuple(updates))


def _section(index: int, g: Group, kernels: list[KernelProgram]) -> Section:
    """A section's record with its modeled off-chip traffic (each tensor once per section)."""
    members = [kernels[k] for k in g.kernels]
    read: dict[str, int] = {}
    written: dict[str, int] = {}
    seen: set[str] = set()
    for program in members:
        for buffer in program.buffers:
            if buffer.tier == ONCHIP or buffer.name in seen or buffer.role == "temp":
                continue
            seen.add(buffer.name)
            table = read if buffer.role == "input" else written
            table[buffer.tier] = table.get(buffer.tier, 0) + buffer.nbytes
    return Section(index, g.phase, g.kernels, sum(g.pcus), g.pmus, dict(sorted(read.items())),
                   dict(sorted(written.items())))
