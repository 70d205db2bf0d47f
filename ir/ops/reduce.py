"""Reductions over axes, and the softmax family built on them."""
from __future__ import annotations

import math

import numpy as np

from ir.dtypes import DType
from ir.ops.base import Attr, FusionKind, OpDef, TypeRuleError, register
from ir.types import TensorType


def normalize_axes(axes, rank: int) -> tuple[int, ...]:
    """Axes made non-negative and sorted; None means all; errors for out-of-range or repeats."""
    if axes is None:
        return tuple(range(rank))
    out = []
    for axis in axes:
        if not -rank <= axis < rank:
            raise TypeRuleError(f"axis {axis} out of range for rank {rank}")
        out.append(axis % rank)
    if len(set(out)) != len(out):
        raise TypeRuleError(f"repeated axis in {list(axes)}")
    return tuple(sorted(out))


def reduced_shape(shape, axes, keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


class Reduce(OpDef):
    """Reduce over `axes` (None: all), optionally keeping reduced axes as size 1."""

    kind = FusionKind.reduction
    attrs = {"axes": Attr("ints", None, optional=True), "keepdims": Attr("bool", False)}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        if x.dtype == DType.bool:
            raise TypeRuleError(f"does not take bool operands, got {x}")
        axes = normalize_axes(attrs["axes"], x.rank)
        return [TensorType(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype)]

    @classmethod
    def cost(cls, op):
        base = super().cost(op)
        return type(base)(op.operands[0].type.size, base.bytes_read, base.bytes_written)

    @classmethod
    def stage(cls, op):
        axes = normalize_axes(op.attrs["axes"], op.operands[0].type.rank)
        return {"combine": cls.combine, "identity": cls.identity, "axes": axes}


def _np_axes(attrs, x):
    return normalize_axes(attrs["axes"], x.ndim)


def _kept(b, g, op):
    """A reduction's cotangent `g` reshaped with the reduced axes kept as size 1."""
    x = op.operands[0]
    shape = reduced_shape(x.type.shape, normalize_axes(op.attrs["axes"], x.type.rank), True)
    return g if g.type.shape == shape else b.reshape(g, shape=shape)


def _spread(b, g, op):
    """A reduction's cotangent broadcast back over the operand's shape."""
    return b.broadcast_to(_kept(b, g, op), shape=op.operands[0].type.shape)


@register
class Sum(Reduce):
    """Sum over axes."""

    name = "sum"
    #: the scalar primitive combining two partial results, and its identity
    combine, identity = "add", 0.0

    @classmethod
    def vjp(cls, b, op, grads):
        return [_spread(b, grads[0], op)]

    @classmethod
    def ref(cls, attrs, x):
        return np.sum(x, axis=_np_axes(attrs, x), keepdims=attrs["keepdims"], dtype=x.dtype)


@register
class Max(Reduce):
    """Maximum over axes."""

    name = "max"
    combine, identity = "max", -np.inf

    @classmethod
    def vjp(cls, b, op, grads):
        """The gradient goes to the maximal elements, split evenly among ties (as PyTorch's amax)."""
        x = op.operands[0]
        hit = b.cast(b.eq(x, _kept(b, op.result, op)), dtype=x.type.dtype)
        ties = b.sum(hit, axes=op.attrs["axes"], keepdims=True)
        return [b.mul(hit, b.div(_kept(b, grads[0], op), ties))]

    @classmethod
    def ref(cls, attrs, x):
        identity = cls.identity if x.dtype.kind not in "iu" else np.iinfo(x.dtype).min
        return np.max(x, axis=_np_axes(attrs, x), keepdims=attrs["keepdims"], initial=identity)


@register
class Mean(Reduce):
    """Arithmetic mean over axes (floats only)."""

    name = "mean"

    @classmethod
    def infer(cls, types, attrs):
        if not types[0].dtype.is_float:
            raise TypeRuleError(f"expects a float operand, got {types[0]}")
        return super().infer(types, attrs)

    @classmethod
    def ref(cls, attrs, x):
        return np.mean(x, axis=_np_axes(attrs, x), keepdims=attrs["keepdims"], dtype=x.dtype)

    @classmethod
    def vjp(cls, b, op, grads):
        x = op.operands[0]
        count = x.type.size // max(op.result.type.size, 1)
        return [_spread(b, b.div(grads[0], b.scalar(float(count), x.type.dtype)), op)]

    @classmethod
    def decompose(cls, b, op):
        (x,) = op.operands
        axes = normalize_axes(op.attrs["axes"], x.type.rank)
        count = int(np.prod([x.type.shape[a] for a in axes]))
        total = b.sum(x, axes=axes, keepdims=op.attrs["keepdims"])
        return [b.div(total, b.scalar(float(count), x.type.dtype))]


@register
class Argmax(OpDef):
    """Index of the largest element along `axis` (first one on ties), as i32."""

    name = "argmax"
    kind = FusionKind.reduction
    attrs = {"axis": Attr("int", -1), "keepdims": Attr("bool", False)}
    differentiable = False

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        axes = normalize_axes((attrs["axis"],), x.rank)
        shape = reduced_shape(x.shape, axes, attrs["keepdims"])
        if x.shape[axes[0]] == 0 and math.prod(shape):
            raise TypeRuleError(f"reduces over the empty axis {axes[0]} of {x}")
        return [TensorType(shape, DType.i32)]

    @classmethod
    def ref(cls, attrs, x):
        return np.argmax(x, axis=attrs["axis"], keepdims=attrs["keepdims"])

    @classmethod
    def stage(cls, op):
        axes = normalize_axes((op.attrs["axis"],), op.operands[0].type.rank)
        return {"combine": "argmax", "identity": -np.inf, "axes": axes}


class Softmaxlike(OpDef):
    """A float op normalizing along one axis; result has the operand's type."""

    kind = FusionKind.reduction
    attrs = {"axis": Attr("int", -1)}
    flops_per_element = 5

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        if not x.dtype.is_float:
            raise TypeRuleError(f"expects a float operand, got {x}")
        normalize_axes((attrs["axis"],), x.rank)
        return [x]


def _exp_shifted(b, x, axis):
    """x - max(x), its exp, and the exp-sum along axis: the numerically safe core."""
    shifted = b.sub(x, b.max(x, axes=(axis,), keepdims=True))
    z = b.exp(shifted)
    return shifted, z, b.sum(z, axes=(axis,), keepdims=True)


@register
class Softmax(Softmaxlike):
    """exp(x) / sum(exp(x)) along `axis`."""

    name = "softmax"

    @classmethod
    def ref(cls, attrs, x):
        z = np.exp(x - np.max(x, axis=attrs["axis"], keepdims=True, initial=-np.inf))
        return z / np.sum(z, axis=attrs["axis"], keepdims=True)

    @classmethod
    def decompose(cls, b, op):
        _, z, total = _exp_shifted(b, op.operands[0], op.attrs["axis"])
        return [b.div(z, total)]

    @classmethod
    def vjp(cls, b, op, grads):
        """y * (g - sum(g * y))."""
        y, g = op.result, grads[0]
        return [b.mul(y, b.sub(g, b.sum(b.mul(g, y), axes=(op.attrs["axis"],), keepdims=True)))]


@register
class LogSoftmax(Softmaxlike):
    """x - log(sum(exp(x))) along `axis`."""

    name = "log_softmax"

    @classmethod
    def ref(cls, attrs, x):
        shifted = x - np.max(x, axis=attrs["axis"], keepdims=True, initial=-np.inf)
        return shifted - np.log(np.sum(np.exp(shifted), axis=attrs["axis"], keepdims=True))

    @classmethod
    def decompose(cls, b, op):
        shifted, _, total = _exp_shifted(b, op.operands[0], op.attrs["axis"])
        return [b.sub(shifted, b.log(total))]

    @classmethod
    def vjp(cls, b, op, grads):
        """g - exp(y) * sum(g)."""
        g = grads[0]
        return [b.sub(g, b.mul(b.exp(op.result), b.sum(g, axes=(op.attrs["axis"],), keepdims=True)))]
