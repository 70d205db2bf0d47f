"""Greedy generation equals Hugging Face `generate()` on the tiny GPT-2 and Llama checkpoints.

The reference (tests/fixtures/ref/<model>/expected.npz) is transformers' greedy
continuation of three prompts, one at a time, with its KV cache; every decoding step
has a top-1/top-2 logit gap of at least 4e-3, so logits within ~1e-4 give the same
tokens. Here the prompts run through the compiled PEF's prefill and decode entry
points (native kernels), one at a time and as one batch of three with different
lengths, and through the reference interpreter on the same graphs.
"""
from __future__ import annotations

import pytest

from generate_helpers import MODELS, expected, interpreted_steps, program_steps, reference_prompts, reference_tokens
from runtime.generate import generate
from runtime.sampling import SamplingOptions

GREEDY = SamplingOptions(temperature=0.0)


@pytest.fixture(scope="module")
def native(compiled):
    return {name: program_steps(compiled[name], name) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_one_prompt_at_a_time(native, name):
    eos = int(expected(name)["gen_eos_token_id"])
    for prompt, want in zip(reference_prompts(name), reference_tokens(name)):
        (completion,) = generate(native[name], [prompt], 12, GREEDY, eos).completions
        assert completion.token_ids == want and completion.stop == "max_new_tokens"


@pytest.mark.parametrize("name", MODELS)
def test_three_prompts_as_one_batch(native, name):
    result = generate(native[name], reference_prompts(name), 12, GREEDY, int(expected(name)["gen_eos_token_id"]))
    assert [c.token_ids for c in result.completions] == reference_tokens(name)
    assert result.new_tokens == 36 and result.ttft_s > 0 and result.tokens_per_s > 0


@pytest.mark.parametrize("name", MODELS)
def test_the_interpreter_agrees(compiled, name):
    steps = interpreted_steps(compiled[name], name)
    result = generate(steps, reference_prompts(name), 12, GREEDY, int(expected(name)["gen_eos_token_id"]))
    assert [c.token_ids for c in result.completions] == reference_tokens(name)


def test_more_prompts_than_rows_run_in_batches(native):
    prompts = reference_prompts("gpt2-tiny")
    wants = reference_tokens("gpt2-tiny")
    order = [2, 0, 1, 1, 2]  # five prompts, a batch of three rows: two batches
    result = generate(native["gpt2-tiny"], [prompts[i] for i in order], 12, GREEDY)
    assert [c.token_ids for c in result.completions] == [wants[i] for i in order]


def test_eos_stops_a_sequence_and_is_kept(native):
    prompts, wants = reference_prompts("gpt2-tiny"), reference_tokens("gpt2-tiny")
    eos = wants[1][4]  # the fifth token of the second continuation (its first occurrence there)
    assert eos not in wants[1][:4]
    result = generate(native["gpt2-tiny"], prompts, 12, GREEDY, eos_id=eos)
    second = result.completions[1]
    assert second.token_ids == wants[1][:5] and second.stop == "eos"
    for completion, want in zip(result.completions, wants):  # the others stop at their first eos, if any
        cut = want.index(eos) + 1 if eos in want else 12
        assert completion.token_ids == want[:cut]


@pytest.mark.parametrize("level", ["O0", "O3"])
def test_other_optimization_levels(level):
    """One op per kernel (-O0: nothing on chip, caches still written in place), or fusion and tiling (-O3)."""
    from compiler.driver import CompileOptions, compile_model
    from compiler.passes import PassManager
    from compiler.pass_manager.levels import level_pipeline
    from generate_helpers import checkpoint

    name = "llama-tiny"
    options = CompileOptions(model=str(checkpoint(name)), inference=True, batch_size=2, pack_sections=level != "O0")
    result = compile_model(options, PassManager.parse(level_pipeline(level)))
    steps = program_steps(result, name)
    got = generate(steps, reference_prompts(name)[1:], 12, GREEDY, int(expected(name)["gen_eos_token_id"]))
    assert [c.token_ids for c in got.completions] == reference_tokens(name)[1:]
