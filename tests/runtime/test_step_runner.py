"""A step's stages in one native call (runtime/jit/step.py): in order (each stage sees the one before
it finished), the same bits on 1, 2 and 3 threads as stage-by-stage calls, a failing stage
stopping the run with its status and index, and the finish time of every stage."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from backend.pef.program import KernelProgram
from ir.dtypes import DType, quantize
from runtime.jit.codegen import INDEX_ERROR
from runtime.jit.parallel import Parallel
from runtime.jit.step import Stage, StageList, pieces
from test_gemv_paths import JIT, program
from test_quantized_kernels import gather_program


def stages_of(prog: KernelProgram, arrays: list[np.ndarray]) -> list[Stage]:
    """The program's stages over `arrays` (one per buffer, in order)."""
    (native,) = JIT.load([prog])
    args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
    return [Stage(s.fn, args, s.plan.extent, s.plan.work, s.plan.pieces) for s in native.stages]


def chain(rng: np.random.Generator, depth: int) -> tuple[list[Stage], list[np.ndarray]]:
    """x_{i+1} = x_i @ W_i (each W [768, 768] stored [n, k]: a gemv cut into pieces), outputs NaN first;
    the list of arrays holds the xs, then the Ws (kept alive with it)."""
    prog = program(1, 768, 768, True)
    xs = [rng.standard_normal((1, 768)).astype(np.float32)] + [np.full((1, 768), np.nan, np.float32)
                                                               for _ in range(depth)]
    weights = [rng.standard_normal((768, 768)).astype(np.float32) / 30 for _ in range(depth)]
    stages = [s for i in range(depth) for s in stages_of(prog, [xs[i], weights[i], xs[i + 1]])]
    return stages, xs + weights


def test_stages_run_in_order_with_the_bits_of_separate_calls():
    expected = None
    for threads in (1, 2, 3):
        stages, xs = chain(np.random.default_rng(0), 12)  # xs[12]: the last output
        assert all(pieces(s, threads) == (1 if threads == 1 else min(threads * s.pieces, s.extent)) for s in stages)
        assert StageList(stages, Parallel(threads)).run() == (0, -1)
        if expected is None:
            reference, ref_xs = chain(np.random.default_rng(0), 12)
            for s in reference:
                assert s.fn(s.args, 0, s.extent) == 0
            expected = ref_xs[12]
            assert np.isfinite(expected).all()
        np.testing.assert_array_equal(xs[12], expected)


def test_runs_again_from_fresh_counters_and_records_finish_times():
    stages, xs = chain(np.random.default_rng(1), 5)
    run = StageList(stages, Parallel(2))
    run.run()
    first = xs[5].copy()
    xs[1][...] = np.nan
    assert run.run(timed=True) == (0, -1)
    np.testing.assert_array_equal(xs[5], first)
    assert (np.diff(run.times) >= 0).all() and run.times[0] > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_stage_stops_the_run_with_its_status_and_index(threads):
    rng = np.random.default_rng(2)
    table = quantize(rng.standard_normal((5, 32)).astype(np.float32), DType.q8_0)
    ids = np.array([1, 5], np.int32)  # 5 is outside the table
    out = np.zeros((2, 1), table.dtype)
    before, xs = chain(rng, 2)
    after, later = chain(rng, 1)
    stages = [*before, *stages_of(gather_program((5, 32), (2,), 0, DType.q8_0), [table, ids, out]), *after]
    assert StageList(stages, Parallel(threads)).run() == (INDEX_ERROR, len(before))
    assert np.isfinite(xs[2]).all() and np.isnan(later[1]).all()
