"""The tile pass: the traffic and working-set model, the search, forced sizes and the target it uses."""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.pef.targets import load_target, target_from_obj
from compiler.passes import PassManager
from compiler.pass_manager.semantics import compare
from compiler.passes.tile import Problem, best_tile, default_tile, score
from ir.builder import Builder
from ir.dtypes import f32
from ir.errors import PassError
from ir.graph import Graph
from ir.init import Init
from ir.ops import lookup
from ir.types import TensorType
from optpass_graphs import O3, oracle, results, run, zoo_graph

#: a fixed target: 8 PMUs of 256 KiB, 16 lanes
TARGET = target_from_obj({
    "name": "tile-test", "chips_per_node": 1, "tiles": 1, "pcus_per_tile": 8, "pmus_per_tile": 8,
    "pcu": {"lanes": 16, "stages": 6, "flops_per_cycle": {"f32": 96}},
    "pmu": {"bytes": 262144, "bandwidth": 64}, "clock_hz": 1e9,
    "offchip": [{"name": "ddr", "capacity": 1 << 30, "bandwidth": 5e10}]}, "test")


def matmul(m: int, k: int, n: int, batch: tuple[int, ...] = (), shared_b: bool = False, **attrs):
    b = Builder(Graph("mm"))
    x = b.input("a", TensorType((*batch, m, k), f32))
    w = b.param("b", TensorType((k, n) if shared_b else (*batch, k, n), f32), Init("zeros"))
    b.output("c", b.matmul(x, w, **attrs))
    return b.graph, b.graph.ops[-1]


def gemm_traffic(m, n, k, tm, tn, item=4) -> int:
    """A read once per column tile, B once per row tile, C written once."""
    return item * (m * k * math.ceil(n / tn) + k * n * math.ceil(m / tm) + m * n)


def test_matmul_tile_by_hand():
    """3 PMUs: each double-buffered stream holds 32768 f32, so tm * tn <= 32768 with tm*tk, tk*tn too."""
    _, op = matmul(256, 512, 256)
    choice = best_tile(Problem.of(op), TARGET.pmu.bytes, 3, TARGET.pcu.lanes)
    assert choice.tile == (128, 256, 128)
    assert choice.pmus == 3
    assert choice.traffic == gemm_traffic(256, 256, 512, 128, 256) == 1835008
    assert Problem.of(op).lower_bound() == 4 * (256 * 512 + 512 * 256 + 256 * 256) == 1310720


def test_whole_matrices_when_they_fit():
    _, op = matmul(64, 64, 64)
    choice = best_tile(Problem.of(op), TARGET.pmu.bytes, 8, TARGET.pcu.lanes)
    assert choice.tile == (64, 64, 64) and choice.traffic == Problem.of(op).lower_bound()


@settings(max_examples=40, deadline=None)
@given(m=st.sampled_from([16, 48, 64, 200]), n=st.sampled_from([16, 32, 96, 256]), k=st.sampled_from([16, 64, 300]),
       tm=st.integers(1, 256), tn=st.integers(1, 256), tk=st.integers(1, 300))
def test_score_is_the_gemm_traffic_formula(m, n, k, tm, tn, tk):
    _, op = matmul(m, k, n)
    tile = (min(tm, m), min(tn, n), min(tk, k))
    choice = score(Problem.of(op), tile, TARGET)
    assert choice.traffic == gemm_traffic(m, n, k, *tile[:2])
    streams = [tile[0] * tile[2] * 4, tile[2] * tile[1] * 4, tile[0] * tile[1] * 4]
    assert choice.pmus == sum(max(1, math.ceil(2 * s / TARGET.pmu.bytes)) for s in streams)


@pytest.mark.parametrize("budget", [3, 4, 6])
def test_search_finds_the_least_traffic_of_all_fitting_tiles(budget):
    """Brute force over every size (not just powers of two) of a small problem."""
    _, op = matmul(96, 80, 112)
    problem = Problem.of(op)
    small = TARGET.pmu.bytes // 32  # 8 KiB PMUs make the budget bite
    best = best_tile(problem, small, budget, 1)
    fitting = []
    for tile in itertools.product(range(1, 97, 5), range(1, 113, 5), (1, 16, 80)):
        traffic, pmus = _model(problem, tile, small)
        if pmus <= budget:
            fitting.append(traffic)
    assert best.pmus <= budget
    assert best.traffic <= min(fitting) * 1.25, "powers of two come within 25% of any size"


def _model(problem, tile, pmu_bytes):
    target = target_from_obj({**TARGET.to_obj(), "pmu": {"bytes": pmu_bytes, "bandwidth": 64}}, "test")
    choice = score(problem, tile, target)
    return choice.traffic, choice.pmus


def test_a_weight_shared_by_the_batch_is_reread_per_batch_tile():
    _, op = matmul(32, 64, 64, batch=(8,), shared_b=True)
    problem = Problem.of(op)
    one, whole = score(problem, (1, 32, 64, 64), TARGET), score(problem, (8, 32, 64, 64), TARGET)
    weight = 64 * 64 * 4
    assert one.traffic - whole.traffic == 7 * weight


def test_conv_reads_its_padded_window():
    b = Builder(Graph("conv"))
    x = b.input("x", TensorType((2, 3, 8, 8), f32))
    w = b.param("w", TensorType((6, 3, 3, 3), f32), Init("zeros"))
    b.output("y", b.conv2d(x, w, padding=(1, 1)))
    problem = Problem.of(b.graph.ops[0])
    assert problem.nest.extents == (2, 6, 8, 8, 3, 3, 3)
    assert problem.lower_bound() == 4 * (2 * 3 * 10 * 10 + 6 * 3 * 3 * 3 + 2 * 6 * 8 * 8)
    halves = score(problem, (2, 6, 4, 8, 3, 3, 3), TARGET)
    assert halves.traffic == 4 * (2 * (2 * 3 * 6 * 10) + 6 * 27 * 2 + 2 * 6 * 64)


def test_default_tile_is_lanes_square():
    _, op = matmul(256, 512, 256, batch=(4,))
    assert default_tile(Problem.of(op).nest, 16) == (1, 16, 16, 16)


def test_pass_sets_tiles_and_counts_traffic():
    graph, _ = matmul(256, 512, 256)
    _, pm = run("tile{target=rdu-mini}", graph)
    op = graph.ops[0]
    assert len(op.attrs["tile"]) == 3
    assert pm.counters["tile.ops-tiled"] == 1
    assert pm.counters["tile.traffic-lower-bound"] <= pm.counters["tile.traffic-bytes"] \
        <= pm.counters["tile.traffic-default-bytes"]


def test_forced_sizes():
    graph, _ = matmul(8, 16, 32, batch=(2,))
    run("tile{matmul=4x64x8}", graph)
    assert graph.ops[0].attrs["tile"] == (1, 4, 32, 8)
    with pytest.raises(PassError, match="has 4 loop axes, but 5 tile sizes"):
        run("tile{matmul=1x1x1x1x1}", matmul(8, 16, 32, batch=(2,))[0])
    with pytest.raises(PassError, match="expects sizes like 64x64x64"):
        run("tile{matmul=0x4x4}", graph)


def test_the_compile_target_is_the_default():
    graph, _ = matmul(1024, 1024, 1024)
    pm = PassManager.parse("tile")
    pm.target = "rdu-mini"
    pm.run(graph)
    mini = graph.ops[0].attrs["tile"]
    run("tile{target=sn40l}", graph)
    assert graph.ops[0].attrs["tile"] != mini
    expected = best_tile(Problem.of(graph.ops[0]), load_target("rdu-mini").pmu.bytes,
                         load_target("rdu-mini").pmus_per_tile, 16).tile
    assert mini == expected


def test_every_loop_nest_op_of_the_zoo_gets_a_tile_and_results_do_not_change():
    for name in ("gpt2", "lenet"):
        graph = zoo_graph(name, "train")
        inputs, params, expected = oracle(graph)
        tiled, _ = run(O3, graph)
        ops = [op for op in tiled.walk() if lookup(op.name).loop_nest is not None]
        assert ops and all(op.attrs["tile"] for op in ops)
        assert compare(expected, results(tiled, inputs, params)) is None
