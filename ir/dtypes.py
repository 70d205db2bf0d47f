"""Element types of the IR and their numpy equivalents."""
from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.Enum):
    """An element type; `.value` is its IR spelling."""

    f32 = "f32"
    bf16 = "bf16"
    f16 = "f16"
    i32 = "i32"
    i64 = "i64"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def itemsize(self) -> int:
        return _NUMPY[self].itemsize

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.bf16, DType.f16)

    @property
    def is_int(self) -> bool:
        return self in (DType.i32, DType.i64)

    def widens_to(self, other: DType) -> bool:
        """Whether every value of this float type is exactly a value of the wider float `other`
        (bf16 or f16 to f32)."""
        return self.is_float and other.is_float and other.itemsize > self.itemsize

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> DType:
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise ValueError(f"unknown dtype '{text}' (expected one of {names})") from None

    @classmethod
    def of(cls, array: np.ndarray) -> DType:
        """The IR dtype of a numpy array's dtype."""
        for dtype, np_dtype in _NUMPY.items():
            if np_dtype == array.dtype:
                return dtype
        raise ValueError(f"no IR dtype for numpy dtype {array.dtype}")


_NUMPY = {
    DType.f32: np.dtype(np.float32),
    DType.bf16: np.dtype(ml_dtypes.bfloat16),
    DType.f16: np.dtype(np.float16),
    DType.i32: np.dtype(np.int32),
    DType.i64: np.dtype(np.int64),
    DType.bool: np.dtype(np.bool_),
}

f32, bf16, f16, i32, i64 = DType.f32, DType.bf16, DType.f16, DType.i32, DType.i64
boolean = DType.bool
