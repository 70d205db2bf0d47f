"""Lowering: every op alone, and inside fused kernels, computes what the interpreter computes."""
from __future__ import annotations

import numpy as np
import pytest
from backend_graphs import decompose, fuse, fuse_phases, mlp, mlp_inputs
from backend_harness import assert_matches_interpreter, random_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.lowering import lower_graph
from backend.pef.stages import GemmStage, MapStage, ReduceStage
from ir.builder import Builder
from ir.dtypes import DType, f32, i32
from ir.errors import BackendError, Location
from ir.graph import Graph
from ir.ops import REGISTRY
from ir.types import TensorType


def _x(b: Builder, shape=(3, 4), dtype=f32, name="x"):
    return b.input(name, TensorType(shape, dtype))


def _pos(b: Builder, shape=(3, 4)):
    """A strictly positive input (for log, sqrt, ...)."""
    return b.add(b.abs(_x(b, shape)), b.scalar(0.5, f32))


def _binary(name):
    return lambda b: b.op(name, _x(b, (3, 4)), _x(b, (4,), name="y"))


def _unary(name, positive=False):
    return lambda b: b.op(name, _pos(b) if positive else _x(b))


def _compare(name):
    return lambda b: b.cast(b.op(name, _x(b, (2, 3)), _x(b, (2, 1), name="y")), dtype=f32)


#: op name -> builder of a small graph using it (every op but composites and `fused`)
CASES = {
    "all_reduce": lambda b: b.all_reduce(_x(b), group="data", world_size=3),
    **{n: _unary(n) for n in ("abs", "neg", "exp", "tanh", "sin", "cos", "erf", "sigmoid", "relu", "gelu", "silu")},
    **{n: _unary(n, positive=True) for n in ("log", "sqrt", "rsqrt")},
    **{n: _binary(n) for n in ("add", "sub", "mul", "div", "maximum", "minimum")},
    **{n: _compare(n) for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    "pow": lambda b: b.pow(_pos(b), _x(b, (3, 1), name="y")),
    "cast": lambda b: b.cast(b.mul(_x(b), b.scalar(3.0, f32)), dtype=i32),
    "where": lambda b: b.where(b.gt(_x(b), b.scalar(0.0, f32)), _x(b, (4,), name="y"), b.scalar(-1.0, f32)),
    "reshape": lambda b: b.reshape(_x(b, (2, 6)), shape=(3, 2, 2)),
    "transpose": lambda b: b.transpose(_x(b, (2, 3, 4)), perm=(2, 0, 1)),
    "broadcast_to": lambda b: b.broadcast_to(_x(b, (3, 1)), shape=(2, 3, 5)),
    "slice": lambda b: b.slice(_x(b, (5, 7)), starts=(1, 0), stops=(5, 7), steps=(2, 3)),
    "concat": lambda b: b.concat(_x(b, (2, 3)), b.exp(_x(b, (2, 2), name="y")), axis=1),
    "gather": lambda b: b.gather(_x(b, (7, 3)), _x(b, (2, 4), i32, name="idx7"), axis=0),
    "scatter_add": lambda b: b.scatter_add(_x(b, (2, 4, 3)), _x(b, (2, 4), i32, name="idx5"), axis=0, size=5),
    "pad": lambda b: b.pad(_x(b, (2, 3)), low=(1, 0), high=(0, 2), interior=(1, 1), value=-2.0),
    "dynamic_slice": lambda b: b.dynamic_slice(b.exp(_x(b, (3, 6, 2))), _x(b, (3,), i32, name="idx6"), axis=1, size=4),
    "dynamic_update_slice": lambda b: b.dynamic_update_slice(_x(b, (2, 3, 5, 2)), _x(b, (2, 3, 2, 2), name="u"),
                                                             _x(b, (2,), i32, name="idx5"), axis=2),
    "iota": lambda b: b.cast(b.iota(shape=(3, 4), axis=1, dtype=i32), dtype=f32),
    "full": lambda b: b.add(_x(b), b.full(shape=(3, 4), value=2.5, dtype=f32)),
    "constant": lambda b: b.mul(_x(b, (2, 2)), b.constant(value=((1.0, -2.0), (3.5, 0.25)), dtype=f32)),
    "causal_mask": lambda b: b.where(b.causal_mask(rows=4, cols=6, offset=1), _x(b, (4, 6)), b.scalar(0.0, f32)),
    "sum": lambda b: b.sum(b.mul(_x(b, (2, 3, 4)), _x(b, (4,), name="y")), axes=(0, 2), keepdims=True),
    "max": lambda b: b.max(_x(b, (2, 3, 4)), axes=(1,)),
    "argmax": lambda b: b.argmax(b.neg(_x(b, (3, 5))), axis=1),
    "matmul": lambda b: b.matmul(_x(b, (2, 3, 4)), _x(b, (5, 4), name="y"), transpose_b=True),
    "conv2d": lambda b: b.conv2d(_x(b, (2, 4, 6, 5)), _x(b, (6, 2, 3, 2), name="w"), stride=(2, 1),
                                 padding=(1, 1), dilation=(1, 2), groups=2),
    "max_pool2d": lambda b: b.max_pool2d(_x(b, (2, 3, 6, 5)), kernel=(3, 2), stride=(2, 2), padding=(1, 1)),
    "avg_pool2d": lambda b: b.avg_pool2d(_x(b, (2, 3, 6, 5)), kernel=(2, 2), padding=(1, 0)),
    "conv2d_input_grad": lambda b: b.conv2d_input_grad(
        _x(b, (2, 6, 4, 4)), _x(b, (6, 2, 3, 2), name="w"), stride=(2, 1), padding=(1, 1), dilation=(1, 2),
        groups=2, input_hw=(7, 4)),
    "conv2d_weight_grad": lambda b: b.conv2d_weight_grad(
        _x(b, (2, 4, 7, 4)), _x(b, (2, 6, 4, 4), name="g"), stride=(2, 1), padding=(1, 1), dilation=(1, 2),
        groups=2, kernel_hw=(3, 2)),
    "max_pool2d_grad": lambda b: b.max_pool2d_grad(_x(b, (2, 3, 6, 5)), _x(b, (2, 3, 3, 3), name="g"),
                                                   kernel=(3, 2), stride=(2, 2), padding=(1, 1)),
    "avg_pool2d_grad": lambda b: b.avg_pool2d_grad(_x(b, (2, 3, 4, 3)), kernel=(2, 2), stride=(2, 2),
                                                   padding=(1, 1), input_hw=(6, 5)),
}


def _graph(case) -> Graph:
    b = Builder(Graph("case"))
    b.output("out", case(b))
    return b.graph


def test_every_lowerable_op_has_a_case():
    lowerable = {n for n, d in REGISTRY.items() if not d.is_composite() and n != "fused"}
    assert lowerable - set(CASES) == set()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused"])
def test_op_matches_interpreter(name, fused):
    graph = _graph(CASES[name])
    if fused:
        fuse(graph, 0, len(graph.ops))
    programs = assert_matches_interpreter(graph)
    assert len(programs) == (1 if fused else len(graph.ops))


def test_elementwise_chain_is_one_loop_without_temporaries():
    b = Builder(Graph("chain"))
    x = _x(b, (2, 3, 4))
    t = b.reshape(b.transpose(x, perm=(0, 2, 1)), shape=(2, 4, 3))
    y = b.add(b.tanh(t), b.broadcast_to(b.slice(_x(b, (5,), name="y"), starts=(1,), stops=(4,)), shape=(2, 4, 3)))
    b.output("out", b.mul(y, b.cast(b.iota(shape=(4, 3), axis=0, dtype=i32), dtype=f32)))
    graph = fuse(b.graph, 0, len(b.graph.ops))
    (program,) = assert_matches_interpreter(graph)
    assert [type(s) for s in program.stages] == [MapStage]
    assert program.with_role("temp") == []
    reads = program.stages[0].body.reads
    assert {r.strides for r in reads if r.buffer == "%x"} == {(12, 1, 4)}
    assert {(r.offset, r.strides) for r in reads if r.buffer == "%y"} == {(1, (0, 0, 1))}


def test_reshape_of_a_transpose_materializes_once():
    b = Builder(Graph("regroup"))
    t = b.transpose(_x(b, (2, 3, 4)), perm=(1, 0, 2))
    b.output("out", b.exp(b.reshape(t, shape=(6, 4))))
    b.output("flat", b.reshape(t, shape=(24,)))
    graph = fuse(b.graph, 0, len(b.graph.ops))
    (program,) = assert_matches_interpreter(graph)
    (temp,) = program.with_role("temp")  # axes 0, 1 of the transpose do not merge without a copy
    assert temp.shape == (3, 2, 4)
    assert [{r.buffer for r in s.body.reads} for s in program.stages] == [{"%x"}, {temp.name}, {temp.name}]


def test_gemm_takes_bias_and_activation_as_epilogue():
    graph = fuse(decompose(mlp()), 0, 3)
    programs = assert_matches_interpreter(graph, mlp_inputs())
    (stage,) = programs[0].stages
    assert isinstance(stage, GemmStage) and stage.epilogue is not None
    assert {n.op for n in stage.epilogue.nodes} >= {"acc", "add", "tanh"}
    assert programs[0].with_role("temp") == []


def test_reduction_takes_its_operand_as_prologue():
    b = Builder(Graph("sumsq"))
    x = _x(b, (4, 6))
    b.output("out", b.div(b.sum(b.mul(x, x), axes=(1,)), b.scalar(6.0, f32)))
    graph = fuse(b.graph, 0, len(b.graph.ops))
    (program,) = assert_matches_interpreter(graph)
    (stage,) = program.stages
    assert isinstance(stage, ReduceStage) and stage.combine == "add" and stage.axes == (1,)
    assert [n.op for n in stage.body.nodes] == ["arg", "mul"]
    assert [n.op for n in stage.epilogue.nodes] == ["acc", "const", "div"]


def test_whole_training_step_fused_by_phase():
    graph = fuse_phases(decompose(mlp()))
    programs = assert_matches_interpreter(graph, mlp_inputs())
    assert [p.phase for p in programs] == ["fwd", "opt"]


def test_composite_ops_are_refused():
    b = Builder(Graph("soft"))
    with b.at(Location("model.rdl", 7, 9)):
        b.output("out", b.softmax(_x(b)))
    with pytest.raises(BackendError, match=r"model.rdl:7:9.*'softmax'.*composite.*decompose"):
        lower_graph(b.graph)


def test_region_result_that_is_an_argument_is_copied():
    b = Builder(Graph("pass"))
    x = _x(b)
    b.output("same", x)
    b.output("twice", b.mul(x, b.scalar(2.0, f32)))
    graph = b.graph
    graph.outputs["again"] = graph.outputs["twice"]
    fuse(graph, 0, len(graph.ops))
    assert_matches_interpreter(graph)


_VIEWS = st.sampled_from(["transpose", "reshape", "slice", "broadcast", "exp"])


@settings(max_examples=40, deadline=None)
@given(st.lists(_VIEWS, min_size=1, max_size=5), st.integers(0, 2**16))
def test_random_view_chains(steps, seed):
    """Any chain of views and elementwise ops lowers to kernels the interpreter agrees with."""
    rng = np.random.default_rng(seed)
    b = Builder(Graph("views"))
    v = _x(b, tuple(int(d) for d in rng.integers(1, 4, size=3)))
    for step in steps:
        shape = v.type.shape
        if step == "transpose":
            v = b.transpose(v, perm=tuple(int(p) for p in rng.permutation(len(shape))))
        elif step == "reshape":
            v = b.reshape(v, shape=(int(np.prod(shape)),) if len(shape) > 1 else (1, shape[0]))
        elif step == "slice" and min(shape) > 1:
            v = b.slice(v, starts=(1,) + (0,) * (len(shape) - 1), stops=shape)
        elif step == "broadcast":
            v = b.broadcast_to(v, shape=(2,) + shape)
        else:
            v = b.exp(v)
    b.output("out", b.add(v, b.scalar(1.0, f32)))
    graph = b.graph
    inputs = random_inputs(graph, seed)
    assert_matches_interpreter(graph, inputs)
    assert_matches_interpreter(fuse(graph, 0, len(graph.ops)), inputs)


def test_dtypes_survive():
    b = Builder(Graph("bf"))
    x = b.input("x", TensorType((4, 4), DType.bf16))
    b.output("out", b.matmul(b.relu(x), x))
    programs = assert_matches_interpreter(fuse(b.graph, 0, 2))
    assert {buf.dtype for buf in programs[0].buffers} == {"bf16"}


def _zoo_training_graph(name: str, pipeline: str):
    passes = pytest.importorskip("compiler.passes")
    if any(p not in passes.PASSES for p in pipeline.split(",")):
        pytest.skip(f"a pass of '{pipeline}' is not available")
    from compiler.config import resolve
    from compiler.driver import find_model
    from compiler.frontend import lower, parse_module
    from compiler.training import build_training_graph
    module = parse_module(find_model(name).source)
    graph = build_training_graph(lower(module, resolve(module.schema, []), training=True))
    return passes.PassManager.parse(pipeline).run(graph)


@pytest.mark.parametrize("name, pipeline", [
    *((n, "decompose,canonicalize,cse,dce,fuse") for n in ("logreg", "mlp", "lenet", "gpt2", "llama")),
    ("lenet", "decompose"),
])
def test_zoo_training_steps_match_the_interpreter(name, pipeline):
    """A zoo model's whole training step, lowered kernel by kernel (fused by the `fuse` pass, or not)."""
    graph = _zoo_training_graph(name, pipeline)
    inputs = random_inputs(graph)
    inputs["lr"] = np.asarray(0.01, np.float32)
    programs = assert_matches_interpreter(graph, inputs)
    if pipeline.endswith("fuse"):
        assert sum(len(p.stages) for p in programs) > len(programs)


def test_a_kernel_output_used_inside_is_written_once_and_read_back():
    """conv + bias is exported (for the backward pass) and feeds a relu: the conv writes it
    through its epilogue, the relu reads it; nothing is recomputed, no temporary remains."""
    b = Builder(Graph("convrelu"))
    y = b.add(b.conv2d(_x(b, (2, 3, 6, 6)), _x(b, (4, 3, 3, 3), name="w"), padding=(1, 1)),
              b.reshape(_x(b, (4,), name="bias"), shape=(1, 4, 1, 1)))
    b.output("pre", y)
    b.output("post", b.relu(y))
    (program,) = assert_matches_interpreter(fuse(b.graph, 0, len(b.graph.ops)))
    conv, relu = program.stages
    pre, post = (buffer.name for buffer in program.with_role("output"))
    assert conv.kind == "conv2d" and conv.out == pre and conv.epilogue is not None
    assert relu.kind == "map" and relu.out == post and {r.buffer for r in relu.body.reads} == {pre}
    assert program.with_role("temp") == []
