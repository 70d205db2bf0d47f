"""The plan-memory pass: plan quality against the peak-live bound, correctness in real arenas, tiers, IR text."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.pef.targets import ONCHIP, load_target, target_from_obj
from compiler import zoo
from compiler.passes.plan_memory import HEURISTICS, Buffer, check_plan, memory_report, peak, place
from compiler.pass_manager.semantics import compare
from ir.builder import Builder
from ir.dtypes import f32
from ir.errors import Location, ParseError, PassError, display_path
from ir.graph import Graph, Placement
from ir.init import Init
from ir.parser import parse
from ir.printer import print_graph
from ir.types import TensorType
from tools.cli import main
from optpass_graphs import MODES, O3, PREFIX, adamw_graph, mlp, oracle, results, run, run_in_arenas, zoo_graph

O0 = "decompose,plan-memory{onchip-max-bytes=0 target=rdu-mini}"


@pytest.mark.parametrize("pipeline", [O3, O0], ids=["O3", "O0"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_plans_are_within_5_percent_of_the_peak_and_correct(name, mode, pipeline):
    graph = zoo_graph(name, mode)
    inputs, params, expected = oracle(graph)
    planned, _ = run(pipeline, graph)
    assert check_plan(planned) == []
    for report in memory_report(planned):
        print(f"\n{name} {mode} {'-O3' if pipeline == O3 else '-O0'}: {report.tier} arena {report.arena:,} B, peak-live bound {report.lower_bound:,} B, "
              f"ratio {report.ratio:.4f}, no reuse {report.no_reuse:,} B ({report.tensors} tensors)", end="")
        assert report.arena <= 1.05 * report.lower_bound
        assert report.lower_bound <= report.arena <= report.no_reuse
    assert compare(expected, run_in_arenas(planned, inputs, params)) is None


def test_adamw_updates_params_and_moments_in_place():
    graph, pm = run(f"{PREFIX},fuse,plan-memory{{target=rdu-mini}}", adamw_graph("mlp"))
    trained = len(graph.updates) // 3
    assert pm.counters["plan-memory.in-place"] >= 3 * trained
    for name, value in graph.updates.items():
        assert value.mem == graph.param(name).value.mem, name
    inputs, params, plain = oracle(graph)
    arenas = run_in_arenas(graph, inputs, params)
    assert all((arenas[k] == v).all() for k, v in plain.items()), "the same kernels give the same bits"
    assert check_plan(graph) == []


@pytest.mark.parametrize("in_place", [True, False])
def test_three_steps_in_the_arenas_match_the_interpreter(in_place):
    """Updates not written over their param keep their range all run: the runtime swaps them after a step."""
    graph = zoo_graph("mlp", "train")
    inputs, params, _ = oracle(graph)
    planned, _ = run(f"decompose,plan-memory{{target=rdu-mini in-place={str(in_place).lower()}}}", graph)
    expected = {}
    for _ in range(3):
        expected = results(planned, inputs, params)
        params = {**params, **{k[len("update @"):]: v for k, v in expected.items() if k.startswith("update @")}}
    got = run_in_arenas(planned, inputs, oracle(graph)[1], steps=3)
    assert compare(expected, got) is None


def test_placements_round_trip_through_the_text():
    planned, _ = run(O3, zoo_graph("lenet", "train"))
    text = print_graph(planned)
    assert " mem(" in text
    again = parse(text)
    assert print_graph(again) == text
    assert [v.mem for v in again.inputs] == [v.mem for v in planned.inputs]
    assert check_plan(again) == []


@pytest.mark.parametrize("mem, message", [
    ("mem(ddr)", "memory placement 'ddr' needs an offset"),
    ("mem(ddr:0, ddr:64)", "2 memory placement(s) for 1 value(s)"),
])
def test_bad_placements_are_located_errors(mem, message):
    text = "graph @g {\n  input %x : f32[4]\n  %0 = exp(%x) : f32[4] MEM\n  output y = %0\n}\n".replace("MEM", mem)
    with pytest.raises(ParseError) as info:
        parse(text, "g.ir")
    assert message in info.value.message and info.value.location.line == 3


def test_unplaced_tensors_are_reported():
    planned, _ = run("plan-memory,decompose", mlp())
    assert any("has no place" in problem for problem in check_plan(planned))


def _buffers(draw_list) -> list[Buffer]:
    return [Buffer([], size * 64, start, start + length) for size, start, length in draw_list]


intervals = st.lists(st.tuples(st.integers(1, 8), st.integers(0, 20), st.integers(0, 10)), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(spec=intervals)
def test_every_heuristic_gives_a_valid_plan_and_best_is_the_smallest(spec):
    sizes = {}
    for name in HEURISTICS:
        buffers = _buffers(spec)
        place(buffers, (name,))
        _assert_disjoint(buffers)
        sizes[name] = max(b.offset + b.size for b in buffers)
        assert sizes[name] >= peak(buffers)
    buffers = _buffers(spec)
    place(buffers, HEURISTICS)
    assert max(b.offset + b.size for b in buffers) == min(sizes.values())


def _assert_disjoint(buffers: list[Buffer]) -> None:
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


def _small_target(hbm: int, sram_pmus: int = 8):
    data = load_target("sn40l").to_obj()
    data.update(name="small", tiles=1, pmus_per_tile=sram_pmus, offchip=[
        {"name": "hbm", "capacity": hbm, "bandwidth": 1e12}, {"name": "ddr", "capacity": 1 << 30, "bandwidth": 1e11}])
    return data


def test_a_full_fast_tier_spills_to_the_next(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(_small_target(hbm=30_000)))
    target_from_obj(yaml.safe_load(path.read_text()), str(path))
    graph = zoo_graph("mlp", "train")
    inputs, params, expected = oracle(graph)
    planned, _ = run(f"decompose,plan-memory{{target={path} onchip-max-bytes=0}}", graph)
    tiers = {r.tier: r for r in memory_report(planned)}
    assert set(tiers) == {"hbm", "ddr"} and tiers["hbm"].arena <= 30_000 and tiers["ddr"].arena > 0
    assert check_plan(planned) == []
    assert compare(expected, run_in_arenas(planned, inputs, params)) is None


def test_a_plan_larger_than_every_tier_is_an_error(tmp_path):
    data = _small_target(hbm=10_000)  # above the largest tensor, below the plan
    data["offchip"] = data["offchip"][:1]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PassError, match="needs .* bytes of 'hbm'"):
        run(f"decompose,plan-memory{{target={path}}}", zoo_graph("mlp", "train"))


def _outputs_of_exps(count: int, length: int) -> Graph:
    """`count` exps of one f32[length] input, every one an output (all live at once), located."""
    b = Builder(Graph("huge"))
    x = b.input("x", TensorType((length,), f32))
    with b.at(Location("huge.rdl", 3, 5)):
        for i in range(count):
            b.output(f"y{i}", b.exp(x))
    return b.graph


def test_a_tensor_larger_than_every_tier_is_an_error_naming_it():
    with pytest.raises(PassError, match=r"input 'x' \(f32\[1099511627776\]\) needs 4398046511104 bytes, more than "
                       r"the largest memory tier of target 'rdu-mini'") as err:
        run("plan-memory{target=rdu-mini}", _outputs_of_exps(1, 2**40))
    assert err.value.location == Location("huge.rdl", 3, 5), "an input is located at its first user"


def test_tensors_adding_up_beyond_64_bits_are_an_error(tmp_path):
    data = _small_target(hbm=2**62)
    path = tmp_path / "vast.yaml"
    path.write_text(yaml.safe_dump(data))
    # nine ranges of 2**60 bytes: the last exp writes over its input in place
    with pytest.raises(PassError, match=r"need 10376293541461622784 bytes in all, beyond 64-bit offsets "
                       r"\(the largest: input 'x' \(f32\[288230376151711744\]\)") as err:
        run(f"plan-memory{{target={path}}}", _outputs_of_exps(9, 2**58))
    assert err.value.location == Location("huge.rdl", 3, 5)


def test_a_huge_batch_size_is_a_user_error(capsys, tmp_path):
    code = main(["compile", "mlp", "-b", str(10**16), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(f"{display_path(str(Path(zoo.__file__).parent.resolve() / 'mlp.rdl'))}:") and "input 'x' (f32[10000000000000000,64]) needs 2560000000000000000 bytes" in err


def test_the_onchip_arena_stays_within_its_share_of_sram(tmp_path):
    data = _small_target(hbm=1 << 30, sram_pmus=1)
    data["pmu"] = {"bytes": 4096, "bandwidth": 64}
    path = tmp_path / "sram.yaml"
    path.write_text(yaml.safe_dump(data))
    planned, pm = run(f"{PREFIX},fuse,plan-memory{{target={path}}}", zoo_graph("gpt2", "inference"))
    onchip = [r for r in memory_report(planned) if r.tier == ONCHIP]
    assert not onchip or onchip[0].arena <= 4096 // 4
    assert check_plan(planned) == []


def test_onchip_tensors_are_small_and_used_in_their_segment():
    planned, _ = run(O3, zoo_graph("gpt2", "train"))
    users = planned.users()
    limit = load_target("rdu-mini").pmu.bytes
    onchip = [v for op in planned.ops for v in op.results if v.mem.tier == ONCHIP]
    assert onchip
    for value in onchip:
        assert value.type.nbytes <= limit and value not in planned.live_outs()
        assert {op.phase for op in users.get(value, [])} <= {value.producer.phase}
    assert all(v.mem.tier != ONCHIP for v in planned.inputs)


def test_a_handmade_plan_with_overlap_is_caught():
    b = Builder(Graph("g"))
    x = b.input("x", TensorType((16,), f32))
    w = b.param("w", TensorType((16,), f32), Init("ones"))
    y = b.add(b.exp(x), w)
    b.output("y", y)
    graph = b.graph
    for value in [x, w, graph.ops[0].result, y]:
        value.mem = Placement("ddr", 64)
    assert check_plan(graph) == [f"{x} and {w} overlap in 'ddr' while both are live"] or \
        check_plan(graph) == [f"{w} and {x} overlap in 'ddr' while both are live"]
    w.mem = Placement("ddr", 0)
    assert check_plan(graph) == [], "exp and add may write over their dying operand"
