"""`--weight-dtype q8_0|q4_0|q4_1`: weight matrices stored in GGUF's blocks in generation PEFs.

The oracle is the reference interpreter on the same blocks (it dequantizes as the `gguf`
package does): the compiled program computes what the f32 model computes with the
dequantized weights, up to the order of f32 sums.
"""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from generate_helpers import MODELS, checkpoint, compile_generation, expected, interpreted_steps, program_steps
from ir.dtypes import DType, dequantize
from test_kv_cache import cached_logits

PROMPT_LENGTHS = [5, 9]
#: max |logit - transformers' f32 logit| on the tiny models (their weights are O(0.5): coarse steps)
QUANTIZATION_ATOL = {"q8_0": 0.5, "q4_0": 10.0, "q4_1": 8.0}


@pytest.fixture(scope="module", params=["q8_0", "q4_0", "q4_1"])
def weight_dtype(request):
    return request.param


@pytest.fixture(scope="module")
def compiled(weight_dtype):
    return {name: compile_generation(name, weight_dtype=weight_dtype) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_native_logits_equal_the_interpreter_on_the_blocks(compiled, weight_dtype, name):
    ids = expected(name)["input_ids"]
    native = cached_logits(program_steps(compiled[name], name), ids, PROMPT_LENGTHS)
    reference = cached_logits(interpreted_steps(compiled[name], name), ids, PROMPT_LENGTHS)
    np.testing.assert_allclose(native, reference, atol=5e-5, rtol=0)
    ref = expected(name)
    for b, n in enumerate(PROMPT_LENGTHS):
        error = np.abs(native[b, n - 1:15] - ref["logits"][b, n - 1:15]).max()
        assert 0 < error < QUANTIZATION_ATOL[weight_dtype]


def test_matrices_and_tied_embeddings_in_blocks_gathered_only_ones_16_bit(compiled, weight_dtype):
    llama = compiled["llama-tiny"].pef
    dtypes = {p.name: p.dtype for p in llama.symbols.params}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == dtypes["lm_head.weight"] == weight_dtype
    assert dtypes["model.embed_tokens.weight"] == "f16"  # only a gather reads it (the head is untied)
    assert dtypes["model.norm.weight"] == "f32"
    gpt2 = {p.name: p.dtype for p in compiled["gpt2-tiny"].pef.symbols.params}
    assert gpt2["transformer.h.0.mlp.c_fc.weight"] == weight_dtype
    assert gpt2["transformer.wte.weight"] == "q8_0"  # tied: the LM head and the lookup read 8-bit blocks
    assert gpt2["transformer.wpe.weight"] == "f16"
    assert {o.name: o.value for o in llama.header.options}["weight_dtype"] == weight_dtype


def test_params_are_the_checkpoint_quantized_once(compiled, weight_dtype):
    """The loaded params are blocks of GGUF's size whose values are the f32 weights, rounded."""
    program = program_steps(compiled["llama-tiny"], "llama-tiny").program
    blocks = program.params["model.layers.0.mlp.down_proj.weight"]  # [32, 64]: two blocks a row
    assert blocks.shape == (32, 2) and DType.of(blocks).value == weight_dtype
    assert blocks.nbytes == 64 * {"q8_0": 34, "q4_0": 18, "q4_1": 20}[weight_dtype]
    weights = dequantize(blocks)
    step = np.abs(weights).max() / {"q8_0": 127, "q4_0": 7, "q4_1": 7}[weight_dtype]
    f32 = load_file(checkpoint("llama-tiny") / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    assert 0 < np.abs(weights - f32).max() <= step


def test_the_cost_model_counts_the_blocks_bytes(compiled, weight_dtype):
    """A decode step's off-chip reads shrink by exactly the bytes the weights no longer take: llama-tiny's
    22528 matrix weights from 4 bytes to a block's bytes / 32, its 4096-entry embedding from 4 to 2."""
    def hbm_read(pef) -> int:
        return sum(k.cost.bytes_read.get("hbm", 0) for k in pef.entry("decode").kernels)
    f32 = compile_generation("llama-tiny").pef
    block = {"q8_0": 34, "q4_0": 18, "q4_1": 20}[weight_dtype]
    saved = 22528 * 4 - 22528 // 32 * block + 4096 * 2
    assert hbm_read(f32) - hbm_read(compiled["llama-tiny"].pef) == saved
