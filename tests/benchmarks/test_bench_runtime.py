"""Runtime speed, each JIT case beside its reference in one benchmark group
(run with `pytest tests/benchmarks/test_bench_runtime.py --benchmark-enable`):

* matmul-512: a 512x512x512 f32 matmul kernel against numpy's (goal: >= 0.8x numpy's GFLOP/s);
* fused-elementwise-16M: six elementwise ops over 16M floats as one kernel against the
  same numpy expression (goal: >= 3x);
* gpt2-train-step: a GPT-2 (zoo config) training step against the reference interpreter;
* pef-load-cached: `runtime.load` of the GPT-2 training PEF whose kernels are in the disk cache
  (goal: < 0.3 s).

Kernels are timed through `Executor.step()`: inputs are bound once, so the time is
the native code's (plus one ctypes call per stage).
"""
from __future__ import annotations

import numpy as np
import pytest
from planned_backend import build_pef

from backend.driver import BackendOptions
from backend.pef.targets import load_target
from compiler.driver import CompileOptions, compile_model
from compiler.pass_manager.levels import level_pipeline
from compiler.passes import PassManager
from ir.builder import Builder
from ir.dtypes import f32
from ir.graph import Graph
from ir.interpreter import initial_params, interpret
from ir.types import TensorType
from runtime.program import load

RNG = np.random.default_rng(0)


def inference_program(graph: Graph, pipeline: str = "decompose,fuse"):
    graph = PassManager.parse(pipeline).run(graph)
    return load(build_pef(graph, BackendOptions(load_target("rdu-mini"), mode="inference")))


# --- matmul 512 -----------------------------------------------------------------------------
N = 512
A = RNG.standard_normal((N, N)).astype(np.float32)
B = RNG.standard_normal((N, N)).astype(np.float32)


@pytest.fixture(scope="module")
def matmul_program():
    b = Builder(Graph("matmul"))
    b.output("c", b.matmul(b.input("a", TensorType((N, N), f32)), b.input("b", TensorType((N, N), f32))))
    program = inference_program(b.graph)
    program.run({"a": A, "b": B})
    return program


@pytest.mark.benchmark(group="matmul-512")
def test_bench_matmul_jit(benchmark, matmul_program):
    benchmark.extra_info["gflops"] = 2 * N**3 / 1e9
    benchmark(matmul_program.executor.step)
    np.testing.assert_allclose(matmul_program.run({"a": A, "b": B})["c"], A @ B, rtol=1e-3, atol=1e-3)


@pytest.mark.benchmark(group="matmul-512")
def test_bench_matmul_numpy(benchmark):
    benchmark.extra_info["gflops"] = 2 * N**3 / 1e9
    out = np.empty((N, N), np.float32)
    benchmark(np.matmul, A, B, out=out)


# --- six fused elementwise ops over 16M floats ------------------------------------------------
M = 16 << 20
X = RNG.standard_normal(M).astype(np.float32)


def chain_numpy(x: np.ndarray) -> np.ndarray:
    """relu(tanh(x * 2 + 1) * x - 0.5): mul, add, tanh, mul, sub, max."""
    return np.maximum(np.tanh(x * np.float32(2.0) + np.float32(1.0)) * x - np.float32(0.5), np.float32(0.0))


@pytest.fixture(scope="module")
def chain_program():
    b = Builder(Graph("chain"))
    x = b.input("x", TensorType((M,), f32))
    t = b.tanh(b.add(b.mul(x, b.scalar(2.0, f32)), b.scalar(1.0, f32)))
    b.output("y", b.relu(b.sub(b.mul(t, x), b.scalar(0.5, f32))))
    program = inference_program(b.graph)
    assert len(program.pef.kernels) == 1, "the chain is one fused kernel"
    program.run({"x": X})
    return program


@pytest.mark.benchmark(group="fused-elementwise-16M")
def test_bench_fused_chain_jit(benchmark, chain_program):
    benchmark(chain_program.executor.step)
    np.testing.assert_allclose(chain_program.run({"x": X})["y"], chain_numpy(X), rtol=1e-5, atol=1e-6)


@pytest.mark.benchmark(group="fused-elementwise-16M")
def test_bench_fused_chain_numpy(benchmark):
    benchmark(chain_numpy, X)


# --- a GPT-2 training step -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_training():
    result = compile_model(CompileOptions("gpt2", target="rdu-mini"), PassManager.parse(level_pipeline("O1")))
    inputs = {"input_ids": RNG.integers(0, 128, (2, 16)).astype(np.int32),
              "token_type_ids": np.ones((2, 16), np.int32), "lr": np.float32(1e-3)}
    return result, inputs


@pytest.mark.benchmark(group="gpt2-train-step")
def test_bench_gpt2_step_jit(benchmark, gpt2_training):
    result, inputs = gpt2_training
    program = load(result.pef)
    benchmark.extra_info["kernels"] = len(result.pef.kernels)
    benchmark(program.run, inputs)


@pytest.mark.benchmark(group="gpt2-train-step")
def test_bench_gpt2_step_interpreter(benchmark, gpt2_training):
    result, inputs = gpt2_training
    params = initial_params(result.graph)
    benchmark(interpret, result.graph, inputs, params)


# --- loading a PEF whose kernels are cached ----------------------------------------------------------
@pytest.mark.benchmark(group="pef-load-cached")
def test_bench_load_cached_pef(benchmark, gpt2_training, tmp_path):
    path = tmp_path / "gpt2.pef"
    path.write_bytes(gpt2_training[0].pef.to_bytes())
    load(path)  # fills the disk cache
    program = benchmark.pedantic(load, args=(path,), rounds=5)
    assert program.jit.stats.compiled == 0 and program.jit.stats.cached > 0
