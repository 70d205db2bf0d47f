"""Element types of the IR and their numpy equivalents.

Besides the element types there are three block-quantized storage types, GGUF's
`q8_0`, `q4_0` and `q4_1`: a tensor's last axis is cut into blocks of 32 elements,
each stored as an f16 scale `d` (q4_1 also an f16 minimum `m`) and 32 8-bit or 4-bit
codes (4-bit: byte j holds element j in its low nibble and element j + 16 in its high
one). Element values are q8_0 `d * q`, q4_0 `d * (q - 8)`, q4_1 `d * q + m`, each
computed in f32 (as ggml and the `gguf` package dequantize). A block-quantized tensor
of shape [..., K] is held in numpy as an array of shape [..., K / 32] of blocks (a
structured dtype of one field, named as the type, of the block's bytes: GGUF's bytes,
`.view(np.uint8)`); it is only ever read through a widening `cast` to f32.
"""
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
    q8_0 = "q8_0"
    q4_0 = "q4_0"
    q4_1 = "q4_1"

    @property
    def np(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element (of a block-quantized type: per block, see `nbytes`)."""
        return _NUMPY[self].itemsize

    @property
    def is_blocked(self) -> bool:
        """A block-quantized storage type (32 elements of the last axis per block)."""
        return self in _BLOCKED

    @property
    def block(self) -> int:
        """Elements per block of the last axis (1 if not blocked)."""
        return BLOCK if self.is_blocked else 1

    def nbytes(self, count: int) -> int:
        """Bytes of storage of `count` elements (of the blocks holding them, if blocked)."""
        return -(-count // self.block) * self.itemsize

    def storage_shape(self, shape) -> tuple[int, ...]:
        """The shape of the numpy array holding a tensor of `shape` (its blocks, if blocked)."""
        shape = tuple(shape)
        return (*shape[:-1], shape[-1] // BLOCK) if self.is_blocked and shape else shape

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.bf16, DType.f16)

    @property
    def is_int(self) -> bool:
        return self in (DType.i32, DType.i64)

    def widens_to(self, other: DType) -> bool:
        """Whether every value of this float type is exactly a value of the wider float `other`
        (bf16 or f16 to f32)."""
        if self.is_blocked:
            return other is DType.f32
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
    **{d: np.dtype([(d.value, np.uint8, (n,))]) for d, n in ((DType.q8_0, 34), (DType.q4_0, 18), (DType.q4_1, 20))},
}

#: elements per block of a block-quantized type
BLOCK = 32
_BLOCKED = (DType.q8_0, DType.q4_0, DType.q4_1)

f32, bf16, f16, i32, i64 = DType.f32, DType.bf16, DType.f16, DType.i32, DType.i64
boolean = DType.bool


def _ggml(dtype: DType):
    from gguf import GGMLQuantizationType
    return GGMLQuantizationType[dtype.value.upper()]


def quantize(array: np.ndarray, dtype: DType) -> np.ndarray:
    """The blocks of `array` (its last axis a multiple of `BLOCK`) as ggml rounds them."""
    from gguf.quants import quantize as ggml_quantize
    if array.shape[-1] % BLOCK:
        raise ValueError(f"{dtype} stores the last axis in blocks of {BLOCK}: shape {list(array.shape)} does not divide")
    data = ggml_quantize(np.asarray(array, np.float32), _ggml(dtype))
    return as_blocks(data, dtype)


def as_blocks(data: np.ndarray, dtype: DType) -> np.ndarray:
    """GGUF's bytes of a block-quantized tensor ([..., K / 32 * block bytes] of uint8) as its blocks."""
    return np.ascontiguousarray(data, np.uint8).view(dtype.np)


def holds_blocks(array: np.ndarray) -> bool:
    """Whether a numpy array holds a block-quantized tensor's blocks."""
    return any(np.asarray(array).dtype == _NUMPY[d] for d in _BLOCKED)


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """The f32 values of an array of blocks (the reference semantics of the widening cast)."""
    from gguf.quants import dequantize as ggml_dequantize
    dtype = DType.of(blocks)
    return ggml_dequantize(np.ascontiguousarray(blocks).view(np.uint8), _ggml(dtype)).astype(np.float32, copy=False)


def convert(array, dtype: DType) -> np.ndarray:
    """`array` in the storage of `dtype` (rounded by numpy's astype; blocks quantized as ggml does,
    and dequantized to a float type)."""
    array = np.asarray(array)
    if array.dtype == dtype.np:
        return array
    if holds_blocks(array):
        array = dequantize(array)
    return quantize(array, dtype) if dtype.is_blocked else array.astype(dtype.np)
