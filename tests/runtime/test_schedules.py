"""Learning-rate schedules (`runtime.schedules`)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.schedules import SCHEDULES, Schedule


def test_constant_with_warmup_ramps_linearly_then_holds():
    s = Schedule(0.1, "constant", warmup_steps=4, total_steps=10)
    assert [s(i) for i in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert s(9) == 0.1


def test_linear_decays_from_the_end_of_warmup_toward_zero():
    s = Schedule(1.0, "linear", warmup_steps=2, total_steps=12)
    assert s(0) == 0.5 and s(1) == 1.0
    assert s(2) == 1.0 and s(7) == pytest.approx(0.5) and s(11) == pytest.approx(0.1)
    assert s(12) == 0.0 and s(50) == 0.0  # past the end: zero, never negative


def test_cosine_is_half_way_at_the_middle_of_the_decay():
    s = Schedule(2.0, "cosine", warmup_steps=0, total_steps=100)
    assert s(0) == 2.0
    assert s(50) == pytest.approx(1.0)
    assert s(25) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert s(100) == pytest.approx(0.0)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        Schedule(0.1, "step")
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        Schedule(0.1, "linear", warmup_steps=-1)


@given(st.sampled_from(SCHEDULES), st.integers(0, 20), st.integers(1, 200), st.integers(0, 250))
def test_rates_stay_between_zero_and_the_peak(name, warmup, total, step):
    s = Schedule(0.5, name, warmup, total)
    assert 0.0 <= s(step) <= 0.5
    if step < warmup:
        assert s(step) == pytest.approx(0.5 * (step + 1) / warmup)
