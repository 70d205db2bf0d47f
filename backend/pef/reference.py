"""The numpy semantics of kernel programs: an executable statement of the schema.

`run_kernel(program, inputs)` computes a kernel's outputs from its input arrays,
stage by stage, each through its declaration's `reference` (`backend.pef.stages`).
It is slow and simple on purpose: tests check the lowering against the IR's
reference interpreter through it, and the JIT's kernels against it.
"""
from __future__ import annotations

import math
from typing import Mapping

import attrs
import numpy as np

from backend.pef.records import Access, Body, Buffer
from ir.dtypes import DType, dequantize
from ir.scalar import PRIMITIVES


def run_kernel(program, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output buffer name -> array, from input buffer name -> array."""
    store: dict[str, np.ndarray] = {}
    for buffer in program.with_role("input"):
        store[buffer.name] = _storage(buffer, np.asarray(inputs[buffer.name]))
    buffers = {b.name: b for b in program.buffers}
    reader = Store(store)
    for stage in program.stages:
        out = buffers[stage.out]
        value = stage.reference(reader, out)
        if getattr(stage, "epilogue", None) is not None:
            value = evaluate(stage.epilogue, out.shape, store, acc=value.reshape(out.shape))
        store[stage.out] = np.asarray(value).astype(DType(out.dtype).np).reshape(-1)
    return {b.name: store[b.name].reshape(b.shape) for b in program.with_role("output")}


def _storage(buffer: Buffer, array: np.ndarray) -> np.ndarray:
    """A flat array laid out with the buffer's strides (blocks held as their f32 values: reading
    them is the dequantizing load)."""
    dtype = DType(buffer.dtype)
    if dtype.is_blocked:
        array, dtype = dequantize(array), DType.f32
    flat = np.zeros(buffer.span, dtype.np)
    if array.size:
        _view(flat, 0, buffer.strides, buffer.shape, writeable=True)[...] = array
    return flat


def _view(flat: np.ndarray, offset: int, strides, shape, writeable: bool = False) -> np.ndarray:
    if math.prod(shape) == 0:
        return np.zeros(shape, flat.dtype)
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], tuple(shape), tuple(s * item for s in strides),
                                           writeable=writeable)


def read(access: Access, shape, store) -> np.ndarray:
    return _view(store[access.buffer], access.offset, access.strides, shape)


def evaluate(body: Body, shape, store, acc: np.ndarray | None = None) -> np.ndarray:
    """A body over the loop index space `shape`."""
    grid = np.indices(shape, dtype=np.int64) if shape else np.zeros((0,), np.int64)
    values: list[np.ndarray] = []
    for node in body.nodes:
        dtype = DType(node.dtype).np
        args = [values[a] for a in node.args]
        if node.op == "arg":
            value = read(body.reads[node.value], shape, store)
        elif node.op == "index":
            affine = body.indices[node.value]
            value = np.int64(affine.offset) + sum((c * grid[j] for j, c in enumerate(affine.coeffs)), np.int64(0))
        elif node.op == "acc":
            value = acc
        elif node.op == "const":
            value = np.asarray(node.value, dtype)
        elif node.op == "cast":
            value = args[0].astype(dtype)
        else:
            with np.errstate(all="ignore"):
                value = np.asarray(PRIMITIVES[node.op](*args)).astype(dtype)
        values.append(np.asarray(value))
    return np.broadcast_to(values[-1], shape)


@attrs.frozen
class Store:
    """The flat arrays of a kernel's buffers, as stage references read them."""

    arrays: dict[str, np.ndarray]

    def read(self, access: Access, shape) -> np.ndarray:
        return read(access, shape, self.arrays)

    def evaluate(self, body: Body, shape) -> np.ndarray:
        return evaluate(body, shape, self.arrays)


def windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1), fill=0.0) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] sliding windows of the padded input."""
    padded_x = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=fill)
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    view = np.lib.stride_tricks.sliding_window_view(padded_x, span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def window_starts(stage, out_hw, i: int, j: int, dilation=(1, 1)) -> tuple[slice, slice]:
    """Where window offset (i, j) of every output position lands in the padded image."""
    (sh, sw), (dh, dw) = stage.stride, dilation
    return (slice(i * dh, i * dh + (out_hw[0] - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (out_hw[1] - 1) * sw + 1, sw))


def padded(shape, padding, dtype) -> np.ndarray:
    """Zeros of an NCHW `shape` with `padding` added around H and W."""
    n, c, h, w = shape
    return np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype)


def crop(x: np.ndarray, padding) -> np.ndarray:
    """`x` without its H and W padding."""
    ph, pw = padding
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]
