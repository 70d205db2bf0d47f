"""The checked JIT mode (RDUFLOW_JIT_CHECKED=1): a load or store outside its buffer is an ExecutionError."""
from __future__ import annotations

import attrs
import numpy as np
import pytest
from zoo_programs import compiled, inputs_for

from backend.pef.file import PEF
from ir.errors import ExecutionError
from runtime.jit.kernel import checked_mode, code_key
from runtime.jit.library import Jit
from runtime.program import Program


def _with_stage(pef: PEF, kernel: int, stage: int, **changes) -> PEF:
    """The PEF with one stage's fields changed, not validated (as no reader would hand it over)."""
    program = pef.kernels[kernel]
    stages = list(program.stages)
    stages[stage] = attrs.evolve(stages[stage], **changes)
    kernels = list(pef.kernels)
    kernels[kernel] = attrs.evolve(program, stages=tuple(stages))
    return attrs.evolve(pef, kernels=tuple(kernels))


def _logreg():
    result = compiled("logreg", "O1", False)
    return result.pef, inputs_for(result.graph)


def test_a_read_past_its_buffer_is_an_error_naming_the_kernel():
    pef, inputs = _logreg()
    update = pef.kernels[6].stages[0]  # k6_mul_sub: w - lr * grad, reading @fc.weight
    far = [attrs.evolve(r, offset=2**32) if r.buffer == "@fc.weight" else r for r in update.body.reads]
    bad = _with_stage(pef, 6, 0, body=attrs.evolve(update.body, reads=tuple(far)))
    program = Program(bad, jit=Jit(use_cache=False, checked=True))
    with pytest.raises(ExecutionError, match=r"kernel 'k6_mul_sub'.*outside its buffer"):
        program.run(inputs)


def test_a_gemm_reading_past_its_operand_is_an_error():
    pef, inputs = _logreg()
    gemm = pef.kernels[0].stages[0]
    bad = _with_stage(pef, 0, 0, a=attrs.evolve(gemm.a, offset=2**20))
    with pytest.raises(ExecutionError, match=r"kernel 'k0_matmul_add'.*outside its buffer"):
        Program(bad, jit=Jit(use_cache=False, checked=True)).run(inputs)


def test_checked_code_computes_what_unchecked_code_does():
    pef, inputs = _logreg()
    checked = Program(pef, jit=Jit(use_cache=False, checked=True)).run(inputs)
    plain = Program(pef, jit=Jit(use_cache=False, checked=False)).run(inputs)
    assert checked.keys() == plain.keys()
    for name in plain:
        np.testing.assert_array_equal(checked[name], plain[name])


def test_the_mode_comes_from_the_environment_and_keys_the_cache(monkeypatch):
    pef, _ = _logreg()
    monkeypatch.setenv("RDUFLOW_JIT_CHECKED", "1")
    assert checked_mode() and Jit(use_cache=False).checked
    monkeypatch.setenv("RDUFLOW_JIT_CHECKED", "0")
    assert not checked_mode() and not Jit(use_cache=False).checked
    assert code_key(pef.kernels[0], checked=True) != code_key(pef.kernels[0], checked=False)
