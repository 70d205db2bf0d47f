"""Elementwise ops: unary math, binary arithmetic with numpy broadcasting, comparisons, select."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from ir.dtypes import DType, dequantize, holds_blocks
from ir.ops.base import Attr, FusionKind, OpDef, TypeRuleError, lookup, register, unbroadcast
from ir.scalar import PRIMITIVES
from ir.types import TensorType

if TYPE_CHECKING:
    from ir.graph import Value


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
    """numpy's broadcasting rule (in plain Python: type rules run on every verify)."""
    rank = max(map(len, shapes))
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            listed = " and ".join(str(list(s)) for s in shapes)
            raise TypeRuleError(f"operand shapes {listed} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


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


def _unary(name: str, primitive: str, doc: str, flops: int = 1, any_dtype: bool = False,
           grad: UnaryGrad | None = None):
    """Declare a unary op that is exactly one scalar primitive; `grad` gives its VJP."""
    cls = type(name.capitalize(), (Unary,), {
        "__doc__": doc, "name": name, "flops_per_element": flops, "any_dtype": any_dtype,
        "ref": classmethod(lambda cls, attrs, x: PRIMITIVES[primitive](x)),
        "scalar": classmethod(lambda cls, e, attrs, x: getattr(e, primitive)(x)),
        "vjp": unary_vjp(grad) if grad else None,
    })
    return register(cls)


def _binary(name: str, primitive: str, doc: str, base: type[Binary] = Binary,
            grad: BinaryGrad | None = None, **extra):
    """Declare a binary op that is exactly one scalar primitive; `grad` gives its VJP."""
    vjp = {"vjp": binary_vjp(grad)} if grad else {}
    return register(type(name.capitalize(), (base,), {"__doc__": doc, "name": name, "primitive": primitive,
                                                      **vjp, **extra}))


# --- gradients: grad(b, x, y, g) -> dx for unary ops (y is the result, g its cotangent),
# grad(b, x, y, out, g) -> (dx, dy) for binary ops, before reducing broadcast axes --------
UnaryGrad = Callable[..., "Value"]
BinaryGrad = Callable[..., "tuple[Value, Value]"]


def unary_vjp(grad: UnaryGrad):
    """A `vjp` hook from a unary gradient rule."""
    return classmethod(lambda cls, b, op, grads: [grad(b, op.operands[0], op.result, grads[0])])


def binary_vjp(grad: BinaryGrad):
    """A `vjp` hook from a binary gradient rule; broadcast operands get reduced gradients."""
    def vjp(cls, b, op, grads):
        x, y = op.operands
        dx, dy = grad(b, x, y, op.result, grads[0])
        return [unbroadcast(b, dx, x.type.shape), unbroadcast(b, dy, y.type.shape)]
    return classmethod(vjp)


def const(b, like: Value, value: float) -> Value:
    """A rank-0 constant of `like`'s dtype."""
    return b.scalar(value, like.type.dtype)


def zero_unless(b, cond: Value, g: Value) -> Value:
    """`g` where `cond` holds, else 0."""
    return b.where(cond, g, const(b, g, 0.0))


def _d_abs(b, x, y, g):
    zero = const(b, x, 0.0)
    return b.where(b.gt(x, zero), g, zero_unless(b, b.lt(x, zero), b.neg(g)))


def _d_tanh(b, x, y, g):
    return b.mul(g, b.sub(const(b, y, 1.0), b.mul(y, y)))


def _d_erf(b, x, y, g):
    return b.mul(g, b.mul(const(b, x, 2.0 / math.sqrt(math.pi)), b.exp(b.neg(b.mul(x, x)))))


def _d_silu(b, x, g):
    s = b.sigmoid(x)
    return b.mul(g, b.mul(s, b.add(const(b, x, 1.0), b.mul(x, b.sub(const(b, x, 1.0), s)))))


def _d_div(b, x, y, out, g):
    return b.div(g, y), b.neg(b.div(b.mul(g, out), y))


def _d_extremum(b, x, y, out, g, wins):
    """Maximum/minimum: the gradient goes to the winning side; ties split it in half (as PyTorch)."""
    half = zero_unless(b, b.eq(x, y), b.mul(g, const(b, g, 0.5)))
    return b.where(wins(x, y), g, half), b.where(wins(y, x), g, half)


def _d_pow(b, x, y, out, g):
    """d/dx = y x**(y-1), 0 where y = 0; d/dy = x**y log x, taken as 0 where x <= 0 (as PyTorch)."""
    zero = const(b, x, 0.0)
    slope = b.mul(y, b.pow(x, b.sub(y, const(b, y, 1.0))))
    dx = b.mul(g, b.where(b.eq(y, zero), zero, slope))
    dy = zero_unless(b, b.gt(x, zero), b.mul(g, b.mul(out, b.log(x))))
    return dx, dy



Neg = _unary("neg", "neg", "-x", any_dtype=True, grad=lambda b, x, y, g: b.neg(g))
Exp = _unary("exp", "exp", "e**x", flops=4, grad=lambda b, x, y, g: b.mul(g, y))
Log = _unary("log", "log", "natural logarithm", flops=4, grad=lambda b, x, y, g: b.div(g, x))
Sqrt = _unary("sqrt", "sqrt", "square root", flops=2,
              grad=lambda b, x, y, g: b.div(g, b.mul(y, const(b, y, 2.0))))
Tanh = _unary("tanh", "tanh", "hyperbolic tangent", flops=6, grad=_d_tanh)
Sin = _unary("sin", "sin", "sine", flops=4, grad=lambda b, x, y, g: b.mul(g, b.cos(x)))
Cos = _unary("cos", "cos", "cosine", flops=4, grad=lambda b, x, y, g: b.neg(b.mul(g, b.sin(x))))
Erf = _unary("erf", "erf", "the error function", flops=8, grad=_d_erf)
Abs = _unary("abs", "abs", "|x|", any_dtype=True, grad=_d_abs)


@register
class Rsqrt(Unary):
    """1 / sqrt(x)."""

    name = "rsqrt"
    flops_per_element = 3
    vjp = unary_vjp(lambda b, x, y, g: b.mul(b.mul(g, const(b, y, -0.5)), b.mul(y, b.mul(y, y))))

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
    vjp = unary_vjp(lambda b, x, y, g: b.mul(g, b.mul(y, b.sub(const(b, y, 1.0), y))))

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
    vjp = unary_vjp(lambda b, x, y, g: zero_unless(b, b.gt(x, const(b, x, 0.0)), g))

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
    def vjp(cls, b, op, grads):
        (x,), g = op.operands, grads[0]
        c = lambda v: const(b, x, v)  # noqa: E731
        half_x = b.mul(c(0.5), x)
        if op.attrs["approximate"] == "tanh":
            x2 = b.mul(x, x)
            t = b.tanh(b.mul(c(_SQRT_2_OVER_PI), b.add(x, b.mul(c(0.044715), b.mul(x2, x)))))
            du = b.mul(c(_SQRT_2_OVER_PI), b.add(c(1.0), b.mul(c(3 * 0.044715), x2)))
            slope = b.add(b.mul(c(0.5), b.add(c(1.0), t)), b.mul(half_x, b.mul(b.sub(c(1.0), b.mul(t, t)), du)))
        else:
            cdf = b.mul(c(0.5), b.add(c(1.0), b.erf(b.mul(x, c(1.0 / math.sqrt(2.0))))))
            pdf = b.mul(c(1.0 / math.sqrt(2.0 * math.pi)), b.exp(b.mul(half_x, b.neg(x))))
            slope = b.add(cdf, b.mul(x, pdf))
        return [b.mul(g, slope)]

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
    vjp = unary_vjp(lambda b, x, y, g: _d_silu(b, x, g))

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
    def vjp(cls, b, op, grads):
        """Float to float: the gradient cast back; to an integer or bool: none (it is zero)."""
        (x,) = op.operands
        float_to_float = x.type.dtype.is_float and op.attrs["dtype"].is_float
        return [b.cast(grads[0], dtype=x.type.dtype) if float_to_float else None]

    @classmethod
    def infer(cls, types, attrs):
        source, target = types[0].dtype, attrs["dtype"]
        if target.is_blocked or (source.is_blocked and target is not DType.f32):
            raise TypeRuleError(f"cannot cast {source} to {target}: block-quantized weights are only read, "
                                f"widened to f32")
        return [types[0].with_dtype(target)]

    @classmethod
    def widens(cls, op):
        """Float to a wider float (bf16 or f16 to f32) is exact."""
        return op.operands[0].type.dtype.widens_to(op.attrs["dtype"])

    @classmethod
    def ref(cls, attrs, x):
        if holds_blocks(x):
            return dequantize(x).astype(attrs["dtype"].np, copy=False)
        return x.astype(attrs["dtype"].np)

    @classmethod
    def scalar(cls, e, attrs, x):
        return e.cast(x, attrs["dtype"])


def _sum_by_producers(cls, b, op):
    """x + y (one type throughout) where an operand's producer builds such a sum more simply (its `sum_with`)."""
    if len({v.type for v in (*op.operands, op.result)}) != 1:
        return None
    x, y = op.operands
    for value, other in ((x, y), (y, x)):
        producer = value.producer
        hook = lookup(producer.name).sum_with if producer is not None else None
        simpler = hook(b, producer, other) if hook is not None else None
        if simpler is not None:
            return [simpler]
    return None


Add = _binary("add", "add", "x + y", grad=lambda b, x, y, out, g: (g, g), canonicalize=classmethod(_sum_by_producers))
Sub = _binary("sub", "sub", "x - y", grad=lambda b, x, y, out, g: (g, b.neg(g)))
Mul = _binary("mul", "mul", "x * y", grad=lambda b, x, y, out, g: (b.mul(g, y), b.mul(g, x)))
Maximum = _binary("maximum", "max", "the larger of x and y",
                  grad=lambda b, x, y, out, g: _d_extremum(b, x, y, out, g, b.gt))
Minimum = _binary("minimum", "min", "the smaller of x and y",
                  grad=lambda b, x, y, out, g: _d_extremum(b, x, y, out, g, b.lt))


class FloatBinary(Binary):
    float_only = True


Div = _binary("div", "div", "x / y (floats only)", FloatBinary, grad=_d_div)
Pow = _binary("pow", "pow", "x ** y (floats only)", FloatBinary, grad=_d_pow, flops_per_element=8)


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
    def vjp(cls, b, op, grads):
        cond, x, y = op.operands
        g = grads[0]
        zero = const(b, g, 0.0)
        return [None, unbroadcast(b, b.where(cond, g, zero), x.type.shape),
                unbroadcast(b, b.where(cond, zero, g), y.type.shape)]

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
