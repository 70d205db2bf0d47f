"""Every registered op, run by its JIT-compiled kernels, gives the interpreter's result.

The op cases are the IR's own (tests/ir/test_ops.py): every op, several shapes
(scalars, broadcasting, empty tensors) and every dtype it takes.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.lowering import lower_graph
from ir.dtypes import DType, f32
from ir.errors import BackendError
from ir.interpreter import interpret
from ir.ops import lookup
from ir.rewrite import rewrite
from kernels import run_kernels, shared_jit

_spec = importlib.util.spec_from_file_location("ir_op_cases", Path(__file__).parents[2] / "ir" / "test_ops.py")
cases = sys.modules.setdefault("ir_op_cases", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(cases)

#: the cases of ops with native kernels; collectives (ops with a replica group) run on the host
#: through a communicator instead (tests/runtime/distributed)
NATIVE_CASES = [c for c in cases.ALL_CASES if lookup(c.op).group is None]
#: (rtol, atol) against the interpreter; f16/bf16 fused bodies skip some intermediate roundings
TOL = {DType.f32: (1e-4, 1e-5), DType.f16: (4e-3, 2e-3), DType.bf16: (3e-2, 2e-2)}


def decompose(graph):
    def expand(b, op):
        fn = lookup(op.name).decompose
        return None if fn is None else list(fn(b, op))
    rewrite(graph, expand)
    return graph


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    dtype = DType.of(want)
    if dtype.is_float:
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module", autouse=True)
def compiled_together():
    """Every case's kernels compiled in one batch, on all cores (tests then find them loaded)."""
    programs = []
    for c in NATIVE_CASES:
        try:
            programs += lower_graph(decompose(cases.build(c)[0]))
        except BackendError:
            continue
    shared_jit().load(programs)


@pytest.mark.parametrize("c", NATIVE_CASES, ids=lambda c: c.id)
def test_op_matches_interpreter(c):
    graph, _ = cases.build(c)
    inputs = cases.inputs_of(c)
    want = interpret(graph, inputs).outputs
    try:
        got, _ = run_kernels(decompose(graph), inputs)
    except BackendError as err:  # the backend does not lower nested regions
        assert "region inside a kernel" in str(err)
        pytest.xfail(str(err))
    for name in want:
        assert_matches(got[name], want[name])


def test_f32_cases_exist():
    assert any(DType.of(a) == f32 for c in NATIVE_CASES for a in c.args)
