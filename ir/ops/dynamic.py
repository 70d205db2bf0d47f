"""Ops with run-time offsets: a window of each row at its own start, and writing one back.

Both index along `axis` (>= 1) with one start per entry of axis 0 (per sequence of
a batch): `starts` is an integer vector of `x.shape[0]` entries. Positions that fall
outside the axis read as zero (`dynamic_slice`) or are dropped (`dynamic_update_slice`),
so a padded step of generation never writes out of bounds. A KV cache is written with
`dynamic_update_slice`: it declares `inplace_operand`, so the memory plan may give its
result the cache's own memory and the kernel writes only the new rows.
"""
from __future__ import annotations

import numpy as np

from ir.ops.base import Attr, Cost, FusionKind, OpDef, TypeRuleError, register
from ir.types import TensorType


def _check_starts(x: TensorType, starts: TensorType, axis: int) -> None:
    if not 1 <= axis < x.rank:
        raise TypeRuleError(f"axis {axis} out of range for {x}: 1 <= axis < rank (axis 0 holds the rows)")
    if not starts.dtype.is_int or starts.shape != x.shape[:1]:
        raise TypeRuleError(f"starts must be an integer vector with one entry per row of axis 0 "
                            f"({x.shape[0]}), got {starts}")


def _positions(starts: np.ndarray, count: int, extent: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `count` positions from its start, and which of them lie in [0, extent)."""
    pos = starts.astype(np.int64)[:, None] + np.arange(count, dtype=np.int64)[None, :]
    return pos, (pos >= 0) & (pos < extent)


@register
class DynamicSlice(OpDef):
    """`size` entries of `axis` from each row's start: out[b, ..., j, ...] = x[b, ..., starts[b] + j, ...]
    (zero where starts[b] + j is outside the axis)."""

    name = "dynamic_slice"
    kind = FusionKind.injective
    arity = 2
    flops_per_element = 0
    attrs = {"axis": Attr("int"), "size": Attr("int")}

    @classmethod
    def infer(cls, types, attrs):
        x, starts = types
        axis, size = attrs["axis"], attrs["size"]
        _check_starts(x, starts, axis)
        if not 0 <= size <= x.shape[axis]:
            raise TypeRuleError(f"size {size} out of range for axis {axis} of {x}")
        return [x.with_shape(x.shape[:axis] + (size,) + x.shape[axis + 1:])]

    @classmethod
    def ref(cls, attrs, x, starts):
        axis, size = attrs["axis"], attrs["size"]
        pos, valid = _positions(starts, size, x.shape[axis])
        out = np.zeros(x.shape[:axis] + (size,) + x.shape[axis + 1:], dtype=x.dtype)
        for row in range(x.shape[0]):
            taken = np.take(x[row], np.clip(pos[row], 0, max(x.shape[axis] - 1, 0)), axis=axis - 1)
            keep = valid[row].reshape((size,) + (1,) * (x.ndim - axis - 1))
            out[row] = np.where(keep, taken, np.zeros((), x.dtype))
        return out

    @classmethod
    def vjp(cls, b, op, grads):
        x, starts = op.operands
        zeros = b.full(shape=x.type.shape, value=0.0, dtype=x.type.dtype)
        return [b.dynamic_update_slice(zeros, grads[0], starts, axis=op.attrs["axis"]), None]

    @classmethod
    def index_bounds(cls, op):
        return {1: op.operands[0].type.shape[op.attrs["axis"]]}

    @classmethod
    def cost(cls, op):
        out = op.result.type.nbytes
        return Cost(0, out + op.operands[1].type.nbytes, out)

    @classmethod
    def stage(cls, op):
        return {"axis": op.attrs["axis"]}


@register
class DynamicUpdateSlice(OpDef):
    """`operand` with each row's entries of `axis` from its start replaced by `update`'s:
    out[b, ..., starts[b] + j, ...] = update[b, ..., j, ...] (rows landing outside the axis are dropped)."""

    name = "dynamic_update_slice"
    kind = FusionKind.opaque
    arity = 3
    flops_per_element = 0
    inplace_operand = 0
    attrs = {"axis": Attr("int")}

    @classmethod
    def infer(cls, types, attrs):
        operand, update, starts = types
        axis = attrs["axis"]
        _check_starts(operand, starts, axis)
        fits = update.rank == operand.rank and update.shape[axis] <= operand.shape[axis] and all(
            u == o for i, (u, o) in enumerate(zip(update.shape, operand.shape)) if i != axis)
        if not fits or update.dtype != operand.dtype:
            raise TypeRuleError(f"update {update} does not fit {operand} along axis {axis}")
        return [operand]

    @classmethod
    def ref(cls, attrs, operand, update, starts):
        axis = attrs["axis"]
        pos, valid = _positions(starts, update.shape[axis], operand.shape[axis])
        out = operand.copy()
        for row in range(operand.shape[0]):
            rows = np.moveaxis(out[row], axis - 1, 0)
            rows[pos[row][valid[row]]] = np.moveaxis(update[row], axis - 1, 0)[valid[row]]
        return out

    @classmethod
    def vjp(cls, b, op, grads):
        operand, update, starts = op.operands
        axis, g = op.attrs["axis"], grads[0]
        zeros = b.full(shape=update.type.shape, value=0.0, dtype=update.type.dtype)
        return [b.dynamic_update_slice(g, zeros, starts, axis=axis),
                b.dynamic_slice(g, starts, axis=axis, size=update.type.shape[axis]), None]

    @classmethod
    def index_bounds(cls, op):
        return {2: op.operands[0].type.shape[op.attrs["axis"]]}

    @classmethod
    def cost(cls, op):
        """Written in place: only the update's rows move."""
        update = op.operands[1].type.nbytes
        return Cost(0, update + op.operands[2].type.nbytes, update)

    @classmethod
    def stage(cls, op):
        return {"axis": op.attrs["axis"]}
