"""The KV-cache path computes what a full forward pass computes.

`expected.npz` holds transformers' logits of two 16-token sequences (full causal
attention, no cache). Here each sequence is prefilled with a few tokens — in one
call, or in several when it is longer than the compiled prefill chunk — and then
decoded one token at a time; the logits of every position must match. The PEF's
main program, the plain forward pass over the same memory, matches too.
"""
from __future__ import annotations

import numpy as np
import pytest

from generate_helpers import MODELS, compile_generation, expected, program_steps

ATOL = 1e-4


def cached_logits(steps, ids: np.ndarray, prompt_lengths: list[int]) -> np.ndarray:
    """[B, S, V]: logits after positions prompt_length - 1 .. S - 2 of each row (NaN elsewhere),
    prefilling each row's prompt chunk by chunk, then decoding one token per step."""
    batch, length = ids.shape
    limits = steps.limits
    out = np.full((batch, length, limits.vocab), np.nan, np.float32)
    for start in range(0, max(prompt_lengths), limits.chunk):
        rows = np.zeros((limits.batch, limits.chunk), np.int32)
        positions = np.full(limits.batch, limits.max_seq_length, np.int32)
        lengths = np.ones(limits.batch, np.int32)
        for b, n in enumerate(prompt_lengths):
            part = ids[b, start:min(n, start + limits.chunk)]
            if len(part):
                rows[b, :len(part)], positions[b], lengths[b] = part, start, len(part)
        logits = steps.prefill(rows, positions, lengths)
        for b, n in enumerate(prompt_lengths):
            if start < n <= start + limits.chunk:
                out[b, n - 1] = logits[b]
    for t in range(min(prompt_lengths), length - 1):
        step_ids = np.zeros((limits.batch, 1), np.int32)
        positions = np.full(limits.batch, limits.max_seq_length, np.int32)
        live = [b for b, n in enumerate(prompt_lengths) if t >= n]
        for b in live:
            step_ids[b, 0], positions[b] = ids[b, t], t
        logits = steps.decode(step_ids, positions)
        for b in live:
            out[b, t] = logits[b]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_decode_logits_equal_the_full_forward_pass(compiled, name):
    ref = expected(name)
    steps = program_steps(compiled[name], name)
    got = cached_logits(steps, ref["input_ids"], [5, 9])  # rows of different prompt lengths in one batch
    for b, n in enumerate([5, 9]):
        np.testing.assert_allclose(got[b, n - 1:15], ref["logits"][b, n - 1:15], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_main_program_is_the_forward_pass_over_the_same_weights(compiled, name):
    ref = expected(name)
    steps = program_steps(compiled[name], name)
    assert steps.program.pef.symbols.inputs[0].shape == (3, 16)
    rows = np.concatenate([ref["input_ids"], ref["input_ids"][:1]])
    logits = steps.program.run({"input_ids": rows})["logits"]
    np.testing.assert_allclose(logits[:2], ref["logits"], atol=ATOL, rtol=0)


def test_prompts_longer_than_the_chunk_prefill_in_chunks():
    """A prefill chunk of 4 tokens: prompts of 10 and 13 tokens take four prefill calls."""
    name = "llama-tiny"
    ref = expected(name)
    steps = program_steps(compile_generation(name, "model.seq_len=4", batch_size=2), name)
    assert steps.limits.chunk == 4
    got = cached_logits(steps, ref["input_ids"], [10, 13])
    for b, n in enumerate([10, 13]):
        np.testing.assert_allclose(got[b, n - 1:15], ref["logits"][b, n - 1:15], atol=ATOL, rtol=0)
