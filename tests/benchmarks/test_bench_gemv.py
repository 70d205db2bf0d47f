"""Batch-1 decode GEMVs of GPT-2 small, the JIT's kernel (f32 and bf16 weights) beside numpy's
`x @ W`, one benchmark group per weight (run with
`pytest tests/benchmarks/test_bench_gemv.py --benchmark-enable`).

Each call reads the next of several copies of the weight (together well past the last-level
cache), as a decode step does; `extra_info["GB/s"]` is the weight's bytes over the fastest call.
The JIT kernel is called as the executor calls it (`Parallel.run` over the stage's range).
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Buffer
from backend.pef.stages import GemmStage
from ir.dtypes import DType, bf16, f32
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel

#: name: (K, N, stored [N, K])
SHAPES = {
    "qkv-768x2304": (768, 2304, False), "attn-proj-768x768": (768, 768, False),
    "mlp-up-768x3072": (768, 3072, False), "mlp-down-3072x768": (3072, 768, False),
    "lm-head-50257x768": (768, 50257, True),
}
#: bytes of weight copies a benchmark cycles through (several times a 32 MB L3)
CYCLE_BYTES = 192 << 20
RNG = np.random.default_rng(0)


def weights(k: int, n: int, transposed: bool, dtype: DType) -> list[np.ndarray]:
    w = RNG.standard_normal((n, k) if transposed else (k, n)).astype(np.float32).astype(dtype.np)
    return [w.copy() for _ in range(max(2, -(-CYCLE_BYTES // w.nbytes)))]


def gemv_program(k: int, n: int, transposed: bool, dtype: DType) -> KernelProgram:
    buffers = (Buffer("x", "input", (1, k), "f32"),
               Buffer("w", "input", (n, k) if transposed else (k, n), str(dtype)),
               Buffer("y", "output", (1, n), "f32"))
    w = Access("w", 0, (1, k) if transposed else (n, 1))
    stage = GemmStage("y", (), 1, n, k, Access("x", 0, (k, 1)), w)
    return KernelProgram("gemv", "matmul", None, "", buffers, (stage,))


def record(benchmark, nbytes: int) -> None:
    benchmark.extra_info["weight MB"] = round(nbytes / 1e6, 1)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 1)


@pytest.mark.parametrize("dtype", [f32, bf16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_bench_gemv_jit(benchmark, shape, dtype):
    k, n, transposed = SHAPES[shape]
    benchmark.group = shape
    ws = weights(k, n, transposed, dtype)
    x = RNG.standard_normal((1, k)).astype(np.float32)
    y = np.empty((1, n), np.float32)
    jit, parallel = Jit(use_cache=False), Parallel()
    (native,) = jit.load([gemv_program(k, n, transposed, dtype)])
    (stage,) = native.stages
    args = itertools.cycle([(ctypes.c_void_p * 3)(x.ctypes.data, w.ctypes.data, y.ctypes.data) for w in ws])
    plan = stage.plan
    benchmark(lambda: parallel.run(stage.fn, next(args), plan.extent, plan.work, plan.pieces))
    record(benchmark, ws[0].nbytes)
    w = ws[0].astype(np.float64)
    assert parallel.run(stage.fn, (ctypes.c_void_p * 3)(x.ctypes.data, ws[0].ctypes.data, y.ctypes.data),
                        plan.extent, plan.work, plan.pieces) == 0
    np.testing.assert_allclose(y, x @ (w.T if transposed else w), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_bench_gemv_numpy(benchmark, shape):
    k, n, transposed = SHAPES[shape]
    benchmark.group = shape
    ws = itertools.cycle(w.T if transposed else w for w in weights(k, n, transposed, f32))
    x = RNG.standard_normal((1, k)).astype(np.float32)
    y = np.empty((1, n), np.float32)
    benchmark(lambda: np.matmul(x, next(ws), out=y))
    record(benchmark, k * n * 4)
