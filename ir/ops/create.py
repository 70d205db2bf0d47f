"""Ops that make tensors from attributes alone: iota, full, constant, causal_mask."""
from __future__ import annotations

import math

import numpy as np

from ir.dtypes import DType
from ir.ops.base import Attr, FusionKind, OpDef, TypeRuleError, register
from ir.types import TensorType


class Generator(OpDef):
    """No operands; the result is fully described by attributes."""

    kind = FusionKind.injective
    arity = 0
    flops_per_element = 0
    differentiable = False


def check_shape(shape: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise TypeRuleError(f"negative dimension in shape {list(shape)}")


@register
class Iota(Generator):
    """0, 1, 2, ... along `axis`, broadcast over the other axes of `shape`."""

    name = "iota"
    attrs = {"shape": Attr("ints"), "axis": Attr("int", 0), "dtype": Attr("dtype", DType.i32)}

    @classmethod
    def infer(cls, types, attrs):
        shape = attrs["shape"]
        check_shape(shape)
        if not 0 <= attrs["axis"] < max(len(shape), 1) or not shape:
            raise TypeRuleError(f"axis {attrs['axis']} out of range for shape {list(shape)}")
        return [TensorType(shape, attrs["dtype"])]

    @classmethod
    def ref(cls, attrs, *_):
        shape, axis = attrs["shape"], attrs["axis"]
        line = np.arange(shape[axis]).astype(attrs["dtype"].np)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return np.broadcast_to(line.reshape(view), shape)

    @classmethod
    def generate(cls, e, attrs, index):
        return e.cast(index(attrs["axis"]), attrs["dtype"])


@register
class Full(Generator):
    """A tensor of `shape` filled with `value`."""

    name = "full"
    attrs = {"shape": Attr("ints", ()), "value": Attr("float"), "dtype": Attr("dtype", DType.f32)}

    @classmethod
    def infer(cls, types, attrs):
        check_shape(attrs["shape"])
        dtype, value = attrs["dtype"], attrs["value"]
        if dtype.is_int and not (math.isfinite(value) and
                                 np.iinfo(dtype.np).min <= int(value) <= np.iinfo(dtype.np).max):
            raise TypeRuleError(f"value {value} is not representable as {dtype}")
        return [TensorType(attrs["shape"], dtype)]

    @classmethod
    def ref(cls, attrs, *_):
        return np.full(attrs["shape"], attrs["value"], dtype=attrs["dtype"].np)

    @classmethod
    def generate(cls, e, attrs, index):
        return e.const(attrs["value"], attrs["dtype"])

    @classmethod
    def splat(cls, op):
        return op.attrs["value"]


@register
class Constant(Generator):
    """A literal tensor: `value` is a (nested) list whose nesting gives the shape."""

    name = "constant"
    attrs = {"value": Attr("literal"), "dtype": Attr("dtype", DType.f32)}

    @classmethod
    def infer(cls, types, attrs):
        array = np.asarray(attrs["value"], dtype=object)
        if array.dtype == object and any(isinstance(v, tuple) for v in array.ravel()):
            raise TypeRuleError("constant value is a ragged list")
        return [TensorType(array.shape, attrs["dtype"])]

    @classmethod
    def ref(cls, attrs, *_):
        return np.asarray(attrs["value"]).astype(attrs["dtype"].np)

    @classmethod
    def splat(cls, op):
        value = op.attrs["value"]
        return None if isinstance(value, tuple) else float(value)


@register
class CausalMask(Generator):
    """bool[rows, cols], true where col <= row + offset (what a causal query may attend to)."""

    name = "causal_mask"
    attrs = {"rows": Attr("int"), "cols": Attr("int"), "offset": Attr("int", 0)}

    @classmethod
    def infer(cls, types, attrs):
        if attrs["rows"] < 0 or attrs["cols"] < 0:
            raise TypeRuleError("rows and cols must be non-negative")
        return [TensorType((attrs["rows"], attrs["cols"]), DType.bool)]

    @classmethod
    def ref(cls, attrs, *_):
        return np.tri(attrs["rows"], attrs["cols"], attrs["offset"], dtype=bool)

    @classmethod
    def generate(cls, e, attrs, index):
        return e.le(index(1), e.add(index(0), e.const(attrs["offset"], DType.i64)))
