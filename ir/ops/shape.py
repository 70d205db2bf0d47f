"""Injective ops: each output element reads one input element (reshape, transpose, ...)."""
from __future__ import annotations

import math

import numpy as np

from ir.ops.base import Attr, Cost, FusionKind, OpDef, TypeRuleError, lookup, register, unbroadcast
from ir.ops.elementwise import same_dtype
from ir.types import TensorType


class Injective(OpDef):
    kind = FusionKind.injective
    flops_per_element = 0


def reshape_strides(shape, strides, new_shape) -> tuple[int, ...] | None:
    """Strides giving `new_shape` over the same elements in row-major order, or None
    when the strided layout cannot be reshaped without a copy (numpy's rule)."""
    if math.prod(shape) == 0:
        return (0,) * len(new_shape)
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    new = [d for d in new_shape if d != 1]
    out: list[int] = []
    i = j = 0
    while i < len(old):
        group, size, target = [old[i]], old[i][0], new[j]
        i += 1
        dims = [target]
        while size != target:
            if size < target:
                group.append(old[i])
                size *= old[i][0]
                i += 1
            else:
                j += 1
                dims.append(new[j])
                target *= new[j]
        j += 1
        if any(s != d2 * s2 for (_, s), (d2, s2) in zip(group, group[1:])):
            return None
        step = group[-1][1]
        sub = []
        for d in reversed(dims):
            sub.append(step)
            step *= d
        out.extend(reversed(sub))
    it = iter(out)
    return tuple(0 if d == 1 else next(it) for d in new_shape)


def _collapse_reshaping(b, op):
    """A `shape`-only op: identity -> its operand; the op applied to its own result -> one op."""
    (x,) = op.operands
    if x.type == op.result.type:
        return [x]
    if x.producer is not None and x.producer.name == op.name:
        return [b.op(op.name, x.producer.operands[0], shape=op.attrs["shape"])]
    return None


@register
class Reshape(Injective):
    """Same elements in row-major order, new shape."""

    name = "reshape"
    attrs = {"shape": Attr("ints")}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        shape = attrs["shape"]
        if any(d < 0 for d in shape) or math.prod(shape) != x.size:
            raise TypeRuleError(f"cannot reshape {x} ({x.size} elements) to {list(shape)}")
        return [x.with_shape(shape)]

    @classmethod
    def ref(cls, attrs, x):
        return x.reshape(attrs["shape"])

    @classmethod
    def vjp(cls, b, op, grads):
        return [b.reshape(grads[0], shape=op.operands[0].type.shape)]

    @classmethod
    def view(cls, attrs, shape, offset, strides):
        new = reshape_strides(shape, strides, attrs["shape"])
        return None if new is None else (offset, new)

    @classmethod
    def canonicalize(cls, b, op):
        return _collapse_reshaping(b, op)


@register
class Transpose(Injective):
    """Permute axes: result axis i is operand axis perm[i]."""

    name = "transpose"
    attrs = {"perm": Attr("ints")}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        perm = attrs["perm"]
        if sorted(perm) != list(range(x.rank)):
            raise TypeRuleError(f"perm {list(perm)} is not a permutation of {x.rank} axes")
        return [x.with_shape(tuple(x.shape[p] for p in perm))]

    @classmethod
    def ref(cls, attrs, x):
        return np.transpose(x, attrs["perm"])

    @classmethod
    def vjp(cls, b, op, grads):
        return [b.transpose(grads[0], perm=tuple(np.argsort(op.attrs["perm"]).tolist()))]

    @classmethod
    def view(cls, attrs, shape, offset, strides):
        return offset, tuple(strides[p] for p in attrs["perm"])

    @classmethod
    def canonicalize(cls, b, op):
        (x,) = op.operands
        perm = op.attrs["perm"]
        if list(perm) == list(range(len(perm))):
            return [x]
        if x.producer is not None and x.producer.name == op.name:
            inner = x.producer.attrs["perm"]
            return [b.transpose(x.producer.operands[0], perm=tuple(inner[p] for p in perm))]
        return None


@register
class BroadcastTo(Injective):
    """Broadcast to `shape` by numpy's rules."""

    name = "broadcast_to"
    kind = FusionKind.broadcast
    attrs = {"shape": Attr("ints")}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        shape = attrs["shape"]
        ok = len(shape) >= x.rank and min(shape, default=0) >= 0 and all(
            d in (1, s) for d, s in zip(reversed(x.shape), reversed(shape)))
        if not ok:
            raise TypeRuleError(f"cannot broadcast {x} to {list(shape)}")
        return [x.with_shape(shape)]

    @classmethod
    def ref(cls, attrs, x):
        return np.broadcast_to(x, attrs["shape"])

    @classmethod
    def vjp(cls, b, op, grads):
        return [unbroadcast(b, grads[0], op.operands[0].type.shape)]

    @classmethod
    def view(cls, attrs, shape, offset, strides):
        target = attrs["shape"]
        kept = [0 if d == 1 else s for d, s in zip(shape, strides)]
        return offset, (0,) * (len(target) - len(shape)) + tuple(kept)

    @classmethod
    def canonicalize(cls, b, op):
        return _collapse_reshaping(b, op)


@register
class Slice(Injective):
    """x[starts:stops:steps] on every axis (non-negative bounds, positive steps)."""

    name = "slice"
    attrs = {"starts": Attr("ints"), "stops": Attr("ints"), "steps": Attr("ints", None, optional=True)}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        starts, stops = attrs["starts"], attrs["stops"]
        steps = attrs["steps"] or (1,) * x.rank
        if not len(starts) == len(stops) == len(steps) == x.rank:
            raise TypeRuleError(f"starts, stops and steps need {x.rank} entries each for {x}")
        shape = []
        for dim, lo, hi, step in zip(x.shape, starts, stops, steps):
            if not (0 <= lo <= hi <= dim and step >= 1):
                raise TypeRuleError(f"slice {lo}:{hi}:{step} out of range for dimension {dim} of {x}")
            shape.append(len(range(lo, hi, step)))
        return [x.with_shape(shape)]

    @classmethod
    def ref(cls, attrs, x):
        steps = attrs["steps"] or (1,) * x.ndim
        return x[tuple(slice(*s) for s in zip(attrs["starts"], attrs["stops"], steps))]

    @classmethod
    def vjp(cls, b, op, grads):
        """The cotangent padded back into place with zeros."""
        x, g = op.operands[0], grads[0]
        starts = op.attrs["starts"]
        steps = op.attrs["steps"] or (1,) * x.type.rank
        taken = g.type.shape
        high = tuple(dim - lo - max((n - 1) * step + 1, 0)
                     for dim, lo, n, step in zip(x.type.shape, starts, taken, steps))
        return [b.pad(g, low=starts, high=high, interior=tuple(step - 1 for step in steps))]

    @classmethod
    def view(cls, attrs, shape, offset, strides):
        steps = attrs["steps"] or (1,) * len(shape)
        start = offset + sum(lo * s for lo, s in zip(attrs["starts"], strides))
        return start, tuple(s * step for s, step in zip(strides, steps))

    @classmethod
    def canonicalize(cls, b, op):
        x = op.operands[0]
        return [x] if x.type == op.result.type else None


@register
class Concat(Injective):
    """Join operands along `axis`; other dimensions must agree."""

    name = "concat"
    arity = None
    attrs = {"axis": Attr("int")}

    @classmethod
    def infer(cls, types, attrs):
        if not types:
            raise TypeRuleError("expects at least one operand")
        dtype = same_dtype(types)
        first = types[0]
        axis = attrs["axis"]
        if not -first.rank <= axis < first.rank:
            raise TypeRuleError(f"axis {axis} out of range for rank {first.rank}")
        axis %= first.rank
        for t in types[1:]:
            if t.rank != first.rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise TypeRuleError(f"shapes {first} and {t} differ off the concat axis {axis}")
        shape = list(first.shape)
        shape[axis] = sum(t.shape[axis] for t in types)
        return [TensorType(shape, dtype)]

    @classmethod
    def ref(cls, attrs, *xs):
        return np.concatenate(xs, axis=attrs["axis"])

    @classmethod
    def vjp(cls, b, op, grads):
        g = grads[0]
        axis = op.attrs["axis"] % g.type.rank
        out, start = [], 0
        for x in op.operands:
            stop = start + x.type.shape[axis]
            starts = tuple(start if i == axis else 0 for i in range(g.type.rank))
            stops = tuple(stop if i == axis else d for i, d in enumerate(g.type.shape))
            out.append(b.slice(g, starts=starts, stops=stops))
            start = stop
        return out

    @classmethod
    def stage(cls, op):
        return {"axis": op.attrs["axis"] % op.result.type.rank}

    @classmethod
    def canonicalize(cls, b, op):
        return list(op.operands) if len(op.operands) == 1 else None


@register
class Gather(Injective):
    """Rows of `table` picked by integer `indices` along `axis` (an embedding lookup)."""

    name = "gather"
    arity = 2
    attrs = {"axis": Attr("int", 0)}

    @classmethod
    def infer(cls, types, attrs):
        table, indices = types
        if not indices.dtype.is_int:
            raise TypeRuleError(f"indices must be integers, got {indices}")
        axis = attrs["axis"]
        if not -table.rank <= axis < table.rank:
            raise TypeRuleError(f"axis {axis} out of range for rank {table.rank}")
        axis %= table.rank
        return [table.with_shape(table.shape[:axis] + indices.shape + table.shape[axis + 1:])]

    @classmethod
    def ref(cls, attrs, table, indices):
        axis = attrs["axis"] % table.ndim
        if indices.size and (indices.min() < 0 or indices.max() >= table.shape[axis]):
            raise IndexError(f"gather index out of range [0, {table.shape[axis]})")
        return np.take(table, indices, axis=axis)

    @classmethod
    def vjp(cls, b, op, grads):
        table, indices = op.operands
        axis = op.attrs["axis"] % table.type.rank
        return [b.scatter_add(grads[0], indices, axis=axis, size=table.type.shape[axis]), None]

    @classmethod
    def index_bounds(cls, op):
        table = op.operands[0].type
        return {1: table.shape[op.attrs["axis"] % table.rank]}

    @classmethod
    def stage(cls, op):
        return {"axis": op.attrs["axis"] % op.operands[0].type.rank}

    @classmethod
    def canonicalize(cls, b, op):
        """Rows of a widened table are the widened rows: gather first, then widen only those."""
        table, indices = op.operands
        widen = table.producer
        if widen is None or not lookup(widen.name).widens(widen):
            return None
        rows = b.gather(widen.operands[0], indices, axis=op.attrs["axis"])
        return [b.op(widen.name, rows, **widen.attrs)]


@register
class Pad(Injective):
    """`low`/`high` elements of `value` before/after each axis and `interior` ones between
    neighbours (XLA's pad): the gradient of a slice."""

    name = "pad"
    attrs = {"low": Attr("ints"), "high": Attr("ints"), "interior": Attr("ints", None, optional=True),
             "value": Attr("float", 0.0)}

    @staticmethod
    def interior(attrs, rank: int) -> tuple[int, ...]:
        return attrs["interior"] or (0,) * rank

    @classmethod
    def padded_shape(cls, attrs, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(lo + hi + d + max(d - 1, 0) * it
                     for d, lo, hi, it in zip(shape, attrs["low"], attrs["high"], cls.interior(attrs, len(shape))))

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        low, high, interior = attrs["low"], attrs["high"], cls.interior(attrs, x.rank)
        if not len(low) == len(high) == len(interior) == x.rank:
            raise TypeRuleError(f"low, high and interior need {x.rank} entries each for {x}")
        if min((*low, *high, *interior), default=0) < 0:
            raise TypeRuleError("padding amounts must be non-negative")
        return [x.with_shape(cls.padded_shape(attrs, x.shape))]

    @classmethod
    def ref(cls, attrs, x):
        interior = cls.interior(attrs, x.ndim)
        out = np.full(cls.padded_shape(attrs, x.shape), attrs["value"], dtype=x.dtype)
        out[tuple(slice(lo, lo + max((d - 1) * (it + 1) + 1, 0), it + 1)
                  for d, lo, it in zip(x.shape, attrs["low"], interior))] = x
        return out

    @classmethod
    def vjp(cls, b, op, grads):
        x = op.operands[0]
        interior = cls.interior(op.attrs, x.type.rank)
        stops = tuple(lo + max((d - 1) * (it + 1) + 1, 0) for d, lo, it in zip(x.type.shape, op.attrs["low"], interior))
        return [b.slice(grads[0], starts=op.attrs["low"], stops=stops, steps=tuple(it + 1 for it in interior))]

    @classmethod
    def sum_with(cls, b, op, other):
        """pad(x) + pad(y) where x and y fill adjacent ranges of one axis, zeros elsewhere: pad(concat(x, y)),
        one copy where the sum wrote each padded tensor whole (the gradient of a tensor sliced in parts,
        attention's q, k and v: their concat)."""
        other = other.producer
        axis = _zero_padded_axis(op)
        if other is None or other.name != cls.name or axis is None or axis != _zero_padded_axis(other):
            return None
        dim = op.result.type.shape[axis]
        first, second = (other, op) if dim - other.attrs["high"][axis] == op.attrs["low"][axis] else (op, other)
        if dim - first.attrs["high"][axis] != second.attrs["low"][axis]:
            return None
        parts = [x for pad in (first, second) for x in _concat_parts(pad.operands[0], axis)]
        joined = b.concat(*parts, axis=axis)
        low, high = first.attrs["low"], second.attrs["high"]
        return joined if not any(low) and not any(high) else b.pad(joined, low=low, high=high)

    @classmethod
    def stage(cls, op):
        rank = op.operands[0].type.rank
        return {"low": op.attrs["low"], "high": op.attrs["high"],
                "interior": cls.interior(op.attrs, rank), "value": op.attrs["value"]}


def _zero_padded_axis(op) -> int | None:
    """The one axis a `pad` op pads, with zeros and no interior padding (else None)."""
    if op.attrs["value"] != 0 or any(op.attrs["interior"] or ()):
        return None
    axes = [i for i, (lo, hi) in enumerate(zip(op.attrs["low"], op.attrs["high"])) if lo or hi]
    return axes[0] if len(axes) == 1 else None


def _concat_parts(value, axis: int) -> list:
    """The operands of `value`'s concat along `axis` (flattened), or [value]."""
    op = value.producer
    if op is not None and op.name == Concat.name and op.attrs["axis"] % value.type.rank == axis:
        return list(op.operands)
    return [value]


@register
class ScatterAdd(OpDef):
    """`base` (zeros of the table's shape without one) with each slice of `updates` added at its
    index along `axis` (a table axis of `size` rows): the gradient of gather(table, indices, axis),
    added into the table's other gradient when it has one (a tied embedding's). The result may
    take the base's own memory (`inplace_operand`): then only the indexed rows are written."""

    name = "scatter_add"
    kind = FusionKind.opaque
    arity = (2, 3)
    inplace_operand = 2
    attrs = {"axis": Attr("int", 0), "size": Attr("int")}

    @classmethod
    def infer(cls, types, attrs):
        updates, indices = types[:2]
        if not indices.dtype.is_int:
            raise TypeRuleError(f"indices must be integers, got {indices}")
        rank = updates.rank - indices.rank + 1
        axis, size = attrs["axis"], attrs["size"]
        if rank < 1 or not -rank <= axis < rank or size < 0:
            raise TypeRuleError(f"axis {axis} or size {size} out of range for updates {updates} "
                                f"and indices {indices}")
        axis %= rank
        if updates.shape[axis:axis + indices.rank] != indices.shape:
            raise TypeRuleError(f"updates {updates} do not hold one slice per index of {indices} at axis {axis}")
        result = updates.with_shape(updates.shape[:axis] + (size,) + updates.shape[axis + indices.rank:])
        if len(types) == 3 and types[2] != result:
            raise TypeRuleError(f"base {types[2]} is not of the result's type {result}")
        return [result]

    @classmethod
    def ref(cls, attrs, updates, indices, base=None):
        rank = updates.ndim - indices.ndim + 1
        axis, size = attrs["axis"] % rank, attrs["size"]
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"scatter_add index out of range [0, {size})")
        rest = updates.shape[:axis] + updates.shape[axis + indices.ndim:]
        out = np.zeros((size, *rest), dtype=updates.dtype) if base is None else np.moveaxis(base, axis, 0).copy()
        moved = np.moveaxis(updates, tuple(range(axis, axis + indices.ndim)), tuple(range(indices.ndim)))
        np.add.at(out, indices.reshape(-1).astype(np.int64), moved.reshape(-1, *rest))
        return np.moveaxis(out, 0, axis)

    @classmethod
    def vjp(cls, b, op, grads):
        rank = op.result.type.rank
        return [b.gather(grads[0], op.operands[1], axis=op.attrs["axis"] % rank), None, grads[0]][:len(op.operands)]

    @classmethod
    def sum_with(cls, b, op, other):
        """scatter_add(u, i) + y: u's slices added into y itself (no zeroed table, and in y's memory
        when y dies there: a tied embedding's gradient into its output projection's)."""
        if len(op.operands) == 3:
            return None
        return b.scatter_add(*op.operands, other, axis=op.attrs["axis"], size=op.attrs["size"])

    @classmethod
    def index_bounds(cls, op):
        return {1: op.attrs["size"]}

    @classmethod
    def cost(cls, op):
        updates = op.operands[0].type
        return Cost(updates.size, updates.nbytes + op.operands[1].type.nbytes, op.result.type.nbytes)

    @classmethod
    def stage(cls, op):
        return {"axis": op.attrs["axis"] % op.result.type.rank}
