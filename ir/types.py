"""Tensor types: a static shape and an element type."""
from __future__ import annotations

import math

import attrs

from ir.dtypes import DType


def _shape(value) -> tuple[int, ...]:
    shape = tuple(int(d) for d in value)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {list(shape)}")
    return shape


@attrs.frozen(repr=False)
class TensorType:
    """`f32[2,3]`: a statically shaped tensor; `f32[]` is a scalar."""

    shape: tuple[int, ...] = attrs.field(converter=_shape)
    dtype: DType

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.size)

    def with_shape(self, shape) -> TensorType:
        return TensorType(shape, self.dtype)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"

    __repr__ = __str__
