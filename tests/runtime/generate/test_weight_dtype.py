"""`--weight-dtype bf16|f16`: weight matrices and embeddings stored 16-bit in generation PEFs.

The oracle is the reference interpreter on the same rounded weights (the compiled
program must compute exactly what the f32 model computes with rounded weights);
transformers' f32 logits are then only as close as the rounding allows.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from compiler.passes import PassManager
from generate_helpers import MODELS, checkpoint, compile_generation, expected, interpreted_steps, program_steps
from ir.errors import ConfigError
from ir.interpreter import initial_params, interpret
from runtime.generate import Prompt, generate
from runtime.sampling import SamplingOptions
from test_kv_cache import cached_logits
from tools.cli import main

#: max |logit - transformers' f32 logit| the rounding of the tiny models' weights allows
ROUNDING_ATOL = {"bf16": 0.2, "f16": 0.05}
PROMPT_LENGTHS = [5, 9]


@pytest.fixture(scope="module", params=["bf16", "f16"])
def weight_dtype(request):
    return request.param


@pytest.fixture(scope="module")
def compiled16(weight_dtype):
    return {name: compile_generation(name, weight_dtype=weight_dtype) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_native_logits_equal_the_interpreter_on_rounded_weights(compiled16, weight_dtype, name):
    ids = expected(name)["input_ids"]
    native = cached_logits(program_steps(compiled16[name], name), ids, PROMPT_LENGTHS)
    reference = cached_logits(interpreted_steps(compiled16[name], name), ids, PROMPT_LENGTHS)
    np.testing.assert_allclose(native, reference, atol=5e-5, rtol=0)  # NaN where neither computes


@pytest.mark.parametrize("name", MODELS)
def test_logits_stay_within_rounding_of_the_f32_model(compiled16, weight_dtype, name):
    ref = expected(name)
    got = cached_logits(program_steps(compiled16[name], name), ref["input_ids"], PROMPT_LENGTHS)
    for b, n in enumerate(PROMPT_LENGTHS):
        error = np.abs(got[b, n - 1:15] - ref["logits"][b, n - 1:15]).max()
        assert 0 < error < ROUNDING_ATOL[weight_dtype]  # rounded (not f32), but only that


def test_matrices_and_embeddings_are_stored_narrow(compiled16, weight_dtype):
    pef = compiled16["gpt2-tiny"].pef
    dtypes = {p.name: p.dtype for p in pef.symbols.params}
    assert dtypes["transformer.wte.weight"] == dtypes["transformer.h.0.mlp.c_fc.weight"] == weight_dtype
    assert dtypes["transformer.h.0.mlp.c_fc.bias"] == dtypes["transformer.ln_f.weight"] == "f32"
    assert dtypes["transformer.h.0.attn.k_cache"] == "f32"  # state: written every step
    assert {o.name: o.value for o in pef.header.options}["weight_dtype"] == weight_dtype
    for entry in pef.entry_names:
        assert {p.name: p.dtype for p in pef.entry(entry).symbols.params} == dtypes


def test_the_cast_pass_is_exact_for_rounded_weights():
    """The forward graph after cast-weights computes bit for bit what the f32 graph computes on
    weights rounded to bf16 (the casts are exact; every other op is unchanged)."""
    model = str(checkpoint("gpt2-tiny"))
    forward = compile_model(CompileOptions(model, inference=True, emit="ir")).graph
    narrow = compile_model(CompileOptions(model, inference=True, emit="ir-opt"), PassManager.parse("cast-weights")).graph
    params = initial_params(narrow, seed=3)
    widened = {name: value.astype(np.float32) for name, value in params.items()}
    (ids,) = forward.inputs
    inputs = {"input_ids": np.random.default_rng(0).integers(0, 100, ids.type.shape).astype(np.int32)}
    before = interpret(forward, inputs, widened).outputs["logits"]
    after = interpret(narrow, inputs, params).outputs["logits"]
    assert any(p.type.dtype.value == "bf16" for p in narrow.params)
    np.testing.assert_array_equal(before, after)


def test_greedy_generation_runs_on_16_bit_weights(compiled16, weight_dtype):
    steps = program_steps(compiled16["gpt2-tiny"], "gpt2-tiny")
    reference = interpreted_steps(compiled16["gpt2-tiny"], "gpt2-tiny")
    prompts = [Prompt((5, 17, 3, 99), "p0"), Prompt(tuple(range(1, 12)), "p1")]
    greedy = SamplingOptions(temperature=0.0)
    native = generate(steps, prompts, 8, greedy)
    oracle = generate(reference, prompts, 8, greedy)
    assert [c.token_ids for c in native.completions] == [c.token_ids for c in oracle.completions]


def test_training_keeps_f32_weights():
    with pytest.raises(ConfigError, match="--weight-dtype bf16 needs --inference"):
        compile_model(CompileOptions("mlp", weight_dtype="bf16"))


def test_command_line_compile_and_generate(capsys, tmp_path):
    gpt2 = checkpoint("gpt2-tiny")
    argv = ["compile", str(gpt2), "--inference", "--weight-dtype", "bf16", "-b", "1", "-o", str(tmp_path)]
    assert main([*argv, "--pef-name", "gen16"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "gen16" / "gen16.pef"), "--inference", "--checkpoint", str(gpt2),
                 "--prompt-ids", "30,86,11,27", "--max-new-tokens", "4", "--temperature", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"][0]) == 4
    assert main(["compile", "mlp", "--weight-dtype", "bf16", "-o", str(tmp_path)]) == 1
    assert "--weight-dtype bf16 needs --inference" in capsys.readouterr().err
