"""Elementwise ops: unary math, binary arithmetic with numpy broadcasting, comparisons, select."""
from __future__ import annotations

import math

import numpy as np

from ir.dtypes import DType
from ir.ops.base import Attr, FusionKind, OpDef, TypeRuleError, register
from ir.scalar import PRIMITIVES
from ir.types import TensorType


class Unary(OpDef):
    """One operand, result of the same type. Float-only unless `any_dtype`."""

    kind = FusionKind.elementwise
    arity = 1
    any_dtype = False

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        if not cls.any_dtype and not x.dtype.is_float:
            raise TypeRuleError(f"expects a float operand, got {x}")
        if x.dtype == DType.bool:
            raise TypeRuleError(f"does not take bool operands, got {x}")
        return [x]


def broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = " and ".join(str(list(s)) for s in shapes)
        raise TypeRuleError(f"operand shapes {listed} do not broadcast") from None


def same_dtype(types: list[TensorType]) -> DType:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise TypeRuleError("operand dtypes differ: " + ", ".join(str(t) for t in types))
    return types[0].dtype


class Binary(OpDef):
    """Two operands of one dtype, broadcast as numpy does."""

    kind = FusionKind.broadcast
    arity = 2
    float_only = False
    #: the scalar primitive this op is
    primitive: str

    @classmethod
    def infer(cls, types, attrs):
        dtype = same_dtype(types)
        if cls.float_only and not dtype.is_float:
            raise TypeRuleError(f"expects float operands, got {types[0]}")
        if dtype == DType.bool:
            raise TypeRuleError(f"does not take bool operands, got {types[0]}")
        return [TensorType(broadcast_shape(*(t.shape for t in types)), cls.result_dtype(dtype))]

    @classmethod
    def result_dtype(cls, dtype: DType) -> DType:
        return dtype

    @classmethod
    def ref(cls, attrs, x, y):
        return PRIMITIVES[cls.primitive](x, y)

    @classmethod
    def scalar(cls, e, attrs, x, y):
        return getattr(e, cls.primitive)(x, y)


def _unary(name: str, primitive: str, doc: str, flops: int = 1, any_dtype: bool = False):
    """Declare a unary op that is exactly one scalar primitive."""
    cls = type(name.capitalize(), (Unary,), {
        "__doc__": doc, "name": name, "flops_per_element": flops, "any_dtype": any_dtype,
        "ref": classmethod(lambda cls, attrs, x: PRIMITIVES[primitive](x)),
        "scalar": classmethod(lambda cls, e, attrs, x: getattr(e, primitive)(x)),
    })
    return register(cls)


def _binary(name: str, primitive: str, doc: str, base: type[Binary] = Binary, **extra):
    return register(type(name.capitalize(), (base,), {"__doc__": doc, "name": name, "primitive": primitive, **extra}))


Neg = _unary("neg", "neg", "-x", any_dtype=True)
Exp = _unary("exp", "exp", "e**x", flops=4)
Log = _unary("log", "log", "natural logarithm", flops=4)
Sqrt = _unary("sqrt", "sqrt", "square root", flops=2)
Tanh = _unary("tanh", "tanh", "hyperbolic tangent", flops=6)
Sin = _unary("sin", "sin", "sine", flops=4)
Cos = _unary("cos", "cos", "cosine", flops=4)
Erf = _unary("erf", "erf", "the error function", flops=8)
Abs = _unary("abs", "abs", "|x|", any_dtype=True)


@register
class Rsqrt(Unary):
    """1 / sqrt(x)."""

    name = "rsqrt"
    flops_per_element = 3

    @classmethod
    def ref(cls, attrs, x):
        return 1.0 / np.sqrt(x)

    @classmethod
    def scalar(cls, e, attrs, x):
        return e.div(e.const(1.0, x.dtype), e.sqrt(x))


@register
class Sigmoid(Unary):
    """1 / (1 + e**-x)."""

    name = "sigmoid"
    flops_per_element = 6

    @classmethod
    def ref(cls, attrs, x):
        return 1.0 / (1.0 + np.exp(-x))

    @classmethod
    def scalar(cls, e, attrs, x):
        one = e.const(1.0, x.dtype)
        return e.div(one, e.add(one, e.exp(e.neg(x))))


@register
class Relu(Unary):
    """max(x, 0)."""

    name = "relu"

    @classmethod
    def ref(cls, attrs, x):
        return np.maximum(x, 0)

    @classmethod
    def scalar(cls, e, attrs, x):
        return e.max(x, e.const(0.0, x.dtype))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@register
class Gelu(Unary):
    """Gaussian error linear unit: exact (erf) or the tanh approximation (GPT-2's gelu_new)."""

    name = "gelu"
    attrs = {"approximate": Attr("str", "tanh", choices=("tanh", "none"))}
    flops_per_element = 10

    @classmethod
    def ref(cls, attrs, x):
        if attrs["approximate"] == "tanh":
            return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
        return 0.5 * x * (1.0 + PRIMITIVES["erf"](x / np.asarray(math.sqrt(2.0), x.dtype)))

    @classmethod
    def scalar(cls, e, attrs, x):
        c = lambda v: e.const(v, x.dtype)  # noqa: E731
        if attrs["approximate"] == "tanh":
            inner = e.mul(c(_SQRT_2_OVER_PI), e.add(x, e.mul(c(0.044715), e.mul(x, e.mul(x, x)))))
            return e.mul(e.mul(c(0.5), x), e.add(c(1.0), e.tanh(inner)))
        return e.mul(e.mul(c(0.5), x), e.add(c(1.0), e.erf(e.div(x, c(math.sqrt(2.0))))))


@register
class Silu(Unary):
    """x * sigmoid(x) (swish)."""

    name = "silu"
    flops_per_element = 7

    @classmethod
    def ref(cls, attrs, x):
        return x / (1.0 + np.exp(-x))

    @classmethod
    def scalar(cls, e, attrs, x):
        one = e.const(1.0, x.dtype)
        return e.div(x, e.add(one, e.exp(e.neg(x))))


@register
class Cast(Unary):
    """Convert to another dtype (float → int truncates toward zero)."""

    name = "cast"
    attrs = {"dtype": Attr("dtype")}
    any_dtype = True
    differentiable = True

    @classmethod
    def infer(cls, types, attrs):
        return [types[0].with_dtype(attrs["dtype"])]

    @classmethod
    def ref(cls, attrs, x):
        return x.astype(attrs["dtype"].np)

    @classmethod
    def scalar(cls, e, attrs, x):
        return e.cast(x, attrs["dtype"])


Add = _binary("add", "add", "x + y")
Sub = _binary("sub", "sub", "x - y")
Mul = _binary("mul", "mul", "x * y")
Maximum = _binary("maximum", "max", "the larger of x and y")
Minimum = _binary("minimum", "min", "the smaller of x and y")


class FloatBinary(Binary):
    float_only = True


Div = _binary("div", "div", "x / y (floats only)", FloatBinary)
Pow = _binary("pow", "pow", "x ** y (floats only)", FloatBinary, flops_per_element=8)


class Compare(Binary):
    """A comparison: bool result; bool operands are not allowed."""

    differentiable = False

    @classmethod
    def result_dtype(cls, dtype):
        return DType.bool


Eq = _binary("eq", "eq", "x == y", Compare)
Ne = _binary("ne", "ne", "x != y", Compare)
Lt = _binary("lt", "lt", "x < y", Compare)
Le = _binary("le", "le", "x <= y", Compare)
Gt = _binary("gt", "gt", "x > y", Compare)
Ge = _binary("ge", "ge", "x >= y", Compare)


@register
class Where(OpDef):
    """select: `x` where `cond` is true, else `y` (all three broadcast)."""

    name = "where"
    kind = FusionKind.broadcast
    arity = 3

    @classmethod
    def infer(cls, types, attrs):
        cond, x, y = types
        if cond.dtype != DType.bool:
            raise TypeRuleError(f"condition must be bool, got {cond}")
        dtype = same_dtype([x, y])
        return [TensorType(broadcast_shape(cond.shape, x.shape, y.shape), dtype)]

    @classmethod
    def ref(cls, attrs, cond, x, y):
        return np.where(cond, x, y)

    @classmethod
    def scalar(cls, e, attrs, cond, x, y):
        return e.select(cond, x, y)
