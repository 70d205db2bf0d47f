"""The runtime API: load, run, params, input checks, errors, updates in place, profiles, traces."""
from __future__ import annotations

import json

import numpy as np
import pytest
from planned_backend import build_pef
from rich.console import Console

from backend.driver import BackendOptions
from backend.pef.targets import load_target
from compiler.passes import PassManager
from ir.builder import Builder
from ir.dtypes import f32, i32
from ir.errors import ExecutionError, Location, PEFError
from ir.graph import Graph, Phase
from ir.init import Init
from ir.interpreter import initial_params, interpret
from ir.ops import lookup
from ir.rewrite import rewrite
from ir.types import TensorType
from runtime.cost_model import estimate
from runtime.jit.cache import DiskCache
from runtime.jit.library import Jit
from runtime.profile import print_profile, write_trace
from runtime.program import load


def decompose(graph: Graph) -> Graph:
    rewrite(graph, lambda b, op: None if lookup(op.name).decompose is None else list(lookup(op.name).decompose(b, op)))
    return graph


def mlp_graph() -> Graph:
    """linear -> gelu -> linear -> cross-entropy; SGD on both layers; the bias of the first
    layer is replaced by an input (an update that must be copied, not swapped)."""
    b = Builder(Graph("mlp"))
    x = b.input("x", TensorType((4, 8), f32))
    labels = b.input("labels", TensorType((4,), i32))
    lr = b.input("lr", TensorType((), f32))
    bias = b.input("bias", TensorType((16,), f32))
    w1 = b.param("w1", TensorType((16, 8), f32), Init("xavier_uniform"))
    b1 = b.param("b1", TensorType((16,), f32), Init("normal", {"std": 0.1}))
    w2 = b.param("w2", TensorType((5, 16), f32), Init("xavier_uniform"))
    with b.in_phase(Phase.fwd), b.at(Location("mlp.rdl", 4, 3)):
        h = b.gelu(b.add(b.matmul(x, w1, transpose_b=True), b1))
        logits = b.matmul(h, w2, transpose_b=True)
        loss = b.cross_entropy(logits, labels)
    with b.in_phase(Phase.opt):
        b.update("w1", b.sub(w1, b.mul(lr, b.tanh(w1))))
        b.update("w2", b.sub(w2, b.mul(lr, w2)))
        b.update("b1", bias)
    b.output("loss", loss)
    b.output("logits", logits)
    return decompose(b.graph)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return mlp_graph()


@pytest.fixture(scope="module", params=[True, False], ids=["packed", "one-kernel-sections"])
def pef_bytes(request) -> bytes:
    return build_pef(mlp_graph(), BackendOptions(load_target("rdu-mini"), pack=request.param)).to_bytes()


def inputs(step: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"x": rng.standard_normal((4, 8)).astype(np.float32), "labels": np.array([0, 1, 4, 2], np.int32),
            "lr": np.float32(0.1), "bias": np.full(16, step, np.float32)}


def test_steps_match_interpreter_with_params_updated_in_place(graph, pef_bytes):
    program = load(pef_bytes, seed=5)
    params = initial_params(graph, seed=5)
    for step in range(3):
        want = interpret(graph, inputs(step), params)
        got = program.run(inputs(step))
        np.testing.assert_allclose(got["loss"], want.outputs["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["logits"], want.outputs["logits"], rtol=1e-5, atol=1e-6)
        params = {**params, **want.updates}
        for name in params:
            np.testing.assert_allclose(program.params[name], params[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(program.params["b1"], np.full(16, 2, np.float32))  # the copied update


def test_updates_written_in_place_need_no_swap(pef_bytes):
    executor = load(pef_bytes).executor
    assert {p for p, _ in executor.copies} == {"@b1"}
    assert not {"@w1", "@w2"} & set(executor.swaps)


def test_updates_trade_places_instead_of_copying():
    """Planned without in-place writes, an update has a range of its own and trades places with its param."""
    graph = PassManager.parse("plan-memory{target=rdu-mini,in-place=false}").run(mlp_graph())
    program = load(build_pef(graph, BackendOptions(load_target("rdu-mini"))))
    executor = program.executor
    assert {p for p, _ in executor.copies} == {"@b1"}
    assert set(executor.swaps) >= {"@w1", "@w2"}
    before = executor.location("@w1")
    program.run(inputs())
    assert executor.location("@w1") == executor.where[executor.swaps["@w1"]] != before


def test_inputs_are_checked_by_symbol(pef_bytes):
    program = load(pef_bytes)
    good = inputs()
    with pytest.raises(ExecutionError, match=r"missing input\(s\): labels"):
        program.run({k: v for k, v in good.items() if k != "labels"})
    with pytest.raises(ExecutionError, match="unknown input 'bogus'"):
        program.run({**good, "bogus": np.zeros(1)})
    with pytest.raises(ExecutionError, match=r"input 'x' must be f32\[4,8\], got float64\[4, 8\]"):
        program.run({**good, "x": good["x"].astype(np.float64)})
    with pytest.raises(ExecutionError, match=r"input 'labels' must be i32\[4\], got int32\[5\]"):
        program.run({**good, "labels": np.zeros(5, np.int32)})


def test_params_get_and_set(graph, pef_bytes):
    program = load(pef_bytes)
    zeros = np.zeros((16, 8), np.float32)
    program.params["w1"] = zeros
    np.testing.assert_array_equal(program.params["w1"], zeros)
    params = {**initial_params(graph), "w1": zeros}
    want = interpret(graph, inputs(), params).outputs["loss"]
    np.testing.assert_allclose(program.run(inputs())["loss"], want, rtol=1e-6)
    with pytest.raises(ExecutionError, match=r"param 'w1' must be f32\[16,8\], got float32\[3\]"):
        program.params["w1"] = np.zeros(3, np.float32)
    with pytest.raises(ExecutionError, match="no param 'nope'"):
        program.params["nope"]
    assert not program.params.view("w2").flags.writeable
    assert sorted(program.get_params()) == ["b1", "w1", "w2"]
    assert program.params.roles() == {"w1": "param", "b1": "param", "w2": "param"}


def test_evaluate_runs_the_forward_sections_only(pef_bytes):
    program = load(pef_bytes)
    before = program.get_params()
    loss = program.evaluate(inputs())["loss"]
    for name, value in program.get_params().items():
        np.testing.assert_array_equal(value, before[name])
    assert program.run(inputs())["loss"] == loss


def test_a_run_returns_the_outputs_named_and_refuses_others(pef_bytes):
    program, twin = load(pef_bytes, seed=3), load(pef_bytes, seed=3)
    assert list(program.run(inputs(), outputs=["loss"])) == ["loss"]
    assert list(twin.run(inputs(), outputs="loss")) == ["loss"]
    step = inputs(1)
    everything = twin.step(step)
    assert sorted(everything) == ["logits", "loss"]
    assert program.step(step, outputs=("loss",))["loss"] == everything["loss"]
    assert program.evaluate(step, outputs=["logits"])["logits"].shape == (4, 5)
    with pytest.raises(ExecutionError, match=r"no output 'logit' to return here \(outputs: loss, logits\)"):
        program.run(inputs(), outputs=["logit"])
    np.testing.assert_array_equal(program.params["w1"], twin.params["w1"])  # the refused run ran nothing


def test_same_seed_same_bits_on_any_thread_count(pef_bytes):
    one, two = load(pef_bytes, seed=1, threads=1), load(pef_bytes, seed=1, threads=2)
    for step in range(2):
        a, b = one.run(inputs(step)), two.run(inputs(step))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_load_from_a_path_and_refuse_a_damaged_file(tmp_path, pef_bytes):
    path = tmp_path / "mlp.pef"
    path.write_bytes(pef_bytes)
    assert load(path).run(inputs())["loss"] == load(pef_bytes).run(inputs())["loss"]
    damaged = tmp_path / "damaged.pef"
    damaged.write_bytes(pef_bytes[:-10])
    with pytest.raises(PEFError, match="damaged.pef"):
        load(damaged)


def test_gather_index_out_of_range_names_the_kernel():
    b = Builder(Graph("embed"))
    ids = b.input("ids", TensorType((3,), i32))
    table = b.param("table", TensorType((5, 4), f32), Init("normal"))
    with b.at(Location("embed.rdl", 2, 7)):
        b.output("rows", b.gather(table, ids))
    program = load(build_pef(b.graph, BackendOptions(load_target("rdu-mini"), mode="inference")))
    np.testing.assert_array_equal(program.run({"ids": np.array([4, 0, 4], np.int32)})["rows"],
                                  program.params["table"][[4, 0, 4]])
    with pytest.raises(ExecutionError, match=r"kernel 'k0_gather' \('gather' at embed.rdl:2:7\): index out of range"):
        program.run({"ids": np.array([0, 5, 1], np.int32)})


@pytest.mark.parametrize("base_lives_on", [False, True], ids=["dies-there", "lives-on"])
def test_scatter_add_into_a_base_runs_in_its_memory_when_it_dies_there(base_lives_on):
    """A tied embedding's gradient: the rows a scatter_add adds go into the other gradient itself
    when nothing reads that later (only the indexed rows written), into a copy when something does."""
    b = Builder(Graph("tied"))
    ids = b.input("ids", TensorType((3, 4), i32))
    base = b.neg(b.input("g", TensorType((50, 8), f32)))
    b.output("grad", b.scatter_add(b.input("up", TensorType((3, 4, 8), f32)), ids, base, size=50))
    if base_lives_on:
        b.output("base", base)
    pef = build_pef(b.graph, BackendOptions(load_target("rdu-mini"), mode="inference"))
    (scatter,) = [s for k in pef.kernels for s in k.stages if s.kind == "scatter_add"]
    assert scatter.base is not None and scatter.in_place is not base_lives_on
    rng = np.random.default_rng(0)
    feed = {"ids": rng.integers(0, 50, (3, 4)).astype(np.int32), "g": rng.standard_normal((50, 8)).astype(np.float32),
            "up": rng.standard_normal((3, 4, 8)).astype(np.float32)}
    got, want = load(pef).run(feed), interpret(b.graph, feed).outputs
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_second_load_takes_every_kernel_from_the_disk_cache(tmp_path, pef_bytes):
    first = load(pef_bytes, jit=Jit(DiskCache(tmp_path)))
    assert first.jit.stats.compiled > 0 and first.jit.stats.cached == 0
    second = load(pef_bytes, jit=Jit(DiskCache(tmp_path)))
    assert second.jit.stats.compiled == 0
    assert second.jit.stats.cached == first.jit.stats.compiled
    assert second.run(inputs())["loss"] == first.run(inputs())["loss"]


def test_profile_table_and_trace(tmp_path, pef_bytes):
    program = load(pef_bytes)
    for step in range(2):
        program.run(inputs(step), profile=True)
    profile, report = program.profile, estimate(program.pef)
    assert profile.steps == 2 and len(profile.kernel_seconds()) == len(program.pef.kernels)
    assert all(t > 0 for t in profile.kernel_seconds())
    console = Console(record=True, width=160)
    print_profile(profile, report, console)
    text = console.export_text()
    assert "k0_matmul" in text and "total" in text and "modeled RDU" in text
    write_trace(tmp_path / "trace.json", profile, report)
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    host = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
    rdu_sections = [e for e in events if e["ph"] == "X" and e["pid"] == 2 and e["tid"] == 0]
    assert [e["name"] for e in host] == [k.name for k in program.pef.kernels]
    assert len(rdu_sections) == len(program.pef.sections)
    assert rdu_sections[-1]["ts"] + rdu_sections[-1]["dur"] == pytest.approx(report.time_s * 1e6)
