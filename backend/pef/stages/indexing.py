"""Data-dependent indexing stages: `gather`, `scatter_add` (its gradient), `dynamic_slice` and
`update_slice` (per-row windows, as a KV cache reads and writes them)."""
from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Buffer, ints, nonneg, nonneg_all, positive
from backend.pef.stages.base import StageKind, declare
from ir.dtypes import DType


def _integer_indices(v, where: str, access: Access, shape: tuple[int, ...], what: str = "indices") -> None:
    buffer = v.access(f"{where}.{what}", access, shape)
    if not DType(buffer.dtype).is_int:
        raise v.fail(f"{where}.{what}", f"{what} must be integers, got {buffer.dtype}")


def _in_range(indices: np.ndarray, size: int, kind: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise IndexError(f"{kind} index out of range [0, {size})")


@declare
@attrs.frozen
class GatherStage(StageKind):
    """out = take(table, indices, axis); an index outside the table is a run-time error."""

    kind: ClassVar[str] = "gather"
    ops: ClassVar[tuple[str, ...]] = ("gather",)
    has_core: ClassVar[bool] = False
    writes_blocks: ClassVar[bool] = True
    out: str
    table: Access
    table_shape: tuple[int, ...] = ints(nonneg_all)
    indices: Access
    indices_shape: tuple[int, ...] = ints(nonneg_all)
    axis: int = attrs.field(validator=nonneg)

    def check(self, v, where, out: Buffer) -> str:
        table = v.access(f"{where}.table", self.table, self.table_shape, used=out.size > 0)
        _integer_indices(v, where, self.indices, self.indices_shape)
        if self.axis >= len(self.table_shape):
            raise v.fail(f"{where}.axis", f"axis {self.axis} out of range")
        t, ax = self.table_shape, self.axis
        blocks = DType(table.dtype)
        if blocks.is_blocked and (ax == len(t) - 1 or t[-1] % blocks.block):
            raise v.fail(where, f"a {table.dtype} table is gathered in whole blocks: its last axis must be "
                                f"kept and a multiple of {blocks.block}")
        v.expect_shape(where, out, (*t[:ax], *self.indices_shape, *t[ax + 1:]))
        return table.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        table = r.read(self.table, self.table_shape)
        indices = r.read(self.indices, self.indices_shape)
        _in_range(indices, self.table_shape[self.axis], "gather")
        return np.take(table, indices, axis=self.axis)

    @classmethod
    def lower(cls, k, op, axis: int) -> GatherStage:
        table, indices = op.operands
        return cls(k.target(op.result), k.operand_access(table), table.type.shape,
                   k.operand_access(indices), indices.type.shape, axis)


@declare
@attrs.frozen
class ScatterAddStage(StageKind):
    """out (table-shaped) = base (zeros without one), then out[..., indices[j], ...] += updates[..., j, ...]
    along `axis` (gather's gradient). `in_place`: the memory plan gave out the base's own range, so
    only the indexed rows are written."""

    kind: ClassVar[str] = "scatter_add"
    ops: ClassVar[tuple[str, ...]] = ("scatter_add",)
    has_core: ClassVar[bool] = False
    out: str
    updates: Access
    indices: Access
    indices_shape: tuple[int, ...] = ints(nonneg_all)
    axis: int = attrs.field(validator=nonneg)
    base: Access | None = None
    in_place: bool = False

    def work(self, buffers) -> int:
        out = buffers[self.out].size
        rows = math.prod(self.indices_shape) * out // max(buffers[self.out].shape[self.axis], 1)
        return rows + (0 if self.in_place else out)

    def check(self, v, where, out: Buffer) -> str:
        if self.axis >= len(out.shape):
            raise v.fail(f"{where}.axis", f"axis {self.axis} out of range")
        t, ax = out.shape, self.axis
        space = (*t[:ax], *self.indices_shape, *t[ax + 1:])
        if math.prod(space) and not out.size:
            raise v.fail(where, f"scatter_add adds into an empty {list(t)} output")
        updates = v.access(f"{where}.updates", self.updates, space)
        _integer_indices(v, where, self.indices, self.indices_shape)
        if self.base is None:
            if self.in_place:
                raise v.fail(f"{where}.in_place", "there is no base to add into in place")
            return updates.dtype
        base = v.access(f"{where}.base", self.base, t, updates.dtype)
        if self.in_place and not _shares(self.base, base, out):
            raise v.fail(f"{where}.in_place", f"base '{base.name}' does not share output '{out.name}'s "
                                              "memory and layout")
        return updates.dtype

    def placed(self, buffers):
        """In place when the plan gave out the base's own range and layout: only the indexed rows move."""
        out = buffers[self.out]
        if self.base is None or self.in_place or not _shares(self.base, buffers[self.base.buffer], out):
            return self, {}, {}
        rows = out.nbytes * math.prod(self.indices_shape) // max(out.shape[self.axis], 1)
        return attrs.evolve(self, in_place=True), {out.tier: out.nbytes}, {out.tier: max(out.nbytes - rows, 0)}

    def reference(self, r, out: Buffer) -> np.ndarray:
        """In place or not, the result is the same: the base (or zeros) with the updates added."""
        ax = self.axis
        shape = (*out.shape[:ax], *self.indices_shape, *out.shape[ax + 1:])
        updates = r.read(self.updates, shape)
        indices = r.read(self.indices, self.indices_shape).reshape(-1)
        _in_range(indices, out.shape[ax], "scatter_add")
        flat = updates.reshape(*out.shape[:ax], indices.size, *out.shape[ax + 1:])
        result = np.zeros(out.shape, updates.dtype) if self.base is None else r.read(self.base, out.shape).copy()
        np.add.at(result, (slice(None),) * ax + (indices,), flat)
        return result

    @classmethod
    def lower(cls, k, op, axis: int) -> ScatterAddStage:
        """Not in place yet: the backend marks it when the memory plan shares the base's range."""
        updates, indices, *base = op.operands
        return cls(k.target(op.result), k.operand_access(updates), k.operand_access(indices),
                   indices.type.shape, axis, *(k.operand_access(x) for x in base))


def _shares(access: Access, operand: Buffer, out: Buffer) -> bool:
    """Whether `access` reads `operand` as `out` lies, in the same memory (a stage may then work in place)."""
    return (operand.tier, operand.offset) == (out.tier, out.offset) and not access.offset \
        and tuple(access.strides) == tuple(out.strides)


def _rows(starts: np.ndarray, count: int, extent: int) -> list[list[tuple[int, int]]]:
    """Per row b, the (j, position) pairs of `count` entries from its start that lie in [0, extent)."""
    return [[(j, int(s) + j) for j in range(count) if 0 <= int(s) + j < extent] for s in starts]


@declare
@attrs.frozen
class DynamicSliceStage(StageKind):
    """out[b, ..., j, ...] = x[b, ..., starts[b] + j, ...] along `axis` (>= 1) of x [x_shape], one
    start per row of axis 0; zero where starts[b] + j is outside the axis."""

    kind: ClassVar[str] = "dynamic_slice"
    ops: ClassVar[tuple[str, ...]] = ("dynamic_slice",)
    out: str
    x: Access
    x_shape: tuple[int, ...] = ints(nonneg_all)
    starts: Access
    axis: int = attrs.field(validator=positive)

    def check(self, v, where, out: Buffer) -> str:
        shape, axis = tuple(self.x_shape), self.axis
        if axis >= len(shape) or len(out.shape) != len(shape) or out.shape[axis] > shape[axis]:
            raise v.fail(where, f"output {list(out.shape)} is not a window of {list(shape)} along axis {axis}")
        v.expect_shape(where, out, shape[:axis] + (out.shape[axis],) + shape[axis + 1:])
        _integer_indices(v, where, self.starts, shape[:1], "starts")
        return v.access(f"{where}.x", self.x, shape, out.dtype, used=out.size > 0).dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        x = r.read(self.x, self.x_shape)
        starts = r.read(self.starts, self.x_shape[:1])
        result = np.zeros(out.shape, x.dtype)
        lead = (slice(None),) * (self.axis - 1)
        for b, pairs in enumerate(_rows(starts, out.shape[self.axis], self.x_shape[self.axis])):
            for j, p in pairs:
                result[(b, *lead, j)] = x[(b, *lead, p)]
        return result

    @classmethod
    def lower(cls, k, op, axis: int) -> DynamicSliceStage:
        x, starts = op.operands
        return cls(k.target(op.result), k.operand_access(x), x.type.shape, k.operand_access(starts), axis)


@declare
@attrs.frozen
class UpdateSliceStage(StageKind):
    """out = operand, then out[b, ..., starts[b] + j, ...] = update[b, ..., j, ...] along `axis` for
    the rows of update [update_shape] that land inside it (others are dropped). `in_place`: the
    memory plan gave out the operand's own range, so only the update's rows are written (a KV cache)."""

    kind: ClassVar[str] = "update_slice"
    ops: ClassVar[tuple[str, ...]] = ("dynamic_update_slice",)
    out: str
    operand: Access
    update: Access
    update_shape: tuple[int, ...] = ints(nonneg_all)
    starts: Access
    axis: int = attrs.field(validator=positive)
    in_place: bool = False

    def work(self, buffers) -> int:
        return math.prod(self.update_shape) + (0 if self.in_place else buffers[self.out].size)

    def check(self, v, where, out: Buffer) -> str:
        shape, axis = tuple(out.shape), self.axis
        update = tuple(self.update_shape)
        if axis >= len(shape) or len(update) != len(shape) or update[axis] > shape[axis] or any(
                u != d for i, (u, d) in enumerate(zip(update, shape)) if i != axis):
            raise v.fail(where, f"update {list(update)} does not fit output {list(shape)} along axis {axis}")
        operand = v.access(f"{where}.operand", self.operand, shape, out.dtype)
        v.access(f"{where}.update", self.update, update, out.dtype)
        _integer_indices(v, where, self.starts, shape[:1], "starts")
        if self.in_place and not _shares(self.operand, operand, out):
            raise v.fail(f"{where}.in_place", f"operand '{operand.name}' does not share output "
                                              f"'{out.name}'s memory and layout")
        return out.dtype

    def placed(self, buffers):
        """In place when the plan gave out the operand's own range and layout: only the update's rows move."""
        out, operand = buffers[self.out], buffers[self.operand.buffer]
        if self.in_place or not _shares(self.operand, operand, out):
            return self, {}, {}
        update = math.prod(self.update_shape) * DType(out.dtype).itemsize
        return attrs.evolve(self, in_place=True), {operand.tier: operand.nbytes}, {out.tier: out.nbytes - update}

    def reference(self, r, out: Buffer) -> np.ndarray:
        """In place or not, the result is the same: the operand with the update's rows written."""
        result = r.read(self.operand, out.shape).copy()
        update = r.read(self.update, self.update_shape)
        starts = r.read(self.starts, out.shape[:1])
        lead = (slice(None),) * (self.axis - 1)
        for b, pairs in enumerate(_rows(starts, self.update_shape[self.axis], out.shape[self.axis])):
            for j, p in pairs:
                result[(b, *lead, p)] = update[(b, *lead, j)]
        return result

    @classmethod
    def lower(cls, k, op, axis: int) -> UpdateSliceStage:
        """Not in place yet: the backend marks it when the memory plan shares the operand's range."""
        operand, update, starts = op.operands
        return cls(k.target(op.result), k.operand_access(operand), k.operand_access(update),
                   update.type.shape, k.operand_access(starts), axis)
