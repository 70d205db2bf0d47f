"""Parameter initializers: `zeros`, `normal(std=0.02)`, `xavier_uniform`, ...

Each param is initialized from its own generator, seeded by the run seed and a
hash of the param's name, so values do not depend on declaration order.
"""
from __future__ import annotations

import inspect
import math
import zlib
from typing import Callable

import attrs
import numpy as np

from ir.dtypes import convert
from ir.literals import format_literal
from ir.types import TensorType


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """PyTorch's convention: weight [out, in, *kernel]."""
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _zeros(rng, shape):
    return np.zeros(shape)


def _ones(rng, shape):
    return np.ones(shape)


def _constant(rng, shape, value=0.0):
    return np.full(shape, value)


def _normal(rng, shape, mean=0.0, std=1.0):
    return rng.normal(mean, std, shape)


def _uniform(rng, shape, low=0.0, high=1.0):
    return rng.uniform(low, high, shape)


def _xavier_uniform(rng, shape, gain=1.0):
    fan_in, fan_out = _fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


def _xavier_normal(rng, shape, gain=1.0):
    fan_in, fan_out = _fans(shape)
    return rng.normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), shape)


def _kaiming_uniform(rng, shape, fan="in"):
    """PyTorch's default for Linear/Conv weights: U(-1/sqrt(fan), 1/sqrt(fan))."""
    if fan not in ("in", "out"):
        raise ValueError(f"fan must be 'in' or 'out', got {fan!r}")
    fan_in, fan_out = _fans(shape)
    bound = 1.0 / math.sqrt(fan_in if fan == "in" else fan_out)
    return rng.uniform(-bound, bound, shape)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "zeros": _zeros,
    "ones": _ones,
    "constant": _constant,
    "normal": _normal,
    "uniform": _uniform,
    "xavier_uniform": _xavier_uniform,
    "xavier_normal": _xavier_normal,
    "glorot_uniform": _xavier_uniform,
    "glorot_normal": _xavier_normal,
    "kaiming_uniform": _kaiming_uniform,
}


def _args(value) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(dict(value).items()))


@attrs.frozen(repr=False)
class Init:
    """An initializer: a kind from `INITIALIZERS` and its keyword arguments."""

    kind: str
    args: tuple[tuple[str, object], ...] = attrs.field(default=(), converter=_args)

    def __attrs_post_init__(self):
        if self.kind not in INITIALIZERS:
            raise ValueError(f"unknown initializer '{self.kind}' (expected one of {', '.join(INITIALIZERS)})")
        accepted = list(inspect.signature(INITIALIZERS[self.kind]).parameters)[2:]
        for key, _ in self.args:
            if key not in accepted:
                raise ValueError(f"bad arguments to initializer '{self.kind}': no argument '{key}' "
                                 f"(expected: {', '.join(accepted) or 'none'})")
        try:
            INITIALIZERS[self.kind](np.random.default_rng(0), (1, 1), **dict(self.args))
        except (TypeError, ValueError, ArithmeticError) as err:
            raise ValueError(f"bad arguments to initializer '{self.kind}': {err}") from None

    def materialize(self, type: TensorType, name: str, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        values = INITIALIZERS[self.kind](rng, type.shape, **dict(self.args))
        return convert(values, type.dtype)

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}({', '.join(f'{k}={format_literal(v)}' for k, v in self.args)})"

    __repr__ = __str__
