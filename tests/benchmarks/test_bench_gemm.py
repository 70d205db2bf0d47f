"""f32 GEMM C = A @ B at 512^3, 1024^3 and 2048^3 on 1 and 2 threads: the JIT's blocked kernel
beside numpy's OpenBLAS limited to the same thread count (`threadpoolctl`), timed in one
process, alternating a few calls of one with a few of the other, best of many rounds. Before
each JIT block the process idles long enough for OpenBLAS's threads to stop spinning (they
spin on their cores for about 2^28 cycles after each call, and would take a core from the
JIT's second thread; the JIT's team parks within microseconds, so numpy needs no such pause),
then runs untimed JIT calls until the cores are back to full speed (numpy's calls come after
the JIT's, on cores already busy). Prints a table of GFLOP/s, the ratio and each as a fraction of the host's peak:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python -m pytest tests/benchmarks/test_bench_gemm.py --benchmark-enable -s

(unsetting the two variables lets OpenBLAS pick its best kernel for the host; the table
names the kernel it ran). The peak is threads x the FMA throughput one core reaches on
independent vector FMA chains, measured by a JIT kernel over the thread's CPU time (its clock
is that over FMA units x lanes x 2); `/proc/cpuinfo`'s nominal clock is printed beside it. On
one thread the ratio is also given by the calling thread's CPU time, which other processes
sharing the cores inflate less than wall time.
"""
from __future__ import annotations

import ctypes
import os
import time
from typing import NamedTuple

import llvmlite.ir as ir
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Buffer
from backend.pef.stages import GemmStage
from runtime.jit import codegen as cg
from runtime.jit.engine import NativeLibrary, compile_ir
from runtime.jit.host import host_tile
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel

SIZES = (512, 1024, 2048)
THREADS = (1, 2)
#: alternating rounds per size, and calls of each engine per round
ROUNDS = {512: 12, 1024: 7, 2048: 4}
CALLS = {512: 5, 1024: 3, 2048: 2}
#: seconds for OpenBLAS's idle threads to park (2^28 cycles at 2.5 GHz is 0.11 s)
OPENBLAS_PARK = 0.25
#: seconds of untimed JIT calls after the pause (cores that idled take milliseconds to come back to
#: full speed: 512^3 on 2 threads measured 180-200 GFLOP/s in the first calls, 290 from the eighth)
WARM_UP = 0.03
#: independent FMA chains of the peak kernel (more than latency x FMA units)
CHAINS = 12
RNG = np.random.default_rng(0)


class Product(NamedTuple):
    """A matrix product as a plain GEMM, C[batch, m, n] = A @ B: A stored k-major when `a_transposed`,
    B stored n-major when `b_transposed`, one B for the whole batch unless `b_batched`."""

    batch: int
    m: int
    n: int
    k: int
    a_transposed: bool
    b_transposed: bool
    b_batched: bool

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.n * self.k


def product_program(p: Product) -> KernelProgram:
    """The one-stage kernel of a plain product, its operands dense in their layouts."""
    batched = (p.batch,) if p.batch > 1 else ()
    a = ((p.m * p.k,) if batched else ()) + ((1, p.m) if p.a_transposed else (p.k, 1))
    b = ((p.k * p.n if p.b_batched else 0,) if batched else ()) + ((1, p.k) if p.b_transposed else (p.n, 1))
    buffers = (Buffer("a", "input", (p.batch * p.m * p.k,), "f32"),
               Buffer("b", "input", ((p.batch if p.b_batched else 1) * p.k * p.n,), "f32"),
               Buffer("c", "output", batched + (p.m, p.n), "f32"))
    stage = GemmStage("c", batched, p.m, p.n, p.k, Access("a", 0, a), Access("b", 0, b))
    return KernelProgram("product", "matmul", None, "", buffers, (stage,))


def fma_peak_per_core(lanes: int, iterations: int = 1 << 22, tries: int = 30) -> float:
    """FLOP/s of one core running `CHAINS` independent `lanes`-wide FMA chains (the best of many
    short tries: a busy machine only ever slows a try down)."""
    vec = ir.VectorType(cg.F32, lanes)
    module = ir.Module("peak")
    fn = ir.Function(module, ir.FunctionType(cg.F32, [cg.F32, cg.I64]), "peak")
    b = ir.IRBuilder(fn.append_basic_block())
    fma = ir.Function(module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")
    x = b.insert_element(ir.Constant(vec, [1.0] * lanes), fn.args[0], cg.i64(0))
    accs = [b.insert_element(ir.Constant(vec, [0.0] * lanes), fn.args[0], cg.i64(i % lanes))
            for i in range(CHAINS)]
    entry, body, done = b.block, fn.append_basic_block("body"), fn.append_basic_block("done")
    b.branch(body)
    b.position_at_end(body)
    i = b.phi(cg.I64)
    phis = [b.phi(vec) for _ in accs]
    new = [b.call(fma, [p, x, x]) for p in phis]
    step = b.add(i, cg.i64(1))
    for phi, init, value in zip(phis, accs, new):
        phi.add_incoming(init, entry)
        phi.add_incoming(value, body)
    i.add_incoming(cg.i64(0), entry)
    i.add_incoming(step, body)
    b.cbranch(b.icmp_signed("<", step, fn.args[1]), body, done)
    b.position_at_end(done)
    total = new[0]
    for value in new[1:]:
        total = b.fadd(total, value)
    b.ret(b.extract_element(total, cg.i64(0)))
    library = NativeLibrary()
    library.add_object(compile_ir(str(module)))
    peak = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_float, ctypes.c_int64)(library.address("peak"))
    best = min(_seconds(lambda: peak(1e-9, iterations), time.thread_time) for _ in range(tries))
    return CHAINS * iterations * lanes * 2 / best


def nominal_mhz() -> float | None:
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]
    return max(mhz) if mhz else None


def _seconds(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, seconds this thread was on a core) of a call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure(n: int, threads: int) -> tuple[tuple[float, float], tuple[float, float], str]:
    """((JIT wall, JIT thread CPU seconds), (numpy's), numpy's BLAS kernel): the fastest call of
    `ROUNDS[n]` rounds, each a pause for OpenBLAS's threads to park, `WARM_UP` seconds of JIT calls,
    then `CALLS[n]` timed JIT calls, then as many numpy calls. On one thread both run on the calling thread, whose CPU time a busy
    machine inflates less than wall time."""
    a, b = (RNG.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c, expected = np.empty((n, n), np.float32), np.empty((n, n), np.float32)
    jit, parallel = Jit(use_cache=False, threads=threads), Parallel(threads)
    ((stage,),) = (k.stages for k in jit.load([product_program(Product(1, n, n, n, False, False, False))]))
    args = (ctypes.c_void_p * 3)(a.ctypes.data, b.ctypes.data, c.ctypes.data)
    plan = stage.plan

    def run_jit() -> None:
        assert parallel.run(stage.fn, args, plan.extent, plan.work, plan.pieces) == 0

    with threadpool_limits(limits=threads, user_api="blas"):
        kernel = ",".join(f"{i['internal_api']} {i.get('architecture')} x{i['num_threads']}"
                          for i in threadpool_info() if i["user_api"] == "blas")
        jit_s = numpy_s = (float("inf"),) * 2
        for _ in range(ROUNDS[n]):
            time.sleep(OPENBLAS_PARK)
            warm = time.perf_counter() + WARM_UP
            while time.perf_counter() < warm:
                run_jit()
            for _ in range(CALLS[n]):
                jit_s = tuple(map(min, jit_s, _timed(run_jit)))
            for _ in range(CALLS[n]):
                numpy_s = tuple(map(min, numpy_s, _timed(lambda: np.matmul(a, b, out=expected))))
    np.testing.assert_allclose(c, expected, rtol=1e-3, atol=1e-3 * np.sqrt(n))
    return jit_s, numpy_s, kernel


@pytest.mark.benchmark(group="gemm-f32")
def test_bench_gemm_table(benchmark):
    tile = host_tile()
    per_core = fma_peak_per_core(tile.lanes)
    print(f"\nOPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; JIT tile {tile}")
    print(f"measured FMA peak per core {per_core / 1e9:.1f} GFLOP/s "
          f"(= {per_core / (2 * tile.lanes * 2) / 1e9:.2f} GHz x 2 FMA units x {tile.lanes} lanes x 2 "
          f"if 2 units); /proc/cpuinfo nominal {nominal_mhz()} MHz")
    print("| f32 GEMM | threads | rduflow JIT GFLOP/s | numpy GFLOP/s | ratio | JIT % peak | numpy % peak "
          "| ratio by thread CPU time | numpy kernel |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in THREADS:
        for n in SIZES:
            (jit_s, jit_cpu), (numpy_s, numpy_cpu), kernel = measure(n, threads)
            flops = 2 * n**3
            jit, ref, peak = flops / jit_s / 1e9, flops / numpy_s / 1e9, threads * per_core / 1e9
            benchmark.extra_info[f"{n}^3 x{threads}"] = {"jit": round(jit, 1), "numpy": round(ref, 1)}
            by_cpu = f"{numpy_cpu / jit_cpu:.2f}×" if threads == 1 else "-"
            print(f"| {n}³ | {threads} | {jit:.1f} | {ref:.1f} | {jit / ref:.2f}× | {jit / peak:.0%} "
                  f"| {ref / peak:.0%} | {by_cpu} | {kernel} |")
    benchmark.pedantic(lambda: None, rounds=1)
