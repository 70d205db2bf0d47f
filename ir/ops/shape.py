"""Injective ops: each output element reads one input element (reshape, transpose, ...)."""
from __future__ import annotations

import math

import numpy as np

from ir.ops.base import Attr, FusionKind, OpDef, TypeRuleError, register
from ir.ops.elementwise import same_dtype
from ir.types import TensorType


class Injective(OpDef):
    kind = FusionKind.injective
    flops_per_element = 0


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
        ok = len(shape) >= x.rank and all(
            d in (1, s) for d, s in zip(reversed(x.shape), reversed(shape)))
        if not ok:
            raise TypeRuleError(f"cannot broadcast {x} to {list(shape)}")
        return [x.with_shape(shape)]

    @classmethod
    def ref(cls, attrs, x):
        return np.broadcast_to(x, attrs["shape"])


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
