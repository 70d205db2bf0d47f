"""Every zoo model at -O0, -O1 and -O3, for training and inference, gives the interpreter's results.

Training runs a few steps from the same initial params: outputs (loss, accuracy,
grad norm) and every updated param and optimizer state match the interpreter run
on the same optimized graph (rtol 1e-4 for f32). SGD keeps updates proportional
to gradients; with AdamW, directions whose true gradient is zero (a key bias under
softmax's shift invariance) turn rounding noise into full-size steps, so AdamW is
checked on its outputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from compiler import zoo
from ir.interpreter import initial_params, interpret
from runtime.program import load
from zoo_programs import compiled, inputs_for

LEVELS = ("O0", "O1", "O3")
RTOL, ATOL = 1e-4, 1e-5


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name], np.float64), np.asarray(want[name], np.float64),
                                   rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("model", zoo.names())
def test_training_steps_match_interpreter(model, level):
    result = compiled(model, level, False)
    graph = result.graph
    program = load(result.pef, seed=3)
    params = initial_params(graph, seed=3)
    assert_close(program.get_params(), params)
    for step in range(2):
        inputs = inputs_for(graph, seed=step)
        outputs = program.run(inputs)
        want = interpret(graph, inputs, params)
        assert_close(outputs, want.outputs)
        params = {**params, **want.updates}
        assert_close({k: program.params[k] for k in want.updates}, want.updates)
    assert want.updates, "a training graph updates its params"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("model", zoo.names())
def test_inference_matches_interpreter(model, level):
    result = compiled(model, level, True)
    program = load(result.pef)
    inputs = inputs_for(result.graph, seed=7)
    before = program.get_params()
    assert_close(program.run(inputs), interpret(result.graph, inputs, before).outputs)
    assert_close(program.get_params(), before)


def test_gpt2_adamw_losses_match_interpreter():
    result = compiled("gpt2", "O1", False, optimizer="adamw")
    program = load(result.pef)
    params = initial_params(result.graph)
    for step in range(3):
        inputs = inputs_for(result.graph, seed=step, lr=1e-3)
        want = interpret(result.graph, inputs, params)
        assert_close(program.run(inputs), want.outputs)
        params = {**params, **want.updates}
    for name, value in params.items():
        np.testing.assert_allclose(program.params[name], value, rtol=RTOL, atol=3e-3, err_msg=name)
