"""The JIT's matrix-vector path (runtime/jit/gemv.py): gemm stages of one to four rows, B streamed
along its rows or its columns (in chunks of columns, odd depths included), against the interpreter."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.lowering import lower_graph
from backend.pef.stages import GemmStage
from ir.builder import Builder
from ir.dtypes import DType, bf16, f32
from ir.graph import Graph
from ir.interpreter import interpret
from ir.types import TensorType
from runtime.jit.gemm import Gemm, Strided, simplify
from runtime.jit.gemv import BLOCK, CHUNK, ROWS, is_gemv
from runtime.jit.module import KernelModule

_spec = importlib.util.spec_from_file_location("runtime_kernels", Path(__file__).parents[1] / "runtime" / "kernels.py")
kernels = sys.modules.setdefault("runtime_kernels", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(kernels)


def graph(m: int, k: int, n: int, transpose_b: bool, batch=(), dtype: DType = f32, epilogue: bool = False) -> Graph:
    b = Builder(Graph("gemv"))
    x = b.input("x", TensorType((*batch, m, k), dtype))
    w = b.input("w", TensorType((n, k) if transpose_b else (k, n), dtype))
    y = b.matmul(x, w, transpose_b=transpose_b)
    if epilogue:  # a bias and an activation, fused into the stage's epilogue by the fuse pass
        from compiler.passes import PassManager
        y = b.gelu(b.add(y, b.input("bias", TensorType((n,), dtype))))
        b.output("y", y)
        return PassManager.parse("fuse").run(b.graph)
    b.output("y", y)
    return b.graph


def takes_the_gemv_path(g: Graph) -> bool:
    (program,) = lower_graph(g)
    stage = next(s for s in program.stages if isinstance(s, GemmStage))
    km = KernelModule(program.buffers)
    return is_gemv(simplify(Gemm(tuple(stage.batch), stage.m, stage.n, stage.k, Strided(km.access(stage.a)),
                                 Strided(km.access(stage.b)), km.whole(stage.out))))


@pytest.mark.parametrize("m, k, n, transpose_b, batch", [
    (1, 768, 300, False, ()), (1, 300, 700, True, ()), (3, 129, 520, False, ()), (4, 200, 257, True, ()),
    (2, 96, 300, False, (3,)), (1, 1000, 40, True, (2, 2)), (1, 70, 2 * CHUNK + 5, False, ()),
    (2, 37, CHUNK + 3, False, (2,)),
])
def test_matches_the_interpreter(m, k, n, transpose_b, batch):
    g = graph(m, k, n, transpose_b, batch)
    assert takes_the_gemv_path(g)
    rng = np.random.default_rng(m * 1000 + n)
    inputs = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs}
    got, _ = kernels.run_kernels(g, inputs)
    np.testing.assert_allclose(got["y"], interpret(g, inputs).outputs["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transpose_b", [False, True])
def test_epilogues_and_bf16(transpose_b):
    for dtype, tol in ((f32, 1e-4), (bf16, 3e-2)):
        g = graph(2, 256, 2 * BLOCK + 7, transpose_b, dtype=dtype, epilogue=True)
        assert takes_the_gemv_path(g)
        rng = np.random.default_rng(5)
        inputs = {v.name: rng.standard_normal(v.type.shape).astype(dtype.np) for v in g.inputs}
        got, _ = kernels.run_kernels(g, inputs)
        want = interpret(g, inputs).outputs["y"]
        np.testing.assert_allclose(got["y"].astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def test_more_rows_take_the_blocked_gemm():
    assert not takes_the_gemv_path(graph(ROWS + 1, 300, 400, False))
