"""Mapping, sectioning and the memory plan: budgets, phases, off-chip traffic, -O0 against packing."""
from __future__ import annotations

import functools

import attrs
import pytest
from backend_graphs import decompose, fuse_phases, mlp
from planned_backend import build_pef

from backend import driver
from backend.driver import BackendOptions
from backend.lowering import lower_graph
from backend.mapping import Needs, balance, budget, default_tile, kernel_needs, schedule_tiles, working_set
from backend.pef.memory_plan import temp_symbol
from backend.pef.program import Schedule
from backend.pef.targets import ONCHIP, load_target, target_from_obj
from backend.report import offchip_traffic
from compiler.config import resolve
from compiler.driver import find_model
from compiler.frontend import lower, parse_module
from compiler.pass_manager.levels import level_pipeline
from compiler.passes import PassManager
from compiler.training import build_training_graph
from ir.builder import Builder
from ir.dtypes import f32
from ir.errors import BackendError, ConfigError, PassError
from ir.graph import Graph
from ir.types import TensorType


@functools.cache
def _gpt2_training_text() -> tuple:
    """The zoo's small GPT-2 training step, optimized at -O0 and at -O1 (graphs are rebuilt per use)."""
    found = find_model("gpt2")
    module = parse_module(found.source)
    return module, resolve(module.schema, [])


def gpt2_training(level: str):
    module, config = _gpt2_training_text()
    graph = build_training_graph(lower(module, config, training=True))
    return PassManager.parse(level_pipeline(level)).run(graph)


def _compile(graph, target="sn10", pack=True, **kw):
    return build_pef(graph, BackendOptions(load_target(target), pack=pack, **kw))


@pytest.fixture(scope="module")
def gpt2_o0():
    return _compile(gpt2_training("O0"), pack=False)


@pytest.fixture(scope="module")
def gpt2_o1():
    return _compile(gpt2_training("O1"))


def test_o0_is_one_kernel_per_section(gpt2_o0):
    assert len(gpt2_o0.sections) == len(gpt2_o0.kernels) > 100
    assert all(len(s.kernels) == 1 for s in gpt2_o0.sections)
    assert {s.phase for s in gpt2_o0.sections} == {"fwd", "bwd", "gradnorm", "opt"}


def test_packing_keeps_phases_apart_and_cuts_traffic(gpt2_o0, gpt2_o1):
    sections = gpt2_o1.sections
    phase_runs = 1 + sum(a.phase != b.phase for a, b in zip(gpt2_o1.kernels, gpt2_o1.kernels[1:]))
    assert phase_runs <= len(sections) < len(gpt2_o1.kernels) // 10
    for section in sections:
        assert {gpt2_o1.kernels[k].phase for k in section.kernels} == {section.phase}
    o0, o1 = offchip_traffic(gpt2_o0)["total"], offchip_traffic(gpt2_o1)["total"]
    assert o1 < o0 / 2
    print(f"\ngpt2 training, sn10: -O0 {len(gpt2_o0.sections)} sections, {o0:,} off-chip bytes; "
          f"-O1 {len(sections)} sections, {o1:,} off-chip bytes")


def test_sections_fit_the_budget(gpt2_o1):
    limit = budget(load_target("sn10"))
    for section in gpt2_o1.sections:
        assert section.pcus <= limit.pcus and section.pmus <= limit.pmus
        assert section.pcus == sum(gpt2_o1.kernels[k].schedule.pcus for k in section.kernels)


def test_tensors_crossing_sections_live_off_chip(gpt2_o1):
    section_of = {k: s.index for s in gpt2_o1.sections for k in s.kernels}
    sections_using: dict[str, set[int]] = {}
    for i, kernel in enumerate(gpt2_o1.kernels):
        for buffer in kernel.buffers:
            if buffer.role != "temp":
                sections_using.setdefault(buffer.name, set()).add(section_of[i])
    persistent = {s.tensor for s in (*gpt2_o1.symbols.inputs, *gpt2_o1.symbols.params, *gpt2_o1.symbols.outputs)}
    persistent |= {u.tensor for u in gpt2_o1.symbols.updates}
    plan = gpt2_o1.memory.lookup()
    onchip = 0
    for tensor, sections in sections_using.items():
        if len(sections) > 1 or tensor in persistent:
            assert plan[tensor].arena != ONCHIP, tensor
        onchip += plan[tensor].arena == ONCHIP
    assert onchip > 20
    for kernel in gpt2_o1.kernels:
        for buffer in kernel.with_role("temp"):
            assert plan[temp_symbol(kernel, buffer.name)].arena == ONCHIP


def test_o0_keeps_only_temporaries_on_chip(gpt2_o0):
    for kernel in gpt2_o0.kernels:
        assert all(b.tier != ONCHIP for b in kernel.buffers if b.role != "temp")


def test_fewer_tiles_give_more_sections():
    graph = decompose(mlp())
    full = _compile(graph, "rdu-mini")
    small = _compile(decompose(mlp()), "rdu-mini", num_tiles=1)
    assert (full.header.num_tiles, small.header.num_tiles) == (4, 1)
    assert len(small.sections) > len(full.sections)
    assert max(s.pmus for s in small.sections) <= 16


def test_a_kernel_too_big_for_the_budget_is_named():
    with pytest.raises(BackendError, match=r"kernel 'k0_fwd' \(mlp.rdl:4:3\) needs \d+ PCUs and (1[7-9]|[2-9]\d) PMUs.*"
                                           r"16 PCUs and 16 PMUs \(rdu-mini, 1 chip\(s\) x 1 tile\(s\)\)"):
        _compile(fuse_phases(decompose(mlp())), "rdu-mini", num_tiles=1)


@pytest.mark.parametrize("kw, message", [({"n_chips": 3}, "--n-chips 3: target 'rdu-mini' has 1 to 2"),
                                         ({"num_tiles": 5}, "--num-tiles 5: target 'rdu-mini' has 1 to 4")])
def test_resource_flags_are_checked(kw, message):
    with pytest.raises(ConfigError, match=message):
        _compile(decompose(mlp()), "rdu-mini", **kw)


def test_two_chips_double_the_budget():
    assert budget(load_target("sn40l"), n_chips=2).pcus == 2 * 1040
    assert budget(load_target("sn10"), num_tiles=1).pmus == 160


def test_params_fill_hbm_before_ddr():
    pef = _compile(decompose(mlp()), "sn40l")
    assert {pef.memory.lookup()[p.tensor].arena for p in pef.symbols.params} == {"hbm"}
    tiny_hbm = load_target("sn40l").to_obj()
    tiny_hbm["offchip"][0]["capacity"] = 900
    pef = build_pef(decompose(mlp()), BackendOptions(target_from_obj(tiny_hbm, "tiny.yaml")))
    arenas = [pef.memory.lookup()[p.tensor].arena for p in pef.symbols.params]
    # the params and inputs need 1040 B: the largest, w1 (512 B), moves to DDR; b1, w2 and the inputs fit in 900 B
    assert arenas == ["ddr", "hbm", "hbm"]
    assert {a.name: a.size for a in pef.memory.arenas if a.name != ONCHIP} == {"hbm": 576, "ddr": 512}


def test_off_chip_memory_that_is_too_small_is_an_error():
    small = load_target("rdu-mini").to_obj()
    small["offchip"][0]["capacity"] = 256
    with pytest.raises(PassError, match=r"mlp.rdl:4:3: error: param 'w1' \(f32\[16,8\]\) needs 512 bytes, more "
                                        r"than the largest memory tier of target 'rdu-mini' \('ddr', 256 bytes\)"):
        build_pef(decompose(mlp()), BackendOptions(target_from_obj(small, "small.yaml")))


def test_the_backend_refuses_a_graph_without_a_memory_plan():
    with pytest.raises(BackendError, match=r"param 'w1' has no place in the memory plan: run the 'plan-memory' pass for "
                                           r"target 'rdu-mini' before the backend"):
        driver.build_pef(decompose(mlp()), BackendOptions(load_target("rdu-mini")))


def test_the_backend_refuses_a_plan_that_does_not_fit_the_target():
    graph = PassManager.parse("plan-memory{target=sn40l}").run(decompose(mlp()))
    with pytest.raises(BackendError, match=r"param 'w1' is planned in 'hbm', a memory tier target 'rdu-mini' does not "
                                           r"have: run the 'plan-memory' pass for target 'rdu-mini'"):
        driver.build_pef(graph, BackendOptions(load_target("rdu-mini")))
    small = load_target("sn40l").to_obj()
    small["offchip"][0]["capacity"] = 600
    with pytest.raises(BackendError, match=r"param 'w2' is planned up to byte 896 of 'hbm', which has 600 "
                                           r"on target 'sn40l'"):
        driver.build_pef(graph, BackendOptions(target_from_obj(small, "small.yaml")))


def test_balance_gives_spare_pcus_by_flops():
    needs = [Needs(2, 1, 1000, 100), Needs(1, 1, 3000, 100), Needs(1, 1, 0, 100)]
    assert balance(needs, 12) == [4, 7, 1]
    assert balance(needs, 4) == [2, 1, 1]
    capped = [Needs(1, 1, 10, 2), Needs(1, 1, 10, 50)]
    assert balance(capped, 40) == [2, 20]


def _gemm_program(tile=()):
    b = Builder(Graph("mm"))
    x = b.input("x", TensorType((2, 64, 48), f32))
    w = b.input("w", TensorType((40, 48), f32))
    b.output("y", b.matmul(x, w, transpose_b=True))
    (program,) = lower_graph(b.graph)
    return attrs.evolve(program, schedule=Schedule((tile,)))


def test_default_tiles_follow_the_loop_nest():
    target = load_target("rdu-mini")
    program = _gemm_program()
    assert schedule_tiles(program, target) == ((1, 16, 16, 16),)  # (batch, m, n, k), 16 lanes
    assert default_tile((5, 7, 300), (2,), 16) == (5, 7, 16)
    assert default_tile((40, 50, 3, 9, 2), (1, 3), 16) == (1, 16, 3, 9, 2)
    # a: 16x16 f32, b: 16x16 f32, accumulator 16x16 f32
    assert working_set(program, program.stages[0], (1, 16, 16, 16)) == [1024, 1024, 1024]


def test_a_tile_from_the_tile_pass_is_kept_and_clipped():
    target = load_target("rdu-mini")
    tiles = schedule_tiles(_gemm_program((1, 64, 64, 48)), target)
    assert tiles == ((1, 64, 40, 48),)
    program = _gemm_program(tiles[0])
    # a 64x48 (12 KiB), b 48x40 (7.5 KiB), acc 64x40 (10 KiB): each double-buffered fits one 128 KiB PMU
    assert kernel_needs(program, target).pmus == 3
