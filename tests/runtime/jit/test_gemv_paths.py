"""The JIT's matrix-vector kernels (runtime/jit/gemv.py) on gemm stages built directly: B stored
[K, N] or [N, K], one to four rows, depths and widths off every block size (1, primes, more
than a chunk), batch axes, fused epilogues, f32/bf16/f16 B; against float64 sums of the same
rounded operands, bit for bit the same on 1, 2 and 3 threads and on any cut of the work;
split-depth runs of one stage at once; a failed allocation as a status."""
from __future__ import annotations

import ctypes
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Body, Buffer, Node, row_major
from backend.pef.stages import GemmStage
from backend.pef.validate import validate
from ir.dtypes import DType, bf16, f16, f32
from runtime.jit import gemv
from runtime.jit.codegen import ERRORS, OUT_OF_MEMORY
from runtime.jit.gemm import Gemm, Strided, fold_batch, simplify
from runtime.jit.library import Jit
from runtime.jit.module import KernelModule
from runtime.jit.parallel import Parallel

JIT = Jit(use_cache=False)


def program(m: int, k: int, n: int, transposed: bool, dtype: DType = f32, batch: tuple[int, ...] = (),
            shared_b: bool = False, epilogue: bool = False, out_dtype: DType = f32) -> KernelProgram:
    """out[batch, m, n] = a[batch, m, k] @ B (stored [n, k] if `transposed`), B per batch entry
    unless `shared_b`; the epilogue is relu(acc + bias[n]) + residual[batch, m, n]."""
    b_shape = (n, k) if transposed else (k, n)
    b_batch = () if shared_b else batch
    buffers = [Buffer("a", "input", (*batch, m, k), "f32"),
               Buffer("b", "input", (*b_batch, *b_shape), str(dtype)),
               Buffer("out", "output", (*batch, m, n), str(out_dtype))]
    a_strides = row_major((*batch, m, k))
    b_strides = row_major((*b_batch, *b_shape))
    b_access = (*((0,) * len(batch) if shared_b else b_strides[:-2]),
                *((1, k) if transposed else (n, 1)))
    body = None
    if epilogue:
        buffers += [Buffer("bias", "input", (n,), "f32"), Buffer("res", "input", (*batch, m, n), "f32")]
        nodes = [Node("acc", "f32"), Node("arg", "f32", (), 0), Node("add", "f32", (0, 1)),
                 Node("const", "f32", (), 0.0), Node("max", "f32", (2, 3)), Node("arg", "f32", (), 1),
                 Node("add", "f32", (4, 5))]
        if out_dtype != f32:
            nodes.append(Node("cast", str(out_dtype), (6,)))
        reads = (Access("bias", 0, (0,) * (len(batch) + 1) + (1,)),
                 Access("res", 0, row_major((*batch, m, n))))
        body = Body(reads, (), nodes)
    stage = GemmStage("out", batch, m, n, k, Access("a", 0, a_strides), Access("b", 0, b_access), body)
    prog = KernelProgram("gemv", "matmul", None, "", tuple(buffers), (stage,))
    validate(prog)
    return prog


def operands(prog: KernelProgram, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {buf.name: rng.standard_normal(buf.shape).astype(np.float32).astype(DType(buf.dtype).np)
            for buf in prog.buffers if buf.role == "input"}


def reference(prog: KernelProgram, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(exact float64 result, bound on the f32 summation error) from the operands as stored."""
    (stage,) = prog.stages
    a = inputs["a"].astype(np.float64)
    b = inputs["b"].astype(np.float64)
    if stage.b.strides[-1] != 1:  # stored [n, k] (with k == 1 either way is the same memory)
        b = np.swapaxes(b, -1, -2)
    b = b.reshape(*b.shape[:-2], stage.k, stage.n)
    exact, magnitude = a @ b, np.abs(a) @ np.abs(b)
    bound = 2 * stage.k * 2.0 ** -24 * magnitude + 1e-30
    if stage.epilogue is not None:  # relu(sum + bias) + res: two more f32 roundings
        biased = exact + inputs["bias"]
        exact = np.maximum(biased, 0) + inputs["res"]
        bound = bound + 2.0 ** -23 * (np.abs(biased) + np.abs(exact))
    return exact, bound


def gemm_of(prog: KernelProgram) -> Gemm:
    """The program's stage as the JIT dispatches it (batch axes coalesced and folded into rows)."""
    (stage,) = prog.stages
    km = KernelModule(prog.buffers)
    epilogue = km.expression(stage.epilogue) if stage.epilogue is not None else None
    return fold_batch(simplify(Gemm(tuple(stage.batch), stage.m, stage.n, stage.k, Strided(km.access(stage.a)),
                                    Strided(km.access(stage.b)), km.whole(stage.out), epilogue)))


def takes_gemv(prog: KernelProgram) -> gemv.Split | None:
    gemm = gemm_of(prog)
    return gemv.split(gemm) if gemv.is_gemv(gemm) else None


def call(prog: KernelProgram, inputs: dict[str, np.ndarray], cuts=None, threads: int = 1, jit: Jit = JIT) -> np.ndarray:
    """The stage's output, its range called in `cuts` (bounds, in that order) or by `threads` threads."""
    (native,) = jit.load([prog])
    (stage,) = native.stages
    out_buf = prog.buffer("out")
    out = np.full(out_buf.shape, np.nan, DType(out_buf.dtype).np)
    arrays = [inputs[buf.name] if buf.role == "input" else out for buf in prog.buffers]
    args = (ctypes.c_void_p * len(arrays))(*(x.ctypes.data for x in arrays))
    if cuts is None:
        assert Parallel(threads).run(stage.fn, args, stage.plan.extent, stage.plan.work) == 0
    else:
        for lo, hi in zip(cuts, cuts[1:]):
            assert stage.fn(args, lo, hi) == 0
    return out


def extent(prog: KernelProgram) -> int:
    return JIT.load([prog])[0].stages[0].plan.extent


def check(prog: KernelProgram, seed: int = 0) -> np.ndarray:
    """Run whole and in cuts; the two agree bit for bit and with the exact sums."""
    inputs = operands(prog, seed)
    got = call(prog, inputs)
    exact, bound = reference(prog, inputs)
    stored = DType(prog.buffer("out").dtype)
    if stored != f32:  # rounding the result to the stored type
        bound = bound + np.abs(exact) * 2.0 ** -(8 if stored == bf16 else 11)
    error = np.abs(got.astype(np.float64) - exact)
    assert np.all(error <= bound), f"max error {error.max()} over bound {bound[error > bound].min()}"
    units = extent(prog)
    for cuts in ([0, units], [0, units // 2, units], list(range(units + 1)), [0, 1, units] if units > 1 else [0, 1]):
        np.testing.assert_array_equal(call(prog, inputs, cuts), got)
    return got


SHAPES = [  # m, k, n: tiny, prime, one column or row, more than a chunk, split depths
    (1, 1, 97), (2, 1, 300), (1, 97, 1), (3, 4099, 1), (1, 131, 257), (4, 257, 131), (2, 1021, 769),
    (1, 768, 768), (1, 3072, 768), (3, 999, 2311), (1, 13, gemv.CHUNK + 9), (4, 700, gemv.CHUNK * 2 + 3),
]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_layouts_rows_and_awkward_sizes(m, k, n, transposed):
    prog = program(m, k, n, transposed)
    if m * n * k >= 1 << 15:
        assert takes_gemv(prog) is not None
    check(prog, seed=m * 7 + k + n)


def test_the_depth_is_split_only_where_columns_are_few_and_b_is_large():
    assert takes_gemv(program(1, 3072, 768, False)).slices == 12
    assert takes_gemv(program(1, 3072, 768, False, bf16)).slices == 12
    assert takes_gemv(program(1, 768, 768, False, f16)).slices == 12
    assert takes_gemv(program(1, 512, 768, False)).slices == 1  # below SPLIT_ELEMENTS: one thread streams it
    assert takes_gemv(program(1, 3072, 768, True)).slices == 1  # dot products: rows of B are contiguous
    assert takes_gemv(program(1, 2048, 600, False, batch=(gemv.SPLIT_BELOW,))).slices == 1


def test_a_batch_sharing_b_becomes_rows_reading_b_once():
    """A decode step of batch 4 (x [4, 1, k] @ W): one product of four rows, epilogue included."""
    for transposed in (False, True):
        prog = program(1, 768, 900, transposed, bf16, batch=(4,), shared_b=True, epilogue=True)
        gemm = gemm_of(prog)
        assert (gemm.batch, gemm.m) == ((), 4) and takes_gemv(prog).entries == 1
        check(prog)
    prog = program(2, 300, 500, False, batch=(3, 2), shared_b=True, epilogue=True)
    assert (gemm_of(prog).batch, gemm_of(prog).m) == ((), 12)  # past ROWS: the blocked gemm, once
    check(prog)
    assert gemm_of(program(2, 300, 500, False, batch=(3,))).batch == (3,)  # a B per entry stays batched


@pytest.mark.parametrize("dtype", [f32, bf16, f16])
@pytest.mark.parametrize("transposed", [False, True])
def test_16_bit_b_epilogues_and_batches(dtype, transposed):
    for batch, shared in (((), False), ((3,), False), ((2, 2), True)):
        check(program(2, 517, 389, transposed, dtype, batch, shared, epilogue=True), seed=len(batch))
    check(program(1, 1536, 1000, transposed, dtype, epilogue=True, out_dtype=bf16))


@pytest.mark.parametrize("dtype", [f32, bf16, f16])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_same_bits_on_one_two_and_three_threads(dtype, transposed):
    prog = program(1, 1536, 2600, transposed, dtype, epilogue=True)
    assert takes_gemv(prog).slices > 1 or transposed
    inputs = operands(prog, 3)
    results = [call(prog, inputs, threads=t) for t in (1, 2, 3)]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    exact, bound = reference(prog, inputs)
    assert np.all(np.abs(results[0] - exact) <= bound)


def test_split_runs_of_one_stage_at_once_keep_apart():
    """Several threads each run the whole stage on their own output, their units interleaved."""
    prog = program(2, 1200, 700, False, epilogue=True)
    assert takes_gemv(prog).slices > 1
    inputs = [operands(prog, seed) for seed in range(6)]
    want = [call(prog, x) for x in inputs]
    got = [None] * len(inputs)

    def run(i: int) -> None:
        for _ in range(20):
            got[i] = call(prog, inputs[i], cuts=list(range(extent(prog) + 1)))
            np.testing.assert_array_equal(got[i], want[i])

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_run_waits_while_the_table_is_full(monkeypatch):
    """With one table entry, a second run waits for the first to finish (its last unit) and then proceeds."""
    monkeypatch.setattr(gemv, "RUNS", 1)
    jit = Jit(use_cache=False)
    prog = program(1, 1500, 600, False)
    (native,) = jit.load([prog])
    (stage,) = native.stages
    units = stage.plan.extent
    inputs = [operands(prog, seed) for seed in (1, 2)]
    outs = [np.zeros((1, 600), np.float32) for _ in inputs]
    args = [(ctypes.c_void_p * 3)(x["a"].ctypes.data, x["b"].ctypes.data, o.ctypes.data) for x, o in zip(inputs, outs)]
    assert stage.fn(args[0], 0, 1) == 0  # run 0 holds the only entry
    second = threading.Thread(target=lambda: stage.fn(args[1], 0, units))
    second.start()
    second.join(timeout=0.2)
    assert second.is_alive() and not outs[1].any()  # waiting
    assert stage.fn(args[0], 1, units) == 0  # run 0 ends and frees the entry
    second.join(timeout=30)
    assert not second.is_alive()
    for x, o in zip(inputs, outs):
        exact, bound = reference(prog, x)
        assert np.all(np.abs(o - exact) <= bound)


_OOM_SCRIPT = """
import ctypes
import llvmlite.binding as llvm
import numpy as np
from backend.driver import BackendOptions, build_pef
from backend.pef.targets import load_target
from compiler.passes.plan_memory import with_memory_plan
from ir.builder import Builder
from ir.dtypes import f32
from ir.errors import ExecutionError
from ir.graph import Graph
from ir.init import Init
from ir.types import TensorType
from runtime.jit.library import Jit
from runtime.program import load

# every aligned_alloc of the kernels loaded from here on fails
NULL = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(lambda alignment, size: None)
llvm.add_symbol("aligned_alloc", ctypes.cast(NULL, ctypes.c_void_p).value)
b = Builder(Graph("oom"))
x = b.input("x", TensorType(({m}, {k}), f32))
b.output("y", b.matmul(x, b.param("w", TensorType(({k}, {n}), f32), Init("normal"))))
target = load_target("rdu-mini")
program = load(build_pef(with_memory_plan(b.graph, target), BackendOptions(target, mode="inference")),
               jit=Jit(use_cache=False))
for _ in range(2):
    try:
        program.run({{"x": np.ones(({m}, {k}), np.float32)}})
    except ExecutionError as error:
        print(error)
"""


@pytest.mark.parametrize("m, k, n", [(1, 2048, 1000), (64, 300, 200)], ids=["gemv-split", "blocked-gemm"])
def test_a_failed_allocation_is_an_execution_error(m, k, n):
    """With an allocator that always fails, each run is an ExecutionError naming the kernel and the
    cause (twice: a failed run leaves nothing behind), not a crash."""
    done = subprocess.run([sys.executable, "-c", _OOM_SCRIPT.format(m=m, k=k, n=n)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0] == f"error: kernel 'k0_matmul' ('matmul'): {ERRORS[OUT_OF_MEMORY]}"
    assert ERRORS[OUT_OF_MEMORY].startswith("out of memory")


def test_work_units_follow_the_shape_not_the_threads():
    split = takes_gemv(program(1, 3000, 1000, False))
    assert (split.chunks, split.width, split.slices) == (1, 1000, 12) and split.units == 12
    split = takes_gemv(program(2, 800, 3 * gemv.CHUNK + 1, False, f16))
    assert (split.chunks, split.width, split.slices, split.units) == (4, 3073, 12, 48)
    assert takes_gemv(program(1, 768, 50257, True)).units == math.ceil(50257 / gemv.BLOCK)
