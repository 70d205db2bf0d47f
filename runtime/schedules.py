"""Learning-rate schedules: the value of the `lr` run-time input at each step.

A schedule is a linear warmup over `warmup_steps` steps followed by a decay over
the remaining steps of the run. Step `s` is 0-based (the step about to be
taken); during warmup the rate is `lr * (s + 1) / warmup_steps`, so the first
step already moves the weights. After warmup, with `p = (s - warmup_steps) /
(total_steps - warmup_steps)` running from 0 toward 1:

* ``constant``: `lr`;
* ``linear``: `lr * (1 - p)`;
* ``cosine``: `lr * (1 + cos(pi * p)) / 2`.

The learning rate is a graph input, so changing the schedule needs no recompile.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import attrs

ScheduleName = Literal["constant", "linear", "cosine"]

_DECAYS: dict[str, Callable[[float], float]] = {
    "constant": lambda p: 1.0,
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}
SCHEDULES: tuple[str, ...] = tuple(_DECAYS)


@attrs.frozen
class Schedule:
    """A learning-rate schedule over a run of `total_steps` steps."""

    lr: float
    name: ScheduleName = "constant"
    warmup_steps: int = 0
    total_steps: int = 1

    def __attrs_post_init__(self) -> None:
        if self.name not in _DECAYS:
            raise ValueError(f"unknown learning-rate schedule '{self.name}' (expected {', '.join(SCHEDULES)})")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and total_steps >= 1")

    def __call__(self, step: int) -> float:
        """The learning rate of 0-based step `step`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.lr * _DECAYS[self.name](progress)
