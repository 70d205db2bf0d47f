"""The numpy semantics of kernel programs: an executable statement of the schema.

`run_kernel(program, inputs)` computes a kernel's outputs from its input arrays,
stage by stage, exactly as `backend/kernel_program.py` defines them. It is
slow and simple on purpose: tests check the lowering against the IR's reference
interpreter through it, and a runtime can check its native kernels against it.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from backend.kernel_program import (
    Access, AllReduceStage, Body, Buffer, ConcatStage, Conv2dInputGradStage, Conv2dStage, Conv2dWeightGradStage, DynamicSliceStage,
    GatherStage, GemmStage, KernelProgram, LiteralStage, MapStage, PadStage, Pool2dGradStage, Pool2dStage,
    ReduceStage, ScatterAddStage, UpdateSliceStage)
from ir.dtypes import DType
from ir.scalar import PRIMITIVES


def run_kernel(program: KernelProgram, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output buffer name -> array, from input buffer name -> array."""
    store: dict[str, np.ndarray] = {}
    for buffer in program.with_role("input"):
        store[buffer.name] = _storage(buffer, np.asarray(inputs[buffer.name]))
    buffers = {b.name: b for b in program.buffers}
    for stage in program.stages:
        out = buffers[stage.out]
        value = _STAGES[type(stage)](stage, store, buffers, out)
        if getattr(stage, "epilogue", None) is not None:
            value = evaluate(stage.epilogue, out.shape, store, acc=value.reshape(out.shape))
        store[stage.out] = np.asarray(value).astype(DType(out.dtype).np).reshape(-1)
    return {b.name: store[b.name].reshape(b.shape) for b in program.with_role("output")}


def _storage(buffer: Buffer, array: np.ndarray) -> np.ndarray:
    """A flat array laid out with the buffer's strides."""
    flat = np.zeros(buffer.span, DType(buffer.dtype).np)
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


def _map(stage: MapStage, store, buffers, out: Buffer) -> np.ndarray:
    return evaluate(stage.body, out.shape, store)


def _reduce(stage: ReduceStage, store, buffers, out: Buffer) -> np.ndarray:
    values = evaluate(stage.body, stage.shape, store)
    axes = tuple(stage.axes)
    if stage.combine == "argmax":
        return np.argmax(values, axis=axes[0])
    if stage.combine == "add":
        return np.sum(values, axis=axes, dtype=values.dtype)
    fn = np.max if stage.combine == "max" else np.min
    return fn(values, axis=axes, initial=np.asarray(stage.identity, values.dtype))


def _gemm(stage: GemmStage, store, buffers, out: Buffer) -> np.ndarray:
    batch = tuple(stage.batch)
    a = read(stage.a, batch + (stage.m, stage.k), store)
    b = read(stage.b, batch + (stage.k, stage.n), store)
    return np.matmul(a.astype(np.float32), b.astype(np.float32))


def _windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1), fill=0.0) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] sliding windows of the padded input."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=fill)
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    view = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def _conv2d(stage: Conv2dStage, store, buffers, out: Buffer) -> np.ndarray:
    x = read(stage.x, stage.x_shape, store).astype(np.float32)
    w = read(stage.w, stage.w_shape, store).astype(np.float32)
    g = stage.groups
    cols = _windows(x, stage.w_shape[2:], stage.stride, stage.padding, stage.dilation)
    n, c, oh, ow = cols.shape[:4]
    cols = cols.reshape(n, g, c // g, oh, ow, *stage.w_shape[2:])
    wg = w.reshape(g, stage.w_shape[0] // g, *stage.w_shape[1:])
    return np.einsum("ngchwij,gocij->ngohw", cols, wg, optimize=True).reshape(out.shape)


def _pool2d(stage: Pool2dStage, store, buffers, out: Buffer) -> np.ndarray:
    x = read(stage.x, stage.x_shape, store)
    fill = -np.inf if stage.mode == "max" else 0.0
    cols = _windows(x, stage.kernel, stage.stride, stage.padding, fill=fill)
    return cols.max(axis=(-2, -1)) if stage.mode == "max" else cols.mean(axis=(-2, -1))


def _gather(stage: GatherStage, store, buffers, out: Buffer) -> np.ndarray:
    table = read(stage.table, stage.table_shape, store)
    indices = read(stage.indices, stage.indices_shape, store)
    size = stage.table_shape[stage.axis]
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise IndexError(f"gather index out of range [0, {size})")
    return np.take(table, indices, axis=stage.axis)


def _scatter_add(stage: ScatterAddStage, store, buffers, out: Buffer) -> np.ndarray:
    ax = stage.axis
    shape = (*out.shape[:ax], *stage.indices_shape, *out.shape[ax + 1:])
    updates = read(stage.updates, shape, store)
    indices = read(stage.indices, stage.indices_shape, store).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= out.shape[ax]):
        raise IndexError(f"scatter_add index out of range [0, {out.shape[ax]})")
    flat = updates.reshape(*out.shape[:ax], indices.size, *out.shape[ax + 1:])
    result = np.zeros(out.shape, updates.dtype)
    np.add.at(result, (slice(None),) * ax + (indices,), flat)
    return result


def _concat(stage: ConcatStage, store, buffers, out: Buffer) -> np.ndarray:
    parts = [read(p, s, store) for p, s in zip(stage.parts, stage.shapes)]
    return np.concatenate(parts, axis=stage.axis)


def _literal(stage: LiteralStage, store, buffers, out: Buffer) -> np.ndarray:
    return np.asarray(stage.values, DType(out.dtype).np)


def _pad(stage: PadStage, store, buffers, out: Buffer) -> np.ndarray:
    x = read(stage.x, stage.x_shape, store)
    result = np.full(out.shape, stage.value, x.dtype)
    result[tuple(slice(lo, lo + max(d - 1, 0) * (it + 1) + 1, it + 1)
                 for d, lo, it in zip(stage.x_shape, stage.low, stage.interior))] = x
    return result


def _window_starts(stage, out_hw, i: int, j: int, dilation=(1, 1)) -> tuple[slice, slice]:
    """Where window offset (i, j) of every output position lands in the padded image."""
    (sh, sw), (dh, dw) = stage.stride, dilation
    return (slice(i * dh, i * dh + (out_hw[0] - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (out_hw[1] - 1) * sw + 1, sw))


def _padded(shape, padding, dtype) -> np.ndarray:
    n, c, h, w = shape
    return np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype)


def _crop(x: np.ndarray, padding) -> np.ndarray:
    ph, pw = padding
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


def _conv2d_input_grad(stage: Conv2dInputGradStage, store, buffers, out: Buffer) -> np.ndarray:
    g = read(stage.g, stage.g_shape, store).astype(np.float32)
    w = read(stage.w, stage.w_shape, store).astype(np.float32)
    groups, (o, cg, kh, kw) = stage.groups, stage.w_shape
    n, _, oh, ow = stage.g_shape
    gg = g.reshape(n, groups, o // groups, oh, ow)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    result = _padded(out.shape, stage.padding, np.float32)
    for i in range(kh):
        for j in range(kw):
            part = np.einsum("ngohw,goc->ngchw", gg, wg[..., i, j]).reshape(n, groups * cg, oh, ow)
            result[(slice(None), slice(None), *_window_starts(stage, (oh, ow), i, j, stage.dilation))] += part
    return _crop(result, stage.padding)


def _conv2d_weight_grad(stage: Conv2dWeightGradStage, store, buffers, out: Buffer) -> np.ndarray:
    x = read(stage.x, stage.x_shape, store).astype(np.float32)
    g = read(stage.g, stage.g_shape, store).astype(np.float32)
    groups, (o, cg, kh, kw) = stage.groups, out.shape
    n, _, oh, ow = stage.g_shape
    xp = np.pad(x, ((0, 0), (0, 0), (stage.padding[0],) * 2, (stage.padding[1],) * 2))
    gg = g.reshape(n, groups, o // groups, oh, ow)
    result = np.zeros(out.shape, np.float32)
    for i in range(kh):
        for j in range(kw):
            cols = xp[(slice(None), slice(None), *_window_starts(stage, (oh, ow), i, j, stage.dilation))]
            cols = cols.reshape(n, groups, cg, oh, ow)
            result[:, :, i, j] = np.einsum("ngchw,ngohw->goc", cols, gg).reshape(o, cg)
    return result


def _pool2d_grad(stage: Pool2dGradStage, store, buffers, out: Buffer) -> np.ndarray:
    g = read(stage.g, stage.g_shape, store)
    (kh, kw), oh, ow = stage.kernel, stage.g_shape[2], stage.g_shape[3]
    result = _padded(out.shape, stage.padding, g.dtype)
    windows = [(i, j) for i in range(kh) for j in range(kw)]
    if stage.mode == "avg":
        for i, j in windows:
            result[(slice(None), slice(None), *_window_starts(stage, (oh, ow), i, j))] += g / (kh * kw)
        return _crop(result, stage.padding)
    x = read(stage.x, out.shape, store)
    xp = np.pad(x, ((0, 0), (0, 0), (stage.padding[0],) * 2, (stage.padding[1],) * 2), constant_values=-np.inf)
    taken = [xp[(slice(None), slice(None), *_window_starts(stage, (oh, ow), i, j))] for i, j in windows]
    first = np.argmax(np.stack(taken), axis=0)
    for k, (i, j) in enumerate(windows):
        result[(slice(None), slice(None), *_window_starts(stage, (oh, ow), i, j))] += np.where(first == k, g, 0)
    return _crop(result, stage.padding)


def _rows(starts: np.ndarray, count: int, extent: int) -> list[tuple[int, int]]:
    """Per row b, the (j, position) pairs of `count` entries from its start that lie in [0, extent)."""
    return [[(j, int(s) + j) for j in range(count) if 0 <= int(s) + j < extent] for s in starts]


def _dynamic_slice(stage: DynamicSliceStage, store, buffers, out: Buffer) -> np.ndarray:
    x = read(stage.x, stage.x_shape, store)
    starts = read(stage.starts, stage.x_shape[:1], store)
    result = np.zeros(out.shape, x.dtype)
    lead = (slice(None),) * (stage.axis - 1)
    for b, pairs in enumerate(_rows(starts, out.shape[stage.axis], stage.x_shape[stage.axis])):
        for j, p in pairs:
            result[(b, *lead, j)] = x[(b, *lead, p)]
    return result


def _update_slice(stage: UpdateSliceStage, store, buffers, out: Buffer) -> np.ndarray:
    """In place or not, the result is the same: the operand with the update's rows written."""
    result = read(stage.operand, out.shape, store).copy()
    update = read(stage.update, stage.update_shape, store)
    starts = read(stage.starts, out.shape[:1], store)
    lead = (slice(None),) * (stage.axis - 1)
    for b, pairs in enumerate(_rows(starts, stage.update_shape[stage.axis], out.shape[stage.axis])):
        for j, p in pairs:
            result[(b, *lead, p)] = update[(b, *lead, j)]
    return result


def _all_reduce(stage: AllReduceStage, store, buffers, out: Buffer) -> np.ndarray:
    """As the `all_reduce` op's reference: every replica of the group holds this one's value."""
    x = read(stage.x, out.shape, store).astype(np.float32)
    return x * np.float32(stage.world_size) if stage.reduce == "sum" else x


_STAGES = {MapStage: _map, ReduceStage: _reduce, GemmStage: _gemm, Conv2dStage: _conv2d,
           Pool2dStage: _pool2d, GatherStage: _gather, ScatterAddStage: _scatter_add,
           ConcatStage: _concat, LiteralStage: _literal, PadStage: _pad,
           Conv2dInputGradStage: _conv2d_input_grad, Conv2dWeightGradStage: _conv2d_weight_grad,
           Pool2dGradStage: _pool2d_grad, DynamicSliceStage: _dynamic_slice, UpdateSliceStage: _update_slice,
           AllReduceStage: _all_reduce}
