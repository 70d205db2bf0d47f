"""The JIT's optimized paths on shapes large enough to use them (vectorized O3 code, the
blocked gemm, threads), its f32 math against exact values, fused epilogues, and the cache."""
from __future__ import annotations

import ctypes
import math
import os
import re

import attrs
import numpy as np
import pytest

from backend.pef.program import KernelProgram
from backend.pef.reference import run_kernel
from backend.pef.records import Access, Body, Buffer, Node
from backend.pef.stages import MapStage, ReduceStage
from backend.lowering import lower_graph
from compiler.passes import PassManager
from ir.builder import Builder
from ir.dtypes import DType, bf16, f32, i32
from ir.errors import ConfigError
from ir.interpreter import interpret
from ir.types import TensorType
from kernels import run_kernels
from runtime.jit import engine
from runtime.jit.cache import DiskCache
from runtime.jit.gemm import SMALL
from runtime.jit.host import host_tile
from runtime.jit.kernel import QUICK_WORK, StagePlan, code_key, lower_program
from runtime.jit.library import Jit
from runtime.jit.module import Aliasing
from runtime.jit.parallel import Parallel, default_threads

RNG = np.random.default_rng(7)


def unary(op: str, x: np.ndarray, **attrs) -> np.ndarray:
    b = Builder()
    b.output("y", getattr(b, op)(b.input("x", TensorType(x.shape, DType.of(x))), **attrs))
    return run_kernels(b.graph, {"x": x})[0]["y"]


def ulps(got: np.ndarray, exact: np.ndarray) -> float:
    """Largest error in units of the f32 spacing at the exact value (where that is finite)."""
    exact32 = exact.astype(np.float32)
    finite = np.isfinite(exact32) & (np.abs(exact32) > np.finfo(np.float32).tiny)
    spacing = np.spacing(np.abs(exact32[finite])).astype(np.float64)
    return float(np.max(np.abs(got[finite].astype(np.float64) - exact[finite]) / spacing))


MATH = {  # op: (exact float64 function, sample range)
    "exp": (np.exp, (-87.0, 88.0)), "log": (np.log, (1e-30, 1e30)), "tanh": (np.tanh, (-12.0, 12.0)),
    "erf": (np.vectorize(math.erf), (-5.0, 5.0)), "sin": (np.sin, (-200.0, 200.0)),
    "cos": (np.cos, (-200.0, 200.0)), "sqrt": (np.sqrt, (0.0, 1e6)),
}


@pytest.mark.parametrize("op", MATH)
def test_vectorized_math_is_within_a_few_ulp(op):
    exact, (low, high) = MATH[op]
    if op == "log":
        x = np.exp(RNG.uniform(np.log(low), np.log(high), 1 << 16))
    else:
        x = RNG.uniform(low, high, 1 << 16)
    near_zero = RNG.uniform(0.0 if low >= 0 else -1e-3, 1e-3, 4096) if op != "log" else RNG.uniform(0.5, 2.0, 4096)
    x = np.concatenate([x, near_zero])
    x = x.astype(np.float32)
    assert x.size >= QUICK_WORK
    got, want = unary(op, x), exact(x.astype(np.float64))
    if op in ("sin", "cos"):  # near their zeros the reduced argument's absolute error shows
        assert np.max(np.abs(got - want)) < 2.5e-7
        big = np.abs(want) > 0.1
        assert ulps(got[big], want[big]) <= 4.0
    else:
        assert ulps(got, want) <= 3.0


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e-30, -3.0, 88.8, -104.0, 1e30],
                    np.float32)


@pytest.mark.parametrize("op", ["exp", "log", "tanh", "erf", "sin", "cos", "sqrt"])
def test_special_values_follow_numpy(op):
    x = np.tile(SPECIALS, 2048)
    got = unary(op, x)[:len(SPECIALS)]
    with np.errstate(all="ignore"):
        want = getattr(np, op)(SPECIALS) if op != "erf" else np.array(
            [math.erf(v) if not math.isnan(v) else math.nan for v in SPECIALS.astype(np.float64)], np.float32)
    if op in ("sin", "cos"):  # beyond |x| = 8192 the reduction is not exact (documented)
        got, want = got[:-1], want[:-1]
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=0)
    numbers = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))


def test_exp_into_the_denormals_and_below():
    """From -110 to -80 (results denormal, then rounding to zero below -150 ln 2) and -inf: each
    result the f32 nearest exp(x) but for one denormal step, zero wherever that rounds to zero."""
    x = np.concatenate([np.linspace(-110.0, -80.0, QUICK_WORK, dtype=np.float32), [-np.inf]]).astype(np.float32)
    got, want = unary("exp", x).astype(np.float64), np.exp(x.astype(np.float64))
    step = np.maximum(np.spacing(want.astype(np.float32)).astype(np.float64), 2.0 ** -149)
    assert np.all(np.abs(got - want) <= 1.5 * step)
    assert np.all(got[want.astype(np.float32) == 0] == 0)


#: a packed f32 instruction on a 256- or 512-bit register: the host's vector width is its own
PACKED_F32 = re.compile(r"\bv\w+ps\b[^\n]*%[yz]mm\d+")


@pytest.mark.parametrize("cpu", [None, "haswell", "znver5"], ids=["host", "avx2", "avx512"])
def test_exp_map_compiles_to_vector_code_without_calls(cpu):
    """The exp kernel's body is packed f32 arithmetic with no calls, for the host and for an
    AVX2-only and an AVX-512 CPU (whose 512-bit registers LLVM uses there)."""
    b = Builder()
    b.output("y", b.exp(b.input("x", TensorType((1 << 16,), f32))))
    program = _programs(b.graph)[0]
    module, plans = lower_program(program, "asmcheck")
    assert sum(p.work for p in plans) >= QUICK_WORK
    body = engine.assembly(module.ir_text(), cpu=cpu).split("rdu_asmcheck_s0:")[1]
    assert len(PACKED_F32.findall(body)) >= 16
    assert not re.search(r"\bcall", body)
    if cpu == "znver5":
        assert "%zmm" in body


def test_a_map_comparing_an_index_stays_in_the_preferred_256_bit_registers():
    """A cross-entropy gradient's map (exp less a one-hot of 64-bit indices) on a CPU that prefers
    256-bit vectors: no 512-bit register (an i64 index vector there ran the map 2.7x slower), while
    a 16-lane gemm tile still gets them."""
    b = Builder()
    x, labels = b.input("x", TensorType((64, 1024), f32)), b.input("labels", TensorType((64,), i32))
    classes = b.iota(shape=(64, 1024), axis=1, dtype=i32)
    onehot = b.cast(b.eq(classes, b.reshape(labels, shape=(64, 1))), dtype=f32)
    b.output("y", b.sub(b.exp(x), onehot))
    (program,) = _programs(PassManager.parse("fuse").run(b.graph))
    module, _ = lower_program(program, "asmcheck")
    body = engine.assembly(module.ir_text(), cpu="skylake-avx512").split("rdu_asmcheck_s0:")[1]
    assert len(PACKED_F32.findall(body)) >= 16 and "%zmm" not in body


def _programs(graph):
    return lower_graph(graph)


def matmul_case(a_shape, b_shape, dtype=f32, **attrs):
    b = Builder()
    x = b.input("a", TensorType(a_shape, dtype))
    y = b.input("b", TensorType(b_shape, dtype))
    b.output("c", b.matmul(x, y, **attrs))
    inputs = {"a": RNG.standard_normal(a_shape).astype(dtype.np), "b": RNG.standard_normal(b_shape).astype(dtype.np)}
    return b.graph, inputs


@pytest.mark.parametrize("a_shape,b_shape,attrs", [
    ((130, 300), (300, 70), {}),
    ((300, 130), (300, 70), {"transpose_a": True}),
    ((130, 300), (70, 300), {"transpose_b": True}),
    ((1, 257), (257, 513), {}),
    ((600, 61), (61, 5), {}),
    ((3, 37, 41), (3, 41, 29), {}),
    ((2, 3, 37, 41), (41, 29), {}),
    ((64, 1000), (1000, 48), {}),  # several depth blocks: partial sums in the output
])
def test_blocked_gemm_matches_numpy(a_shape, b_shape, attrs):
    graph, inputs = matmul_case(a_shape, b_shape, **attrs)
    program = _programs(graph)[0]
    stage = program.stages[0]
    assert stage.m * stage.n * stage.k >= SMALL
    got = run_kernels(graph, inputs)[0]["c"]
    want = interpret(graph, inputs).outputs["c"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * math.sqrt(stage.k))


@pytest.mark.parametrize("a_shape,b_shape", [((96, 520), (520, 40)), ((12, 20000), (20000, 50))])
def test_blocked_gemm_with_bf16_output(a_shape, b_shape):
    """bf16 results sum all of K in f32 before rounding (deep ones in smaller packed panels)."""
    graph, inputs = matmul_case(a_shape, b_shape, bf16)
    got = run_kernels(graph, inputs)[0]["c"].astype(np.float32)
    exact = inputs["a"].astype(np.float32) @ inputs["b"].astype(np.float32)
    np.testing.assert_allclose(got, exact, rtol=1e-2, atol=1e-2 * math.sqrt(a_shape[1] / 100))


def fused(graph):
    return PassManager.parse("decompose,fuse").run(graph)


def test_fused_epilogue_bias_gelu_residual():
    b = Builder()
    x = b.input("x", TensorType((128, 96), f32))
    w = b.input("w", TensorType((96, 200), f32))
    bias = b.input("bias", TensorType((200,), f32))
    res = b.input("res", TensorType((128, 200), f32))
    b.output("y", b.add(b.gelu(b.add(b.matmul(x, w), bias), approximate="none"), res))
    inputs = {n: RNG.standard_normal(v.type.shape).astype(np.float32) for n, v in
              ((v.name, v) for v in b.graph.inputs)}
    want = interpret(b.graph, inputs).outputs["y"]
    graph = fused(b.graph)
    programs = _programs(graph)
    assert [s.kind for s in programs[0].stages] == ["gemm"] and programs[0].stages[0].epilogue is not None
    np.testing.assert_allclose(run_kernels(graph, inputs)[0]["y"], want, rtol=1e-4, atol=1e-4)


def test_fused_softmax_rows():
    b = Builder()
    x = b.input("x", TensorType((64, 8, 257), f32))
    b.output("y", b.softmax(x, axis=-1))
    inputs = {"x": (RNG.standard_normal((64, 8, 257)) * 10).astype(np.float32)}
    want = interpret(b.graph, inputs).outputs["y"]
    np.testing.assert_allclose(run_kernels(fused(b.graph), inputs)[0]["y"], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axes", [(2,), (0,), (1,), (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_large_reductions(op, axes):
    b = Builder()
    x = b.input("x", TensorType((48, 130, 33), f32))
    b.output("y", getattr(b, op)(x, axes=axes))
    inputs = {"x": RNG.standard_normal((48, 130, 33)).astype(np.float32)}
    want = interpret(b.graph, inputs).outputs["y"]
    np.testing.assert_allclose(run_kernels(b.graph, inputs)[0]["y"], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_argmax_first_maximum_and_first_nan(axis):
    x = np.round(RNG.standard_normal((300, 257)) * 2).astype(np.float32)  # many ties
    x[5, 7] = np.nan
    x[9, 3] = np.nan
    b = Builder()
    b.output("i", b.argmax(b.input("x", TensorType(x.shape, f32)), axis=axis))
    got = run_kernels(b.graph, {"x": x})[0]["i"]
    np.testing.assert_array_equal(got, np.argmax(x, axis=axis).astype(np.int32))


@pytest.mark.parametrize("length", [1, 7, 8, 9, 17, 64, 301])
def test_argmax_along_the_last_axis_finds_what_one_chain_finds(length):
    """argmax along the last axis (interleaved partial results): ties, nan at every position of
    some row, rows of -inf and of signed zeros, each as numpy's first maximum or first nan."""
    rows = [np.round(RNG.standard_normal(length)).astype(np.float32) for _ in range(length + 3)]
    for i in range(length):
        rows[i][i:] = np.nan if i % 2 else rows[i][i:]
        rows[i][i] = np.nan
    rows[length][:] = -np.inf
    rows[length + 1] = np.where(np.arange(length) % 3, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
    x = np.stack(rows)
    b = Builder()
    b.output("i", b.argmax(b.input("x", TensorType(x.shape, f32)), axis=1))
    got = run_kernels(b.graph, {"x": x})[0]["i"]
    np.testing.assert_array_equal(got, np.argmax(x, axis=1).astype(np.int32))


def test_argmax_of_contiguous_rows_compares_a_vector_at_a_time():
    """argmax along contiguous f32 rows (a model's logits) compares whole vectors of the host's width
    (one partial result per lane), and finds numpy's first maximum past the last whole vector."""
    b = Builder()
    b.output("i", b.argmax(b.input("x", TensorType((4, 1003), f32)), axis=1))
    program = _programs(b.graph)[0]
    module, _ = lower_program(program, "argmax")
    body = engine.assembly(module.ir_text()).split("rdu_argmax_s0:")[1]
    register = {16: "zmm", 8: "ymm", 4: "xmm"}[host_tile().lanes]
    assert re.search(rf"\bvcmp\w*ps\b[^\n]*%{register}", body)
    x = np.round(RNG.standard_normal((4, 1003)) * 2).astype(np.float32)
    x[1, 1001] = 99.0  # the best in the tail
    x[2, 500] = x[2, 900] = 99.0  # the first of two
    got = run_kernels(b.graph, {"x": x})[0]["i"]
    np.testing.assert_array_equal(got, np.argmax(x, axis=1).astype(np.int32))
    assert got[1] == 1001 and got[2] == 500


def test_max_propagates_nan():
    x = RNG.standard_normal((200, 300)).astype(np.float32)
    x[17, 250] = np.nan
    b = Builder()
    b.output("m", b.max(b.input("x", TensorType(x.shape, f32)), axes=(1,)))
    got = run_kernels(b.graph, {"x": x})[0]["m"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x.max(axis=1)))


def _chain_extremum(row: np.ndarray, combine: str) -> np.float32:
    """One left-to-right chain of IEEE maximum (or minimum): nan wins, -0 < +0."""
    best = np.float32(-np.inf if combine == "max" else np.inf)
    for v in row:
        if np.isnan(v) or np.isnan(best):
            best = np.float32(np.nan)
        elif v == best:
            best = (min if combine == "max" else max)(v, best, key=np.signbit)
        else:
            best = (max if combine == "max" else min)(v, best)
    return best


@pytest.mark.parametrize("length", [1, 7, 8, 9, 17, 64, 301])
@pytest.mark.parametrize("combine", ["max", "min"])
def test_float_max_and_min_give_one_chains_bits(combine, length):
    """A float max or min along the last axis (a chain of integer order keys, vectorized): nan at
    every position of some row, signed zeros, infinities and ties, each row the bits of one
    left-to-right chain."""
    rows = [np.round(RNG.standard_normal(length) * 2).astype(np.float32) for _ in range(length + 5)]
    for i in range(length):
        rows[i][i] = np.nan
    rows[length] = np.where(np.arange(length) % 2, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
    rows[length + 1][:] = -np.inf
    rows[length + 2][-1] = np.inf
    rows[length + 3][:] = np.inf
    x = np.stack(rows)
    body = Body((Access("x", 0, (length, 1)),), (), (Node("arg", "f32", (), 0),))
    identity = -np.inf if combine == "max" else np.inf
    program = KernelProgram("k", combine, None, "", (Buffer("x", "input", x.shape, "f32"),
                                                     Buffer("m", "output", (len(rows),), "f32")),
                            (ReduceStage("m", x.shape, (1,), combine, identity, body),))
    (native,) = Jit(use_cache=False).load([program])
    got = np.empty(len(rows), np.float32)
    _call(native, [x, got], Parallel(2))
    want = np.array([_chain_extremum(row, combine) for row in x], np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))
    np.testing.assert_array_equal(got, run_kernel(program, {"x": x})["m"])


def test_a_masked_row_max_vectorizes():
    """A causal softmax's row max (a body selecting -inf past the diagonal) compiles to vector
    integer maxima, not a scalar chain of NaN-aware compares."""
    b = Builder()
    scores = b.input("s", TensorType((4, 128, 128), f32))
    b.output("m", b.max(b.where(b.causal_mask(rows=128, cols=128), scores, b.scalar(-np.inf, f32)), axes=(2,)))
    (program,) = lower_graph(PassManager.parse("decompose,fuse").run(b.graph))
    module, _ = lower_program(program, "masked")
    assembly = engine.assembly(module.ir_text())
    assert re.search(r"vpmaxsd\s+%[yz]mm", assembly), "no vector integer max"


@pytest.mark.parametrize("stride,padding,dilation,groups", [((1, 1), (1, 1), (1, 1), 1), ((2, 2), (2, 1), (2, 1), 2)])
def test_conv2d_and_its_gradients_on_large_shapes(stride, padding, dilation, groups):
    b = Builder()
    x = b.input("x", TensorType((4, 6, 21, 19), f32))
    w = b.input("w", TensorType((8, 6 // groups, 3, 3), f32))
    y = b.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = b.input("g", y.type)
    conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    b.output("y", y)
    b.output("dx", b.conv2d_input_grad(g, w, input_hw=(21, 19), **conv))
    b.output("dw", b.conv2d_weight_grad(x, g, kernel_hw=(3, 3), **conv))
    inputs = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in b.graph.inputs}
    want = interpret(b.graph, inputs).outputs
    got = run_kernels(b.graph, inputs)[0]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 4), (2, 16, 20, 18, 32)], ids=["loop-nest", "blocked"])
@pytest.mark.parametrize("along", ["rows", "columns"])
def test_conv2d_epilogue_reading_a_tensor_broadcast_along_one_spatial_axis(shape, along):
    """The epilogue's read does not walk (OH, OW) as the gemm's one column index does."""
    n, c, h, w, o = shape
    b = Builder()
    x = b.input("x", TensorType((n, c, h, w), f32))
    k = b.input("k", TensorType((o, c, 3, 3), f32))
    t = b.input("t", TensorType((w,) if along == "rows" else (h, 1), f32))
    y = b.conv2d(x, k, padding=(1, 1))
    b.output("z", b.mul(b.add(y, t), t))
    graph = fused(b.graph)
    stages = [s for p in _programs(graph) for s in p.stages]
    assert [s.kind for s in stages] == ["conv2d"] and stages[0].epilogue is not None
    inputs = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in b.graph.inputs}
    want = interpret(b.graph, inputs).outputs["z"]
    np.testing.assert_allclose(run_kernels(graph, inputs)[0]["z"], want, rtol=1e-4, atol=1e-4)


def test_pooling_and_gradients_on_large_shapes():
    b = Builder()
    x = b.input("x", TensorType((4, 8, 30, 28), f32))
    attrs = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}
    mx, avg = b.max_pool2d(x, **attrs), b.avg_pool2d(x, **attrs)
    g = b.input("g", mx.type)
    b.output("max", mx)
    b.output("avg", avg)
    b.output("dmax", b.max_pool2d_grad(x, g, **attrs))
    b.output("davg", b.avg_pool2d_grad(g, input_hw=(30, 28), **attrs))
    inputs = {"x": np.round(RNG.standard_normal((4, 8, 30, 28)) * 3).astype(np.float32),
              "g": RNG.standard_normal(mx.type.shape).astype(np.float32)}
    want = interpret(b.graph, inputs).outputs
    got = run_kernels(b.graph, inputs)[0]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_embedding_gather_and_scatter_add():
    b = Builder()
    table = b.input("table", TensorType((500, 64), f32))
    ids = b.input("ids", TensorType((8, 128), i32))
    rows = b.gather(table, ids)
    b.output("rows", rows)
    b.output("grad", b.scatter_add(b.input("up", rows.type), ids, axis=0, size=500))
    inputs = {"table": RNG.standard_normal((500, 64)).astype(np.float32),
              "ids": RNG.integers(0, 500, (8, 128)).astype(np.int32),
              "up": RNG.standard_normal((8, 128, 64)).astype(np.float32)}
    want = interpret(b.graph, inputs).outputs
    got = run_kernels(b.graph, inputs)[0]
    np.testing.assert_array_equal(got["rows"], want["rows"])
    np.testing.assert_allclose(got["grad"], want["grad"], rtol=1e-5, atol=1e-5)


def _call(native, arrays, parallel):
    args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
    for stage in native.stages:
        assert parallel.run(stage.fn, args, stage.plan.extent, stage.plan.work, stage.plan.pieces) == 0


def test_threads_split_work_without_changing_a_bit():
    b = Builder()
    x = b.input("x", TensorType((256, 384), f32))
    w = b.input("w", TensorType((384, 320), f32))
    h = b.tanh(b.matmul(x, w))
    b.output("h", h)
    b.output("s", b.sum(h, axes=(0,)))
    graph = fused(b.graph)
    inputs = {"x": RNG.standard_normal((256, 384)).astype(np.float32),
              "w": RNG.standard_normal((384, 320)).astype(np.float32)}
    programs = _programs(graph)
    natives = Jit().load(programs)
    results = []
    for threads in (1, 2, 3):
        env = dict(inputs)
        for program, native in zip(programs, natives):
            arrays = []
            for buf in program.buffers:
                name = buf.name.lstrip("%")
                if buf.role != "input":
                    env[name] = np.empty(buf.shape, DType(buf.dtype).np)
                arrays.append(env[name])
            _call(native, arrays, Parallel(threads))
        results.append({k: v.copy() for k, v in env.items() if k not in inputs})
    for other in results[1:]:
        for name in results[0]:
            np.testing.assert_array_equal(other[name], results[0][name])


@pytest.mark.parametrize("value, threads", [("3", 3), (" 2 ", 2), ("", None)])
def test_rduflow_num_threads_sets_the_thread_count(monkeypatch, value, threads):
    monkeypatch.setenv("RDUFLOW_NUM_THREADS", value)
    assert default_threads() == (threads or max(1, min(len(os.sched_getaffinity(0)), 8)))


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "4x"])
def test_a_bad_rduflow_num_threads_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv("RDUFLOW_NUM_THREADS", value)
    with pytest.raises(ConfigError, match=f"RDUFLOW_NUM_THREADS must be a positive integer, got '{value}'"):
        Jit(use_cache=False)


def test_cache_entry_round_trip_and_damage(tmp_path):
    cache = DiskCache(tmp_path)
    plans = [StagePlan("rdu_x_s0", 7, 100, 4)]
    cache.put("ab" * 16, b"object bytes", plans)
    assert cache.get("ab" * 16) == (b"object bytes", plans)
    assert not list(tmp_path.rglob(".tmp-*"))
    path = cache.path("ab" * 16)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert cache.get("ab" * 16) is None
    path.write_bytes(b"garbage")
    assert cache.get("ab" * 16) is None
    assert cache.get("cd" * 16) is None


def test_damaged_cache_entries_are_rebuilt(tmp_path):
    graph, inputs = matmul_case((40, 50), (50, 30))
    programs = _programs(graph)
    first = Jit(DiskCache(tmp_path))
    first.load(programs)
    for path in tmp_path.rglob("*.o"):
        path.write_bytes(path.read_bytes()[:-3])
    second = Jit(DiskCache(tmp_path))
    second.load(programs)
    assert second.stats.compiled == first.stats.compiled == 1 and second.stats.cached == 0
    third = Jit(DiskCache(tmp_path))
    third.load(programs)
    assert third.stats.cached == 1 and third.stats.compiled == 0


def test_identical_kernels_share_native_code():
    b = Builder()
    x = b.input("x", TensorType((64, 64), f32))
    y = b.input("y", TensorType((64, 64), f32))
    b.output("a", b.tanh(x))
    b.output("b", b.tanh(y))
    jit = Jit()
    natives = jit.load(_programs(b.graph))
    assert natives[0] is natives[1] and jit.stats.shared == 1


def test_kernel_program_buffers_need_not_be_named_alike():
    body = Body((Access("p", 0, (1,)),), (), (Node("arg", "f32", (), 0), Node("neg", "f32", (0,))))
    one = KernelProgram("k", "neg", None, "", (Buffer("p", "input", (8,), "f32"),
                                                   Buffer("q", "output", (8,), "f32")), (MapStage("q", body),))
    other = KernelProgram("j", "neg", None, "", (Buffer("r", "input", (8,), "f32"),
                                                     Buffer("s", "output", (8,), "f32")),
                             (MapStage("s", Body((Access("r", 0, (1,)),), (), body.nodes)),))
    assert code_key(one) == code_key(other)


def _in_place_scale() -> KernelProgram:
    """y = 2x + 1 over 4096 elements: the program the backend makes of an update written over its operand."""
    nodes = (Node("arg", "f32", (), 0), Node("const", "f32", (), 2.0), Node("mul", "f32", (0, 1)),
             Node("const", "f32", (), 1.0), Node("add", "f32", (2, 3)))
    return KernelProgram("k", "scale", None, "", (Buffer("x", "input", (4096,), "f32"),
                                                  Buffer("y", "output", (4096,), "f32")),
                         (MapStage("y", Body((Access("x", 0, (1,)),), (), nodes)),))


def test_a_stage_writing_over_its_operand_runs_vectorized_without_overlap_checks():
    """Buffers at the same bytes share one pointer (`Aliasing`), so the vectorizer needs no run-time
    overlap check; with two overlapping pointers it adds one, which equal pointers fail into the
    scalar loop. The shared-pointer kernel gives the exact result in place, on any thread count."""
    program = _in_place_scale()
    shared, overlapping = Aliasing((0, 0), (True, True)), Aliasing((0, 1), (False, False))
    checks = {}
    for name, aliasing in (("shared", shared), ("overlapping", overlapping)):
        module, _ = lower_program(program, "inplace", aliasing)
        checks[name] = "diff.check" in str(engine._optimized(module.ir_text(), engine.target_machine(), 3))
    assert checks == {"shared": False, "overlapping": True}
    assert code_key(program, shared) != code_key(program) == code_key(program, Aliasing.disjoint(2))
    x = np.linspace(-3, 3, 4096, dtype=np.float32)
    for threads in (1, 2):
        data = x.copy()
        (native,) = Jit(use_cache=False, threads=threads).load([program], [shared])
        (stage,) = native.stages
        args = (ctypes.c_void_p * 2)(data.ctypes.data, data.ctypes.data)
        assert Parallel(threads).run(stage.fn, args, stage.plan.extent, stage.plan.work, stage.plan.pieces) == 0
        np.testing.assert_array_equal(data, x * np.float32(2) + np.float32(1))


def _moment_updates(read_new_m: tuple[int, int]) -> KernelProgram:
    """An optimizer-like run of map stages over (64, 64), written over their operands:
    m' = 7/8 m + 1/8 g, v' = 63/64 v + 1/64 g g, p' = p - m' / 8 (sqrt(v') + 2^-20),
    the last reading m' with strides `read_new_m`."""
    def const(value):
        return Node("const", "f32", (), value)
    arg = [Node("arg", "f32", (), i) for i in range(3)]
    whole = (64, 1)
    m = Body((Access("m", 0, whole), Access("g", 0, whole)), (),
             (arg[0], const(0.875), Node("mul", "f32", (0, 1)), arg[1], const(0.125), Node("mul", "f32", (3, 4)),
              Node("add", "f32", (2, 5))))
    v = Body((Access("v", 0, whole), Access("g", 0, whole)), (),
             (arg[0], const(0.984375), Node("mul", "f32", (0, 1)), arg[1], Node("mul", "f32", (3, 3)), const(0.015625),
              Node("mul", "f32", (4, 5)), Node("add", "f32", (2, 6))))
    p = Body((Access("p", 0, whole), Access("m2", 0, read_new_m), Access("v2", 0, whole)), (),
             (arg[0], arg[1], arg[2], Node("sqrt", "f32", (2,)), const(2.0 ** -20), Node("add", "f32", (3, 4)),
              Node("div", "f32", (1, 5)), const(0.125), Node("mul", "f32", (6, 7)), Node("sub", "f32", (0, 8))))
    buffers = tuple(Buffer(name, role, (64, 64), "f32") for name, role in
                    (("m", "input"), ("g", "input"), ("v", "input"), ("p", "input"),
                     ("m2", "output"), ("v2", "output"), ("p2", "output")))
    return KernelProgram("k", "adam", None, "", buffers, (MapStage("m2", m), MapStage("v2", v), MapStage("p2", p)))


@pytest.mark.parametrize("read_new_m, functions", [((64, 1), 1), ((1, 64), 2)])
def test_map_stages_over_one_shape_run_as_one_loop_when_each_step_reads_only_its_element(read_new_m, functions):
    """Consecutive maps whose reads of the run's outputs are element-for-element become one loop (an
    optimizer's updates pass over memory once); a transposed read of an earlier output (which needs
    all of it) keeps its own loop. In place, 1 and 2 threads give the same bits, which match the stages
    run one by one up to which product of a multiply-add LLVM contracts into an FMA."""
    program = _moment_updates(read_new_m)
    in_place = Aliasing((0, 1, 2, 3, 0, 2, 3), (True,) * 7)
    _, plans = lower_program(program, "adam", in_place)
    assert len(plans) == functions
    names = ("m", "g", "v", "p")
    rng = np.random.default_rng(11)
    inputs = {name: rng.standard_normal((64, 64)).astype(np.float32) for name in names}
    inputs["v"] = np.abs(inputs["v"])
    one_by_one = [attrs.evolve(program, stages=(stage,)) for stage in program.stages]
    want = run_kernel(program, inputs)
    results = []
    for threads, programs in ((1, [program]), (2, [program]), (1, one_by_one)):
        data = {name: array.copy() for name, array in inputs.items()}
        for native in Jit(use_cache=False, threads=threads).load(programs, [in_place] * len(programs)):
            _call(native, [data[name] for name in names + ("m", "v", "p")], Parallel(threads))
        for name in ("m", "v", "p"):
            # p - update cancels: a rounding of the O(1) terms (FMA contraction) is absolute
            np.testing.assert_allclose(data[name], want[name + "2"], rtol=1e-6, atol=1e-6, err_msg=name)
        results.append(data)
    fused, two_threads, separate = results
    for name in names:
        np.testing.assert_array_equal(two_threads[name], fused[name], err_msg=name)
        # the same arithmetic, but LLVM may contract a different product of a sum into an FMA
        np.testing.assert_allclose(separate[name], fused[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_an_unwritable_cache_is_skipped(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cache = DiskCache(blocked)
    cache.put("ab" * 16, b"object", [StagePlan("s", 1, 1)])
    assert cache.get("ab" * 16) is None
    graph, inputs = matmul_case((4, 5), (5, 3))
    got = run_kernels(graph, inputs)[0]["c"]
    jit = Jit(cache)
    jit.load(_programs(graph))
    assert jit.stats.compiled == 1
    np.testing.assert_allclose(got, inputs["a"] @ inputs["b"], rtol=1e-5)
