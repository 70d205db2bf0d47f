"""The `all_reduce` collective in one process: verifier, training graph, backend and executor.

Multi-process runs under mpirun are in test_mpirun.py; here a communicator stand-in plays
a group whose every replica holds this one's values (the reference semantics).
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Body, Buffer, Node, ProgramError
from backend.pef.stages import AllReduceStage, MapStage
from backend.pef.validate import validate
from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions, build_training_graph
from ir.builder import Builder
from ir.dtypes import DType
from ir.errors import ExecutionError, VerifyError
from ir.graph import Graph
from ir.interpreter import initial_params, interpret
from ir.parser import parse_with_positions
from ir.types import TensorType
from ir.verifier import verify
from replicated import Replicated
from runtime.program import Program
from tools.cli import main

F8 = TensorType((8,), DType.f32)


def test_verifier_rejects_one_group_with_two_world_sizes():
    text = """graph @g {
  input %x : f32[8]
  %0 = all_reduce(%x) {group = "data", world_size = 2} : f32[8]
  %1 = all_reduce(%0) {group = "data", world_size = 4} : f32[8]
  output y = %1
}
"""
    graph, positions = parse_with_positions(text, "bad.ir")
    with pytest.raises(VerifyError) as info:
        verify(graph, positions)
    assert info.value.message == "op %1 = all_reduce: group 'data' has world_size 4 here, 2 at an earlier collective"
    assert str(info.value.location) == "bad.ir:4:8"


def test_verifier_accepts_distinct_groups_of_distinct_sizes():
    b = Builder(Graph("g"))
    x = b.input("x", F8)
    b.output("y", b.all_reduce(b.all_reduce(x, group="data", world_size=2), group="model", world_size=4))
    verify(b.graph)


def test_verifier_rejects_a_non_float_collective():
    text = """graph @g {
  input %x : i32[8]
  %0 = all_reduce(%x) {group = "data", world_size = 2} : i32[8]
  output y = %0
}
"""
    graph, positions = parse_with_positions(text, "bad.ir")
    with pytest.raises(VerifyError, match="reduces float values only, got i32\\[8\\]"):
        verify(graph, positions)


def _logreg(training: TrainingOptions):
    return compile_model(CompileOptions("logreg", emit="ir", training=training)).graph


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((16, 64)).astype(np.float32),
            "labels": rng.integers(0, 10, 16).astype(np.int32), "lr": np.float32(0.05)}


@pytest.mark.parametrize("size", [1, 2, 4])
def test_replicated_group_trains_as_one_process(size):
    """With every replica holding the same batch and a share of 1/N each, a data-parallel step is the plain step."""
    plain = _logreg(TrainingOptions(optimizer="sgd", max_grad_norm=0.5))
    parallel = _logreg(TrainingOptions(optimizer="sgd", max_grad_norm=0.5, data_parallel=True, world_size=size))
    params = {k: (v + 0.01 * np.arange(v.size).reshape(v.shape)).astype(v.dtype) if v.dtype == np.float32 else v
              for k, v in initial_params(plain).items()}
    want = interpret(plain, _batch(), params)
    got = interpret(parallel, {**_batch(), "replica_weight": np.float32(1 / size)}, params)
    for name, value in want.updates.items():
        np.testing.assert_allclose(got.updates[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(got.outputs["grad_norm"], want.outputs["grad_norm"], rtol=1e-6)


def test_training_graph_checks_its_options():
    with pytest.raises(Exception, match="world_size needs data_parallel"):
        TrainingOptions(world_size=2)
    forward = compile_model(CompileOptions("logreg", emit="ir")).forward
    graph = build_training_graph(forward, TrainingOptions(data_parallel=True, world_size=2))
    assert [v.name for v in graph.inputs][-1] == "replica_weight"
    (collective,) = [op for op in graph.ops if op.name == "all_reduce"]
    assert collective.attrs["world_size"] == 2 and collective.result.type == TensorType((650,), DType.f32)


def test_compile_records_the_world_size_and_verifies_semantics(tmp_path, capsys):
    assert main(["compile", "logreg", "--data-parallel", "-ws", "4", "--verify-semantics", "-o", str(tmp_path),
                 "--pef-name", "dp"]) == 0
    from backend.pef.file import read_pef
    pef = read_pef(tmp_path / "dp" / "dp.pef")
    assert pef.header.option("training.world_size") == 4
    assert pef.header.option("training.data_parallel") is True
    collectives = [k for k in pef.kernels if any(s.kind == "all_reduce" for s in k.stages)]
    assert len(collectives) == 1 and all(len(k.stages) == 1 and k.phase == "allreduce" for k in collectives)
    sections = {s.phase for s in pef.sections if set(s.kernels) & {pef.kernels.index(k) for k in collectives}}
    assert sections == {"allreduce"}


def test_kernel_validation_keeps_a_collective_alone():
    x = Buffer("%x", "input", (4,), "f32")
    y = Buffer("%y", "output", (4,), "f32")
    z = Buffer("%z", "output", (4,), "f32")
    read = Access("%x", 0, (1,))
    stage = AllReduceStage("%y", read, "sum", "data", 2)
    copy = MapStage("%z", Body((read,), (), (Node("arg", "f32", (), 0),)))
    validate(KernelProgram("k0", "all_reduce", "allreduce", "", (x, y), (stage,)))
    with pytest.raises(ProgramError, match="an all_reduce stage must be its kernel's only stage"):
        validate(KernelProgram("k0", "all_reduce", "allreduce", "", (x, y, z), (stage, copy)))


@pytest.fixture(scope="module")
def dp_logreg():
    options = TrainingOptions(optimizer="adamw", max_grad_norm=1.0, data_parallel=True, world_size=2)
    compiled = compile_model(CompileOptions("logreg", training=options))
    return compiled.pef, compiled.graph


def test_program_refuses_a_collective_without_a_communicator(dp_logreg):
    pef, _ = dp_logreg
    with pytest.raises(ExecutionError, match="is a collective over 2 replicas: the program needs a communicator"):
        Program(pef)
    with pytest.raises(ExecutionError, match="is a collective over 2 replicas, the communicator has 3 ranks"):
        Program(pef, communicator=Replicated(3))


def test_executor_runs_collectives_through_the_communicator(dp_logreg):
    """Native kernels and host collectives together give the interpreter's step, three steps in a row."""
    pef, graph = dp_logreg
    comm = Replicated(2)
    program = Program(pef, communicator=comm)
    params = initial_params(graph)
    for step in range(3):
        inputs = {**_batch(step), "replica_weight": np.float32(0.5)}
        want = interpret(graph, inputs, params)
        params.update(want.updates)
        got = program.run(inputs)
        np.testing.assert_allclose(got["loss"], want.outputs["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["grad_norm"], want.outputs["grad_norm"], rtol=1e-5)
    for name, value in params.items():
        np.testing.assert_allclose(program.params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert comm.calls == 3


def test_a_collective_fused_with_other_ops_is_a_backend_error():
    from backend.lowering import lower_graph
    from ir.errors import BackendError

    graph, _ = parse_with_positions("""graph @g {
  input %x : f32[8]
  %0 = fused(%x) : f32[8] {
  ^(%1: f32[8]):
    %2 = all_reduce(%1) {group = "data", world_size = 2} : f32[8]
    %3 = exp(%2) : f32[8]
    yield %3
  }
  output y = %0
}
""", "fused.ir")
    verify(graph)
    with pytest.raises(BackendError, match="a collective is a kernel of its own: it cannot be fused with other ops"):
        lower_graph(graph)
