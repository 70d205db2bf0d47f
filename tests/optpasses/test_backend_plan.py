"""The backend takes the memory plan and tiles from the IR; the PEF reader checks plans with reuse."""
from __future__ import annotations

import attrs
import pytest

from backend import driver
from backend.lowering import tensor_names
from backend.pef.file import load_pef
from backend.pef.targets import ONCHIP
from compiler.driver import CompileOptions, compile_model
from compiler.pass_manager.levels import level_pipeline
from compiler.passes import PassManager
from compiler.passes.plan_memory import check_plan, memory_report
from ir.errors import BackendError, PEFError
from optpass_graphs import O3, PREFIX, run, zoo_graph
from planned_backend import backend_stage


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


def test_the_backend_refuses_a_stale_plan():
    graph, _ = run(f"{PREFIX},plan-memory{{target=rdu-mini}},fuse", zoo_graph("mlp", "train"))
    with pytest.raises(BackendError, match=r"the result of 'fused' has no place in the memory plan: "
                                           r"run the 'plan-memory' pass for target 'rdu-mini' before the backend"):
        driver.backend_stage(graph, target="rdu-mini")


def test_the_backend_refuses_a_plan_for_another_target():
    graph, _ = run(f"{PREFIX},plan-memory{{target=sn40l}}", zoo_graph("mlp", "train"))
    with pytest.raises(BackendError, match=r"is planned in 'hbm', a memory tier target 'rdu-mini' does not have"):
        driver.backend_stage(graph, target="rdu-mini")


@pytest.mark.parametrize("pipeline", [PREFIX, f"{PREFIX},plan-memory{{target=sn40l}}",
                                      f"{PREFIX},plan-memory{{target=rdu-mini}},fuse"],
                         ids=["no-plan", "other-target", "stale"])
def test_the_compiler_plans_a_graph_reaching_the_backend_without_a_plan_for_its_target(pipeline):
    """A --passes pipeline without plan-memory (or one planning for another target, or a plan gone stale
    under a later pass) compiles: the driver runs the pass for the target, with reuse."""
    result = compile_model(CompileOptions("mlp", target="rdu-mini"), PassManager.parse(pipeline))
    assert check_plan(result.graph) == []
    values = [*result.graph.inputs, *(p.value for p in result.graph.params),
              *(v for op in result.graph.ops for v in op.results)]
    assert {v.mem.tier for v in values} == {"ddr", ONCHIP}
    pef = load_pef(result.pef.to_bytes())
    ddr = next(r for r in memory_report(result.graph) if r.tier == "ddr")
    assert next(a.size for a in pef.memory.arenas if a.name == "ddr") == ddr.arena < ddr.no_reuse


def test_the_compiler_keeps_everything_off_chip_when_kernels_get_a_section_each():
    result = compile_model(CompileOptions("mlp", target="rdu-mini", pack_sections=False), PassManager.parse(PREFIX))
    assert {v.mem.tier for op in result.graph.ops for v in op.results} == {"ddr"}


@pytest.mark.parametrize("pipeline", [level_pipeline("O3"), PREFIX], ids=["O3", "no-plan"])
def test_generation_entry_points_share_the_params_placement(pipeline):
    """A model compiled for inference has forward, prefill and decode graphs sharing params: each is
    planned on its own (by the pipeline, or by the driver when it has no plan-memory), and the
    params land at one place in all of them (the PEF checks it)."""
    result = compile_model(CompileOptions("gpt2", inference=True, target="rdu-mini"), PassManager.parse(pipeline))
    pef = load_pef(result.pef.to_bytes())
    assert pef.entries
    graphs = [result.graph, *result.entries.values()]
    for name in (p.name for p in result.graph.params):
        assert len({g.param(name).value.mem for g in graphs}) == 1, name
