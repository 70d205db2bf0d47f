"""Host-side sampling: greedy, temperature, top-k, top-p, repetition penalty, seeds."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ir.errors import ConfigError
from runtime.sampling import Sampler, SamplingOptions, distribution, penalize

LOGITS = np.array([1.0, 3.0, -2.0, 2.5, 0.0], np.float32)


def draws(options: SamplingOptions, logits=LOGITS, n: int = 200, previous=()) -> list[int]:
    sampler = Sampler(options)
    return [sampler.next_token(logits, previous) for _ in range(n)]


def test_temperature_zero_is_the_arg_max():
    assert set(draws(SamplingOptions(temperature=0.0), n=5)) == {1}


def test_top_k_one_is_greedy_at_any_temperature_and_seed():
    for seed in range(3):
        assert set(draws(SamplingOptions(temperature=2.0, top_k=1, seed=seed), n=50)) == {1}


def test_a_seed_reproduces_a_sample_and_another_seed_differs():
    options = SamplingOptions(temperature=1.0, seed=7)
    assert draws(options) == draws(options)
    assert draws(options) != draws(SamplingOptions(temperature=1.0, seed=8))


def test_samples_follow_the_softmax():
    counts = np.bincount(draws(SamplingOptions(temperature=1.0, seed=0), n=8000), minlength=5) / 8000
    probs = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
    np.testing.assert_allclose(counts, probs, atol=0.02)


def test_temperature_sharpens_and_flattens():
    cold = distribution(LOGITS.astype(np.float64), SamplingOptions(temperature=0.5))
    hot = distribution(LOGITS.astype(np.float64), SamplingOptions(temperature=2.0))
    scaled = LOGITS.astype(np.float64) / 0.5
    expected = np.exp(scaled - scaled.max())
    np.testing.assert_allclose(cold, expected / expected.sum(), rtol=1e-12)
    assert cold.max() > hot.max()


def test_top_k_keeps_the_k_most_likely():
    probs = distribution(LOGITS.astype(np.float64), SamplingOptions(top_k=2))
    assert set(np.nonzero(probs)[0]) == {1, 3}
    np.testing.assert_allclose(probs[[1, 3]], np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum())
    assert set(draws(SamplingOptions(top_k=2, seed=3), n=300)) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert set(np.nonzero(distribution(logits, SamplingOptions(top_p=0.75)))[0]) == {0, 1}
    assert set(np.nonzero(distribution(logits, SamplingOptions(top_p=0.79)))[0]) == {0, 1}
    assert set(np.nonzero(distribution(logits, SamplingOptions(top_p=0.81)))[0]) == {0, 1, 2}
    assert set(np.nonzero(distribution(logits, SamplingOptions(top_p=0.1)))[0]) == {0}


def test_repetition_penalty_as_hugging_face():
    """Positive logits of seen tokens divided by the penalty, negative ones multiplied."""
    got = penalize(LOGITS.astype(np.float64), [1, 2, 1], 2.0)
    np.testing.assert_array_equal(got, [1.0, 1.5, -4.0, 2.5, 0.0])
    assert draws(SamplingOptions(temperature=0.0, repetition_penalty=2.0), n=1, previous=[1]) == [3]


@example(logits=np.array([np.nextafter(30.0, 0.0), 30.0]), temperature=1.75, top_k=0, top_p=0.5)
@settings(max_examples=60, deadline=None)
@given(logits=arrays(np.float64, st.integers(1, 40), elements=st.floats(-30, 30)),
       temperature=st.floats(0.05, 5.0), top_k=st.integers(0, 50), top_p=st.floats(0.01, 1.0))
def test_the_distribution_is_a_distribution_over_the_top_tokens(logits, temperature, top_k, top_p):
    probs = distribution(logits, SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p))
    assert probs.shape == logits.shape and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-9
    kept = np.nonzero(probs)[0]
    assert 1 <= len(kept) <= (top_k or len(logits))
    assert logits[kept].min() >= np.sort(logits)[::-1][len(kept) - 1]  # the kept ones are the most likely
    assert probs[np.argmax(logits)] > 0


@pytest.mark.parametrize("values, message", [
    ({"temperature": -1.0}, "--temperature: input should be greater than or equal to 0"),
    ({"top_k": -2}, "--top-k: input should be greater than or equal to 0"),
    ({"top_p": 0.0}, "--top-p: input should be greater than 0"),
    ({"top_p": 1.5}, "--top-p: input should be less than or equal to 1"),
    ({"repetition_penalty": 0.0}, "--repetition-penalty: input should be greater than 0"),
])
def test_bad_options_name_the_flag(values, message):
    with pytest.raises(ConfigError, match=message):
        SamplingOptions.parse(lambda f: "--" + f.replace("_", "-"), **values)
