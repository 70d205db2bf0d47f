"""The backend takes the memory plan and tiles from the IR; the PEF reader checks plans with reuse."""
from __future__ import annotations

import attrs
import pytest

from backend.driver import backend_stage
from backend.lowering import tensor_names
from backend.pef.file import load_pef
from backend.pef.targets import ONCHIP
from compiler.passes.plan_memory import memory_report
from ir.errors import PEFError
from optpass_graphs import O3, PREFIX, run, zoo_graph


@pytest.fixture(scope="module")
def compiled():
    graph, _ = run(O3, zoo_graph("gpt2", "train"))
    names = tensor_names(graph)
    pef = backend_stage(graph, target="rdu-mini")
    return graph, names, load_pef(pef.to_bytes())


def test_graph_tensors_sit_where_the_ir_plan_puts_them(compiled):
    graph, names, pef = compiled
    where = pef.memory.lookup()
    values = [*graph.inputs, *(p.value for p in graph.params), *(v for op in graph.ops for v in op.results)]
    for value in values:
        a = where[names[value]]
        assert (a.arena, a.offset) == (value.mem.tier, value.mem.offset)
    offchip = {r.tier: r.arena for r in memory_report(graph) if r.tier != ONCHIP}
    assert {a.name: a.size for a in pef.memory.arenas if a.name != ONCHIP} == offchip


def test_updates_share_their_params_range_in_the_pef(compiled):
    graph, names, pef = compiled
    where = pef.memory.lookup()
    for update in pef.symbols.updates:
        param = next(p for p in pef.symbols.params if p.name == update.param)
        assert (where[update.tensor].arena, where[update.tensor].offset) == \
            (where[param.tensor].arena, where[param.tensor].offset)


def test_the_reader_refuses_live_tensors_sharing_bytes(compiled):
    _, _, pef = compiled
    allocations = list(pef.memory.allocations)
    params = {p.tensor for p in pef.symbols.params}
    first, second = [a for a in allocations if a.tensor in params][:2]
    allocations[allocations.index(second)] = attrs.evolve(second, offset=first.offset)
    broken = attrs.evolve(pef, memory=attrs.evolve(pef.memory, allocations=tuple(allocations)))
    with pytest.raises(PEFError, match="overlap in .* while both are live"):
        load_pef(broken.to_bytes())


def test_kernels_carry_the_tiles_the_tile_pass_chose(compiled):
    graph, _, pef = compiled
    tiles = [o.attrs["tile"] for op in graph.ops for o in (op.region.ops if op.region else [op]) if o.attrs.get("tile")]
    scheduled = [tuple(t) for k in pef.kernels for t, s in zip(k.schedule.tiles, k.stages) if s.kind == "gemm"]
    assert len(tiles) == 39 and scheduled == tiles


def test_a_stale_plan_is_not_used():
    graph, _ = run(f"{PREFIX},plan-memory{{target=rdu-mini}},fuse", zoo_graph("mlp", "train"))
    pef = load_pef(backend_stage(graph, target="rdu-mini").to_bytes())
    no_reuse = sum(a.nbytes for a in pef.memory.allocations if a.arena == "ddr")
    assert next(a.size for a in pef.memory.arenas if a.name == "ddr") >= no_reuse


def test_a_plan_for_another_target_is_not_used():
    graph, _ = run(f"{PREFIX},plan-memory{{target=sn40l}}", zoo_graph("mlp", "train"))
    pef = load_pef(backend_stage(graph, target="rdu-mini").to_bytes())
    assert {a.name for a in pef.memory.arenas} == {"ddr", ONCHIP}


def test_generation_entry_points_share_the_params_placement():
    """A model compiled for inference has forward, prefill and decode graphs sharing params: each is
    planned on its own, and the params land at one place in all of them (the PEF checks it)."""
    from compiler.driver import CompileOptions, compile_model
    from compiler.pass_manager.levels import level_pipeline
    from compiler.passes import PassManager

    result = compile_model(CompileOptions("gpt2", inference=True, target="rdu-mini"),
                           PassManager.parse(level_pipeline("O3")))
    pef = load_pef(result.pef.to_bytes())
    assert pef.entries
    graphs = [result.graph, *result.entries.values()]
    for name in (p.name for p in result.graph.params):
        assert len({g.param(name).value.mem for g in graphs}) == 1, name
