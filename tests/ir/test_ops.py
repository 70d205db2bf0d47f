"""Every registered op: its type rule, its interpreter result against an independent
numpy computation, its type-rule errors, its scalar form, its decomposition and its cost."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

import numpy as np
import pytest

from ir.builder import Builder, make_op
from ir.dtypes import DType, bf16, boolean, f16, f32, i32, i64
from ir.errors import VerifyError
from ir.graph import Graph, Op, Region, Value
from ir.interpreter import interpret
from ir.ops import REGISTRY, FusionKind, lookup
from ir.scalar import ScalarBuilder, evaluate
from ir.types import TensorType
from ir.verifier import verify

FLOATS = (f32, bf16, f16)
INTS = (i32, i64)
NUMERIC = FLOATS + INTS
ALL = NUMERIC + (boolean,)
#: (rtol, atol) of one op's result in each float dtype
TOL = {f32: (1e-5, 1e-6), f16: (4e-3, 2e-3), bf16: (3e-2, 2e-2)}

RNG = np.random.default_rng(1234)
#: a mean over an empty axis is NaN, as numpy's (which also warns)
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")


def T(dtype: DType, *shape: int) -> TensorType:
    return TensorType(shape, dtype)


def sample(shape, dtype: DType, low: float = -3.0, high: float = 3.0) -> np.ndarray:
    """Random values of `dtype` in [low, high] (ints: whole numbers in that range)."""
    if dtype == boolean:
        return RNG.random(shape) < 0.5
    if dtype.is_int:
        return RNG.integers(int(low), int(high) + 1, shape).astype(dtype.np)
    return RNG.uniform(low, high, shape).astype(dtype.np)


def grid(shape, dtype: DType) -> np.ndarray:
    """Values from a small grid, so that ties and equalities occur."""
    values = RNG.integers(-2, 3, shape)
    return (values / 2 if dtype.is_float else values).astype(dtype.np)


def wide(a: np.ndarray) -> np.ndarray:
    """`a` in float64 (floats), int64 (ints) or bool: the precision of the expectations."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a
    return a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64)


@dataclasses.dataclass
class Case:
    """One op application: operands, attributes, expected results and their dtypes."""

    op: str
    args: list[np.ndarray]
    attrs: dict
    expect: list[np.ndarray]
    dtypes: list[DType]
    tol: float = 1.0
    region: Callable[[list[TensorType]], Region] | None = None

    @property
    def id(self) -> str:
        shapes = "_".join("x".join(map(str, a.shape)) or "s" for a in self.args)
        dtypes = "_".join(str(DType.of(a)) for a in self.args)
        attrs = ",".join(f"{k}={v}" for k, v in sorted(self.attrs.items()))
        return f"{self.op}[{shapes}:{dtypes}]{{{attrs}}}"


CASES: dict[str, list[Case]] = {}


def case(op, args, attrs, expect, dtype=None, tol=1.0, region=None) -> None:
    expects = list(expect) if isinstance(expect, tuple) else [expect]
    if dtype is None:
        dtype = DType.of(args[0])
    dtypes = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype] * len(expects)
    CASES.setdefault(op, []).append(Case(op, list(args), attrs, [np.asarray(e) for e in expects],
                                         dtypes, tol, region))


# --- elementwise ---------------------------------------------------------------------------
SHAPES = [(), (5,), (2, 3), (0, 3), (2, 1, 4)]
_erf = np.vectorize(math.erf, otypes=[np.float64])
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

UNARY = {  # name: (attrs, independent float64 function, input range)
    "exp": ({}, np.exp, (-3, 3)),
    "log": ({}, np.log, (0.1, 4)),
    "sqrt": ({}, np.sqrt, (0.0, 4)),
    "rsqrt": ({}, lambda x: 1.0 / np.sqrt(x), (0.2, 4)),
    "tanh": ({}, np.tanh, (-3, 3)),
    "sin": ({}, np.sin, (-3, 3)),
    "cos": ({}, np.cos, (-3, 3)),
    "erf": ({}, _erf, (-2, 2)),
    "sigmoid": ({}, lambda x: 1.0 / (1.0 + np.exp(-x)), (-4, 4)),
    "relu": ({}, lambda x: np.where(x > 0, x, 0.0), (-3, 3)),
    "silu": ({}, lambda x: x / (1.0 + np.exp(-x)), (-4, 4)),
}
for _name, (_attrs, _fn, (_lo, _hi)) in UNARY.items():
    for _shape, _dtype in itertools.product(SHAPES, FLOATS):
        _x = sample(_shape, _dtype, _lo, _hi)
        case(_name, [_x], _attrs, _fn(wide(_x)))

for _shape, _dtype in itertools.product(SHAPES, FLOATS):
    _x = wide(_x64 := sample(_shape, _dtype))
    case("gelu", [_x64], {}, 0.5 * _x * (1 + np.tanh(_SQRT_2_OVER_PI * (_x + 0.044715 * _x ** 3))))
    case("gelu", [_x64], {"approximate": "none"}, 0.5 * _x * (1 + _erf(_x / math.sqrt(2))))

for _shape, _dtype in itertools.product(SHAPES, NUMERIC):
    _x = sample(_shape, _dtype, -5, 5)
    case("neg", [_x], {}, 0 - wide(_x))
    case("abs", [_x], {}, np.where(wide(_x) < 0, -wide(_x), wide(_x)))


def _cast_expect(x: np.ndarray, to: DType) -> np.ndarray:
    x = wide(x)
    if to == boolean:
        return x != 0
    if to.is_int:
        return np.trunc(x).astype(np.int64)
    return x.astype(np.float64)


for _src, _dst in itertools.product(ALL, ALL):
    _x = sample((2, 3), _src, -100, 100)
    case("cast", [_x], {"dtype": _dst}, _cast_expect(_x, _dst), _dst)
_x = sample((), f32)
case("cast", [_x], {"dtype": "i64"}, np.trunc(wide(_x)).astype(np.int64), i64)  # a dtype given by name
case("cast", [np.array([-1.7, -0.5, 0.5, 1.7], np.float32)], {"dtype": i32},
     np.array([-1, 0, 0, 1]), i32)  # truncation toward zero

PAIRS = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 3), ()), ((4,), (2, 3, 4)),
         ((0, 3), (1, 3)), ((2, 0, 1), (1, 5)), ((), ())]
ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply,
         "maximum": lambda x, y: np.where(x >= y, x, y), "minimum": lambda x, y: np.where(x <= y, x, y)}
for _name, _fn in ARITH.items():
    for (_sx, _sy), _dtype in itertools.product(PAIRS, NUMERIC):
        _x, _y = sample(_sx, _dtype), sample(_sy, _dtype)
        case(_name, [_x, _y], {}, _fn(wide(_x), wide(_y)))

for (_sx, _sy), _dtype in itertools.product(PAIRS, FLOATS):
    _x = sample(_sx, _dtype)
    _y = (np.sign(sample(_sy, f32)) * sample(_sy, f32, 0.5, 3)).astype(_dtype.np)
    case("div", [_x, _y], {}, wide(_x) / wide(_y))
    _x, _y = sample(_sx, _dtype, 0.5, 2), sample(_sy, _dtype, -2, 2)
    case("pow", [_x, _y], {}, np.exp(wide(_y) * np.log(wide(_x))))

COMPARE = {"eq": lambda x, y: ~((x < y) | (x > y)), "ne": lambda x, y: (x < y) | (x > y),
           "lt": lambda x, y: y - x > 0, "le": lambda x, y: ~(x > y),
           "gt": lambda x, y: x - y > 0, "ge": lambda x, y: ~(x < y)}
for _name, _fn in COMPARE.items():
    for (_sx, _sy), _dtype in itertools.product(PAIRS, NUMERIC):
        _x, _y = grid(_sx, _dtype), grid(_sy, _dtype)
        case(_name, [_x, _y], {}, _fn(wide(_x), wide(_y)), boolean)

for (_sc, _sx, _sy), _dtype in itertools.product(
        [((3, 1), (1, 4), ()), ((), (2, 2), (2, 2)), ((0, 2), (1, 2), (0, 1)), ((2, 3), (2, 3), (2, 3)),
         ((4,), (2, 1), (1,))], ALL):
    _c, _x, _y = sample(_sc, boolean), sample(_sx, _dtype), sample(_sy, _dtype)
    _bc, _bx, _by = np.broadcast_arrays(_c, _x, _y)
    _flat = [x if c else y for c, x, y in zip(_bc.ravel(), _bx.ravel(), _by.ravel())]
    case("where", [_c, _x, _y], {}, np.array(_flat, dtype=_dtype.np).reshape(_bc.shape), _dtype)

# --- generators --------------------------------------------------------------------------
for _shape, _axis, _dtype in [((3, 4), 0, i32), ((3, 4), 1, i64), ((5,), 0, f32), ((2, 3, 2), 2, bf16),
                              ((0, 3), 1, i32)]:
    _expect = np.zeros(_shape, np.int64)
    for _idx in np.ndindex(*_shape):
        _expect[_idx] = _idx[_axis]
    case("iota", [], {"shape": _shape, "axis": _axis, "dtype": _dtype}, _expect, _dtype)
case("iota", [], {"shape": (4,)}, np.array([0, 1, 2, 3]), i32)

for _shape, _dtype, _value in itertools.product([(), (2, 3), (0, 2)], ALL, [2.5, -1.0]):
    _fill = {boolean: bool(_value), i32: int(_value), i64: int(_value)}.get(_dtype, _value)
    case("full", [], {"shape": _shape, "value": _value, "dtype": _dtype},
         np.array([_fill] * math.prod(_shape), dtype=np.float64 if _dtype.is_float else None)
         .reshape(_shape), _dtype)
case("full", [], {"value": 7}, np.array(7.0), f32)

for _value, _dtype, _expect in [
        (((1, 2, 3), (4, 5, 6)), f32, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        ((0.5, -1.25), bf16, [0.5, -1.25]),
        (3, i64, 3),
        (((True, False),), boolean, [[True, False]]),
        ((1.5, 2, -3.5), f16, [1.5, 2.0, -3.5]),
        ((), i32, np.zeros((0,), np.int64)),
        (((7,), (8,)), i32, [[7], [8]])]:
    case("constant", [], {"value": _value, "dtype": _dtype}, np.array(_expect), _dtype)

for _rows, _cols, _offset in [(3, 5, 0), (4, 4, 1), (4, 3, -1), (0, 2, 0), (2, 6, 3)]:
    _mask = [[c <= r + _offset for c in range(_cols)] for r in range(_rows)]
    case("causal_mask", [], {"rows": _rows, "cols": _cols, "offset": _offset},
         np.array(_mask, dtype=bool).reshape(_rows, _cols), boolean)

# --- reductions ----------------------------------------------------------------------------
REDUCE_SHAPES = [((2, 3, 4), None), ((2, 3, 4), (0,)), ((2, 3, 4), (1, 2)), ((2, 3, 4), (-1,)),
                 ((2, 3, 4), ()), ((), None), ((0, 3), (0,)), ((0, 3), (1,)), ((5,), (0,))]


def _reduce(fn, x, axes, keepdims):
    """Reduce `x` over `axes` by `fn` on each (python) list of reduced elements."""
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, kept + list(axes))
    rows = moved.reshape(math.prod(x.shape[a] for a in kept), -1) if x.size else \
        np.zeros((math.prod(x.shape[a] for a in kept), 0), x.dtype)
    out = np.array([fn(list(row)) for row in rows], dtype=x.dtype).reshape([x.shape[a] for a in kept])
    if keepdims:
        out = out.reshape([1 if a in axes else d for a, d in enumerate(x.shape)])
    return out


def _identity_max(dtype: DType):
    return -math.inf if dtype.is_float else int(np.iinfo(dtype.np).min)


for (_shape, _axes), _keep, _dtype in itertools.product(REDUCE_SHAPES, [False, True], NUMERIC):
    _x = sample(_shape, _dtype, 0.5, 1.5) if _dtype.is_float else sample(_shape, _dtype)
    _attrs = {"axes": _axes, "keepdims": _keep}
    case("sum", [_x], _attrs, _reduce(sum, wide(_x), _axes, _keep), tol=2)
    case("max", [_x], _attrs, _reduce(lambda r: max(r, default=_identity_max(_dtype)), wide(_x), _axes, _keep))
    if _dtype.is_float:
        case("mean", [_x], _attrs, _reduce(lambda r: sum(r) / len(r) if r else math.nan, wide(_x), _axes, _keep),
             tol=2)

for (_shape, _axis), _keep, _dtype in itertools.product(
        [((3, 4), -1), ((3, 4), 0), ((5,), 0), ((2, 3, 4), 1), ((0, 3), 1)], [False, True], NUMERIC):
    _x = grid(_shape, _dtype)
    case("argmax", [_x], {"axis": _axis, "keepdims": _keep},
         _reduce(lambda r: r.index(max(r)), wide(_x), (_axis,), _keep), i32)


def _softmax(x, axis):
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


for (_shape, _axis), _dtype in itertools.product(
        [((3, 5), -1), ((2, 3, 4), 1), ((5,), 0), ((0, 4), -1), ((4, 0), -1), ((2, 1), 1)], FLOATS):
    _x = sample(_shape, _dtype)
    case("softmax", [_x], {"axis": _axis}, _softmax(wide(_x), _axis), tol=2)
    with np.errstate(divide="ignore"):
        _logz = np.log(np.sum(np.exp(wide(_x)), axis=_axis, keepdims=True))
    case("log_softmax", [_x], {"axis": _axis}, wide(_x) - _logz, tol=2)

# --- shape ops -----------------------------------------------------------------------------
for (_shape, _to), _dtype in itertools.product(
        [((2, 3), (3, 2)), ((6,), (1, 2, 3)), ((), (1, 1)), ((0, 3), (3, 0)), ((2, 2), (4,))], ALL):
    _x = sample(_shape, _dtype)
    case("reshape", [_x], {"shape": _to}, np.array(list(wide(_x).flat)).reshape(_to))


def _permuted(x, perm):
    out = np.empty([x.shape[p] for p in perm], dtype=x.dtype)
    for idx in np.ndindex(*out.shape):
        src = [0] * x.ndim
        for i, p in enumerate(perm):
            src[p] = idx[i]
        out[idx] = x[tuple(src)]
    return out


for (_shape, _perm), _dtype in itertools.product(
        [((2, 3), (1, 0)), ((2, 3, 4), (2, 0, 1)), ((), ()), ((0, 2), (1, 0)), ((3, 2), (0, 1))], ALL):
    _x = sample(_shape, _dtype)
    case("transpose", [_x], {"perm": _perm}, _permuted(wide(_x), _perm))

for (_shape, _to), _dtype in itertools.product(
        [((3, 1), (2, 3, 4)), ((), (2, 2)), ((1,), (0,)), ((2, 3), (2, 3)), ((1, 3), (0, 4, 3))], ALL):
    _x = sample(_shape, _dtype)
    _expect = np.empty(_to, dtype=wide(_x).dtype)
    for _idx in np.ndindex(*_to):
        _expect[_idx] = wide(_x)[tuple(0 if d == 1 else i for i, d in zip(_idx[len(_to) - _x.ndim:], _x.shape))]
    case("broadcast_to", [_x], {"shape": _to}, _expect)

for (_shape, _starts, _stops, _steps), _dtype in itertools.product(
        [((5,), (1,), (4,), (2,)), ((3, 4), (0, 1), (3, 3), None), ((0,), (0,), (0,), None),
         ((), (), (), None), ((4, 6), (1, 0), (1, 6), (1, 4)), ((4, 6), (0, 5), (4, 6), (3, 1))], ALL):
    _x = sample(_shape, _dtype)
    _ranges = [range(lo, hi, st) for lo, hi, st in zip(_starts, _stops, _steps or (1,) * len(_shape))]
    _expect = np.array([wide(_x)[i] for i in itertools.product(*_ranges)]).reshape([len(r) for r in _ranges])
    case("slice", [_x], {"starts": _starts, "stops": _stops, "steps": _steps}, _expect)

for (_shapes, _axis), _dtype in itertools.product(
        [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 0), (2, 2)], 1), ([(2, 3), (2, 1)], -1), ([(3,)], 0),
         ([(1, 2, 2), (1, 2, 2)], 2)], ALL):
    _xs = [sample(s, _dtype) for s in _shapes]
    _expect_shape = list(_shapes[0])
    _expect_shape[_axis] = sum(s[_axis] for s in _shapes)
    _expect = np.empty(_expect_shape, dtype=wide(_xs[0]).dtype)
    _at = 0
    for _x in _xs:
        _index = [slice(None)] * len(_expect_shape)
        _index[_axis] = slice(_at, _at + _x.shape[_axis])
        _expect[tuple(_index)] = wide(_x)
        _at += _x.shape[_axis]
    case("concat", _xs, {"axis": _axis}, _expect)

for (_table, _ishape, _axis), _dtype, _itype in itertools.product(
        [((5, 3), (2,), 0), ((5, 3), (2, 2), 0), ((2, 4), (3,), 1), ((4, 3), (), 0), ((4, 3), (0,), 0),
         ((2, 4, 3), (2, 5), -2)], [f32, bf16, i32, boolean], INTS):
    _t = sample(_table, _dtype)
    _ind = RNG.integers(0, _table[_axis], _ishape).astype(_itype.np)
    case("gather", [_t, _ind], {"axis": _axis}, wide(_t)[(slice(None),) * (_axis % len(_table)) + (wide(_ind),)])

# --- linear algebra and nn -------------------------------------------------------------------
for (_sa, _sb, _ta, _tb), _dtype in itertools.product(
        [((2, 3), (3, 4), False, False), ((3, 2), (3, 4), True, False), ((2, 3), (4, 3), False, True),
         ((3, 2), (4, 3), True, True), ((2, 2, 3), (3, 4), False, False), ((1, 2, 3), (4, 3, 5), False, False),
         ((2, 0), (0, 3), False, False), ((0, 3), (3, 2), False, False), ((2, 1, 2, 3), (3, 3, 2), False, False)],
        FLOATS):
    _a, _b = sample(_sa, _dtype), sample(_sb, _dtype)
    _wa = np.swapaxes(wide(_a), -1, -2) if _ta else wide(_a)
    _wb = np.swapaxes(wide(_b), -1, -2) if _tb else wide(_b)
    _batch = np.broadcast_shapes(_wa.shape[:-2], _wb.shape[:-2])
    _expect = np.einsum("...ik,...kj->...ij", np.broadcast_to(_wa, _batch + _wa.shape[-2:]),
                        np.broadcast_to(_wb, _batch + _wb.shape[-2:]))
    case("matmul", [_a, _b], {"transpose_a": _ta, "transpose_b": _tb}, _expect, tol=2)

for _shape, _dtype, _eps in itertools.product([(4, 8), (2, 3, 5), (6,)], FLOATS, [1e-5, 0.1]):
    _x, _w, _bias = sample(_shape, _dtype), sample(_shape[-1:], _dtype), sample(_shape[-1:], _dtype)
    _c = wide(_x) - wide(_x).mean(-1, keepdims=True)
    _norm = _c / np.sqrt((_c ** 2).mean(-1, keepdims=True) + _eps)
    case("layer_norm", [_x, _w, _bias], {"eps": _eps}, _norm * wide(_w) + wide(_bias), tol=4)
    _rms = np.sqrt((wide(_x) ** 2).mean(-1, keepdims=True) + _eps)
    case("rms_norm", [_x, _w], {"eps": _eps}, wide(_x) / _rms * wide(_w), tol=4)


def _cross_entropy(logits, labels, mask=None):
    logits = wide(logits)
    total, count = 0.0, 0.0
    for idx in np.ndindex(*labels.shape):
        row = logits[idx]
        weight = 1.0 if mask is None else float(mask[idx])
        total += weight * -(row[labels[idx]] - math.log(sum(math.exp(v) for v in row)))
        count += weight
    return np.array(total / max(count, 1.0))


for (_lshape, _mask), _dtype, _itype in itertools.product(
        [((4, 5), None), ((2, 3, 5), None), ((4, 5), boolean), ((3, 4), f32), ((6,), None), ((0, 5), None)],
        FLOATS, INTS):
    _logits = sample(_lshape, _dtype)
    _labels = RNG.integers(0, _lshape[-1], _lshape[:-1]).astype(_itype.np)
    _args = [_logits, _labels]
    if _mask is not None:
        _args.append(sample(_lshape[:-1], _mask, 0, 2))
    case("cross_entropy", _args, {}, _cross_entropy(*_args), tol=4)
_logits = sample((3, 4), f32)
case("cross_entropy", [_logits, np.array([1, 2, 3], np.int32), np.zeros(3, bool)], {}, np.array(0.0))


def _conv(x, w, stride, padding, dilation, groups):
    x, w = wide(x), wide(w)
    x = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    for b, oc, i, j in np.ndindex(n, o, oh, ow):
        g = oc // (o // groups)
        for ic, ki, kj in np.ndindex(cg, kh, kw):
            out[b, oc, i, j] += (x[b, g * cg + ic, i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]]
                                 * w[oc, ic, ki, kj])
    return out


CONVS = [((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),
         ((2, 2, 6, 5), (4, 2, 3, 2), (2, 1), (1, 0), (1, 1), 1),
         ((1, 4, 7, 7), (4, 2, 3, 3), (1, 2), (1, 1), (2, 1), 2),
         ((1, 3, 4, 4), (3, 1, 1, 1), (1, 1), (0, 0), (1, 1), 3),
         ((1, 1, 3, 3), (2, 1, 3, 3), (1, 1), (0, 0), (1, 1), 1)]
for (_xs, _ws, _stride, _pad, _dil, _groups), _dtype in itertools.product(CONVS, FLOATS):
    _x, _w = sample(_xs, _dtype), sample(_ws, _dtype)
    case("conv2d", [_x, _w], {"stride": _stride, "padding": _pad, "dilation": _dil, "groups": _groups},
         _conv(_x, _w, _stride, _pad, _dil, _groups), tol=3)


def _pool(x, kernel, stride, padding, reduce, fill):
    x = np.pad(wide(x), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=fill)
    n, c, h, w = x.shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    out = np.zeros((n, c, oh, ow))
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        window = [x[b, ch, i * stride[0] + ki, j * stride[1] + kj] for ki, kj in np.ndindex(*kernel)]
        out[b, ch, i, j] = reduce(window)
    return out


for (_xs, _kernel, _stride, _pad), _dtype in itertools.product(
        [((1, 2, 4, 4), (2, 2), None, (0, 0)), ((2, 1, 5, 5), (3, 3), (1, 1), (1, 1)),
         ((1, 3, 6, 4), (3, 2), (2, 2), (1, 0)), ((1, 1, 2, 2), (2, 2), None, (1, 1))], FLOATS):
    _x = sample(_xs, _dtype)
    _attrs = {"kernel": _kernel, "stride": _stride, "padding": _pad}
    _s = _stride or _kernel
    case("max_pool2d", [_x], _attrs, _pool(_x, _kernel, _s, _pad, max, -math.inf))
    case("avg_pool2d", [_x], _attrs, _pool(_x, _kernel, _s, _pad, lambda w: sum(w) / len(w), 0.0))


# --- gradient ops (the VJPs of conv2d, pooling, gather and slice build these) -----------------
def _conv_grads(x, w, g, stride, padding, dilation, groups):
    """(d<g, conv(x, w)>/dx, d<g, conv(x, w)>/dw) by the definition, with loops."""
    x, w, g = wide(x), wide(w), wide(g)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    dx = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]))
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    dw = np.zeros(w.shape)
    for b, oc, i, j in np.ndindex(*g.shape):
        grp = oc // (o // groups)
        for ic, ki, kj in np.ndindex(cg, kh, kw):
            at = (b, grp * cg + ic, i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1])
            dx[at] += g[b, oc, i, j] * w[oc, ic, ki, kj]
            dw[oc, ic, ki, kj] += g[b, oc, i, j] * xp[at]
    return dx[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd], dw


for (_xs, _ws, _stride, _pad, _dil, _groups), _dtype in itertools.product(CONVS, FLOATS):
    _x, _w = sample(_xs, _dtype), sample(_ws, _dtype)
    _g = sample(_conv(_x, _w, _stride, _pad, _dil, _groups).shape, _dtype)
    _dx, _dw = _conv_grads(_x, _w, _g, _stride, _pad, _dil, _groups)
    _conv_attrs = {"stride": _stride, "padding": _pad, "dilation": _dil, "groups": _groups}
    case("conv2d_input_grad", [_g, _w], {**_conv_attrs, "input_hw": _xs[2:]}, _dx, tol=3)
    case("conv2d_weight_grad", [_x, _g], {**_conv_attrs, "kernel_hw": _ws[2:]}, _dw, tol=3)


def _pool_grad(x, g, kernel, stride, padding, pick):
    """Each window's share of g (pick(window values) -> weights) added back at the window's input positions."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]))
    xp = np.pad(wide(x), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=-math.inf)
    for b, ch, i, j in np.ndindex(*g.shape):
        spots = [(i * stride[0] + ki, j * stride[1] + kj) for ki, kj in np.ndindex(*kernel)]
        for (r, q), weight in zip(spots, pick([xp[b, ch, r, q] for r, q in spots])):
            out[b, ch, r, q] += weight * wide(g)[b, ch, i, j]
    return out[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _first_max(values):
    return [1.0 if k == values.index(max(values)) else 0.0 for k in range(len(values))]


for (_xs, _kernel, _stride, _pad), _dtype in itertools.product(
        [((1, 2, 4, 4), (2, 2), None, (0, 0)), ((2, 1, 5, 5), (3, 3), (1, 1), (1, 1)),
         ((1, 3, 6, 4), (3, 2), (2, 2), (1, 0)), ((1, 1, 2, 2), (2, 2), None, (1, 1))], FLOATS):
    _x = grid(_xs, _dtype)  # ties: the first maximum of a window takes its gradient
    _attrs = {"kernel": _kernel, "stride": _stride, "padding": _pad}
    _s = _stride or _kernel
    _g = sample(_pool(_x, _kernel, _s, _pad, max, -math.inf).shape, _dtype)
    case("max_pool2d_grad", [_x, _g], _attrs, _pool_grad(_x, _g, _kernel, _s, _pad, _first_max))
    case("avg_pool2d_grad", [_g], {**_attrs, "input_hw": _xs[2:]},
         _pool_grad(_x, _g, _kernel, _s, _pad, lambda v: [1.0 / len(v)] * len(v)))

for (_shape, _low, _high, _interior), _dtype in itertools.product(
        [((2, 3), (1, 0), (0, 2), None), ((3,), (0,), (0,), (2,)), ((2, 2), (1, 1), (1, 1), (1, 0)),
         ((), (), (), None), ((0, 2), (1, 0), (1, 1), (1, 1))], [f32, bf16, i32]):
    _x = sample(_shape, _dtype)
    _it = _interior or (0,) * len(_shape)
    _expect = np.full([lo + hi + d + max(d - 1, 0) * k for d, lo, hi, k in zip(_shape, _low, _high, _it)],
                      1.5 if _dtype.is_float else 0.0)
    for _idx in np.ndindex(*_shape):
        _expect[tuple(lo + i * (k + 1) for i, lo, k in zip(_idx, _low, _it))] = wide(_x)[_idx]
    case("pad", [_x], {"low": _low, "high": _high, "interior": _interior,
                       "value": 1.5 if _dtype.is_float else 0.0}, _expect)

for (_ushape, _ishape, _axis, _size), _dtype in itertools.product(
        [((4, 3), (4,), 0, 5), ((2, 3, 2), (2, 3), 0, 3), ((2, 4), (4,), 1, 3), ((3,), (), 0, 2),
         ((2, 0), (0,), 1, 4)], [f32, bf16, i32]):
    _u = sample(_ushape, _dtype)
    _ind = RNG.integers(0, _size, _ishape).astype(np.int32)
    _wide_u = np.moveaxis(wide(_u), tuple(range(_axis, _axis + len(_ishape))), tuple(range(len(_ishape))))
    _rest = _ushape[:_axis] + _ushape[_axis + len(_ishape):]
    _expect = np.zeros((_size, *_rest), dtype=_wide_u.dtype)
    for _idx in np.ndindex(*_ishape):
        _expect[_ind[_idx]] += _wide_u[_idx]
    case("scatter_add", [_u, _ind], {"axis": _axis, "size": _size}, np.moveaxis(_expect, 0, _axis))
    if _dtype == f32:  # added into a base instead of zeros
        _base = sample(np.moveaxis(_expect, 0, _axis).shape, f32)
        _into = np.moveaxis(_base, _axis, 0).copy()
        for _idx in np.ndindex(*_ishape):
            _into[_ind[_idx]] += _wide_u[_idx]
        case("scatter_add", [_u, _ind, _base], {"axis": _axis, "size": _size}, np.moveaxis(_into, 0, _axis))

# --- dynamic_slice / dynamic_update_slice: one start per row of axis 0 ---------------------
for (_xshape, _axis, _size, _starts), _dtype in itertools.product(
        [((2, 5, 3), 1, 2, (0, 3)), ((3, 2, 6, 2), 2, 3, (4, 0, -2)), ((2, 4), 1, 4, (1, 9))], [f32, bf16, i32]):
    _x = sample(_xshape, _dtype)
    _st = np.array(_starts, np.int32)
    _expect = np.zeros(_xshape[:_axis] + (_size,) + _xshape[_axis + 1:])
    _u = sample(_expect.shape, _dtype)
    _written = wide(_x).copy()
    for _b, _j in itertools.product(range(_xshape[0]), range(_size)):
        _p = _starts[_b] + _j
        if 0 <= _p < _xshape[_axis]:
            _at = (_b,) + (slice(None),) * (_axis - 1) + (_p,)
            _expect[(_b,) + (slice(None),) * (_axis - 1) + (_j,)] = wide(_x)[_at]
            _written[_at] = wide(_u)[(_b,) + (slice(None),) * (_axis - 1) + (_j,)]
    case("dynamic_slice", [_x, _st], {"axis": _axis, "size": _size}, _expect)
    case("dynamic_update_slice", [_x, _u, _st], {"axis": _axis}, _written)


# --- fused ---------------------------------------------------------------------------------
def _mul_add_sum(types: list[TensorType]) -> Region:
    """(a * b + a, sum(a * b + a, axes=[1]))."""
    region = Region([Value(t) for t in types])
    b = Builder(ops=region.ops)
    a, v = region.args
    t = b.add(b.mul(a, v), a)
    region.results = [t, b.sum(t, axes=(1,))]
    return region


def _nested(types: list[TensorType]) -> Region:
    """tanh of an inner fused (x * x), and x itself."""
    region = Region([Value(t) for t in types])
    inner = Region([Value(types[0])])
    inner.results = [Builder(ops=inner.ops).mul(inner.args[0], inner.args[0])]
    fused = make_op("fused", [region.args[0]], {"label": "square"}, region=inner)
    region.ops.append(fused)
    region.results = [Builder(ops=region.ops).tanh(fused.result), region.args[0]]
    return region


for _dtype in FLOATS:
    _a, _v = sample((2, 3), _dtype), sample((3,), _dtype)
    _t = wide(_a) * wide(_v) + wide(_a)
    case("fused", [_a, _v], {"label": "mul_add"}, (_t, _t.sum(1)), region=_mul_add_sum, tol=2)
    _x = sample((4,), _dtype)
    case("fused", [_x], {}, (np.tanh(wide(_x) ** 2), wide(_x)), region=_nested)
_i = sample((2, 3), i32)
_iv = sample((3,), i32)
case("fused", [_i, _iv], {}, (wide(_i) * wide(_iv) + wide(_i), (wide(_i) * wide(_iv) + wide(_i)).sum(1)),
     region=_mul_add_sum)

# --- collectives: every replica of the group is taken to hold the same value ---------------
for _dtype in FLOATS:
    _g = sample((2, 3), _dtype)
    case("all_reduce", [_g], {"group": "data", "world_size": 4}, 4 * wide(_g))
    case("all_reduce", [_g], {"op": "mean", "group": "data", "world_size": 4}, wide(_g))
_s = sample((), f32)
case("all_reduce", [_s], {"group": "data", "world_size": 1}, wide(_s))

ALL_CASES = [c for cases in CASES.values() for c in cases]


# --- helpers -------------------------------------------------------------------------------
def build(c: Case) -> tuple[Graph, Op]:
    """A graph with one input per operand, the op, and one output per result."""
    b = Builder()
    xs = [b.input(f"x{i}", TensorType(a.shape, DType.of(a))) for i, a in enumerate(c.args)]
    region = c.region([x.type for x in xs]) if c.region else None
    op = make_op(c.op, xs, c.attrs, region=region)
    b.ops.append(op)
    for i, result in enumerate(op.results):
        b.output(f"y{i}", result)
    return b.graph, op


def inputs_of(c: Case) -> dict[str, np.ndarray]:
    return {f"x{i}": a for i, a in enumerate(c.args)}


def assert_close(actual, expected, dtype: DType, scale: float = 1.0) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if dtype.is_float:
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(wide(actual), wide(expected).astype(np.float64),
                                   rtol=rtol * scale, atol=atol * scale, equal_nan=True)
    else:
        np.testing.assert_array_equal(actual, expected)


# --- tests ---------------------------------------------------------------------------------
def test_every_registered_op_has_cases():
    missing = sorted(set(REGISTRY) - set(CASES))
    assert not missing, f"ops without value cases: {missing}"
    missing = sorted(set(REGISTRY) - {name for name, *_ in TYPE_ERRORS})
    assert not missing, f"ops without type-error cases: {missing}"


@pytest.mark.parametrize("c", ALL_CASES, ids=lambda c: c.id)
def test_type_rule_and_interpreter(c: Case):
    graph, op = build(c)
    verify(graph)
    assert [r.type for r in op.results] == [TensorType(e.shape, d) for e, d in zip(c.expect, c.dtypes)]
    outputs = interpret(graph, inputs_of(c)).outputs
    for i, (expect, dtype) in enumerate(zip(c.expect, c.dtypes)):
        got = outputs[f"y{i}"]
        assert got.dtype == dtype.np
        assert_close(got, expect, dtype, c.tol)


SCALAR_CASES = [c for c in ALL_CASES if lookup(c.op).scalar is not None]


def test_every_elementwise_op_has_a_scalar_form():
    without = [name for name, d in REGISTRY.items() if d.kind == FusionKind.elementwise and d.scalar is None]
    assert not without


@pytest.mark.parametrize("c", SCALAR_CASES, ids=lambda c: c.id)
def test_scalar_form_matches_ref(c: Case):
    _, op = build(c)
    opdef = lookup(c.op)
    e = ScalarBuilder()
    expr = opdef.scalar(e, op.attrs, *(e.arg(i, DType.of(a)) for i, a in enumerate(c.args)))
    result = op.result.type
    assert expr.dtype == result.dtype
    got = np.broadcast_to(evaluate(expr, c.args), result.shape)
    with np.errstate(all="ignore"):
        want = np.asarray(opdef.ref(op.attrs, *c.args)).astype(result.dtype.np)
    if result.dtype == f32:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert_close(got, want, result.dtype)


COMPOSITE_CASES = [c for c in ALL_CASES if lookup(c.op).is_composite()]


def test_composites_have_cases():
    composites = {name for name, d in REGISTRY.items() if d.is_composite()}
    assert composites == {c.op for c in COMPOSITE_CASES}
    assert {"mean", "softmax", "log_softmax", "layer_norm", "rms_norm", "cross_entropy"} <= composites


@pytest.mark.parametrize("c", COMPOSITE_CASES, ids=lambda c: c.id)
def test_decomposition_matches_ref(c: Case):
    _, op = build(c)
    b = Builder()
    b.graph.inputs.extend(op.operands)
    results = lookup(c.op).decompose(b, op)
    assert [r.type for r in results] == [r.type for r in op.results]
    assert all(o.name != c.op for o in b.graph.ops)
    for i, r in enumerate(results):
        b.output(f"y{i}", r)
    verify(b.graph)
    outputs = interpret(b.graph, inputs_of(c)).outputs
    with np.errstate(all="ignore"):
        want = lookup(c.op).ref(op.attrs, *c.args)
    for i, (w, dtype) in enumerate(zip(want if isinstance(want, tuple) else (want,), c.dtypes)):
        assert_close(outputs[f"y{i}"], np.asarray(w).astype(dtype.np), dtype, 2 * c.tol)


def test_cross_entropy_gathers_each_label_logit():
    """Its decomposition reduces over the classes twice (max, exp-sum) and reads each label's logit
    by one gather, not by a third pass over the classes; the loss is `ref`'s to the bit."""
    rng = np.random.default_rng(5)
    names = ("x", "labels", "mask")
    args = [(4 * rng.standard_normal((3, 4, 11))).astype(np.float32), rng.integers(0, 11, (3, 4)).astype(np.int32),
            rng.random((3, 4)) > 0.3]
    b = Builder()
    op = b.cross_entropy(*(b.input(n, T(t, *a.shape)) for n, t, a in zip(names, (f32, i32, boolean), args))).producer
    d = Builder()
    d.graph.inputs.extend(op.operands)
    d.output("loss", lookup("cross_entropy").decompose(d, op)[0])
    over_classes = [o.name for o in d.graph.ops if o.operands and o.operands[0].type.shape == (3, 4, 11)
                    and o.result.type.shape == (3, 4, 1)]
    assert sorted(over_classes) == ["max", "sum"] and [o.name for o in d.graph.ops].count("gather") == 1
    loss = lambda labels: interpret(d.graph, dict(zip(names, (args[0], labels, args[2])))).outputs["loss"]  # noqa: E731
    assert loss(args[1]) == lookup("cross_entropy").ref({}, *args)
    counted = tuple(np.argwhere(args[2])[0])
    high, nearest = args[1].copy(), args[1].copy()
    high[counted], nearest[counted] = 11, 10  # a label out of range (`ref` refuses it) reads the nearest class
    assert loss(high) == loss(nearest) != loss(args[1])


# --- type-rule errors ------------------------------------------------------------------------
TYPE_ERRORS = [
    ("all_reduce", [T(i32, 2)], {"group": "data", "world_size": 2}, "reduces float values only, got i32[2]"),
    ("all_reduce", [T(f32, 2)], {"group": "data rows", "world_size": 2}, "group 'data rows' is not an identifier"),
    ("all_reduce", [T(f32, 2)], {"group": "data", "world_size": 0}, "group 'data' needs a world_size >= 1, got 0"),
    ("all_reduce", [T(f32, 2)], {"world_size": 2}, "missing attribute 'group'"),
    ("all_reduce", [T(f32, 2)], {"group": "data", "world_size": 2, "op": "max"},
     "attribute 'op' must be one of sum, mean, got 'max'"),
    ("exp", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("exp", [T(f32, 2), T(f32, 2)], {}, "expects 1 operand(s), got 2"),
    ("log", [T(boolean, 2)], {}, "expects a float operand, got bool[2]"),
    ("sqrt", [T(i64)], {}, "expects a float operand, got i64[]"),
    ("rsqrt", [T(i32, 1)], {}, "expects a float operand, got i32[1]"),
    ("tanh", [T(i32, 3)], {}, "expects a float operand, got i32[3]"),
    ("sin", [], {}, "expects 1 operand(s), got 0"),
    ("cos", [T(i64, 2, 2)], {}, "expects a float operand, got i64[2,2]"),
    ("erf", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("sigmoid", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("relu", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("silu", [T(boolean, 2)], {}, "expects a float operand, got bool[2]"),
    ("gelu", [T(f32, 2)], {"approximate": "erf"}, "attribute 'approximate' must be one of tanh, none, got 'erf'"),
    ("gelu", [T(f32, 2)], {"approximate": 1}, "attribute 'approximate' expects str, got 1"),
    ("gelu", [T(f32, 2)], {"exact": True}, "unknown attribute 'exact' (expected: approximate)"),
    ("neg", [T(boolean, 2)], {}, "does not take bool operands, got bool[2]"),
    ("abs", [T(boolean, 2)], {}, "does not take bool operands, got bool[2]"),
    ("cast", [T(f32, 2)], {}, "missing attribute 'dtype'"),
    ("cast", [T(f32, 2)], {"dtype": "f64"}, "attribute 'dtype' expects dtype, got 'f64'"),
    ("add", [T(f32, 2, 3), T(f32, 4)], {}, "operand shapes [2, 3] and [4] do not broadcast"),
    ("add", [T(f32, 2), T(i32, 2)], {}, "operand dtypes differ: f32[2], i32[2]"),
    ("sub", [T(boolean, 2), T(boolean, 2)], {}, "does not take bool operands, got bool[2]"),
    ("mul", [T(f32, 2)], {}, "expects 2 operand(s), got 1"),
    ("maximum", [T(f16, 3), T(bf16, 3)], {}, "operand dtypes differ: f16[3], bf16[3]"),
    ("minimum", [T(i32, 0), T(i32, 2)], {}, "operand shapes [0] and [2] do not broadcast"),
    ("div", [T(i32, 2), T(i32, 2)], {}, "expects float operands, got i32[2]"),
    ("pow", [T(i64, 2), T(i64, 2)], {}, "expects float operands, got i64[2]"),
    ("eq", [T(boolean, 2), T(boolean, 2)], {}, "does not take bool operands, got bool[2]"),
    ("ne", [T(f32, 2), T(f16, 2)], {}, "operand dtypes differ: f32[2], f16[2]"),
    ("lt", [T(f32, 3), T(f32, 2)], {}, "operand shapes [3] and [2] do not broadcast"),
    ("le", [T(i32, 2)], {}, "expects 2 operand(s), got 1"),
    ("gt", [T(i32, 2), T(i64, 2)], {}, "operand dtypes differ: i32[2], i64[2]"),
    ("ge", [T(boolean), T(boolean)], {}, "does not take bool operands, got bool[]"),
    ("where", [T(f32, 2), T(f32, 2), T(f32, 2)], {}, "condition must be bool, got f32[2]"),
    ("where", [T(boolean, 2), T(f32, 2), T(i32, 2)], {}, "operand dtypes differ: f32[2], i32[2]"),
    ("where", [T(boolean, 3), T(f32, 2), T(f32, 2)], {}, "operand shapes [3] and [2] and [2] do not broadcast"),
    ("iota", [], {"shape": (3, 4), "axis": 2}, "axis 2 out of range for shape [3, 4]"),
    ("iota", [], {"shape": ()}, "axis 0 out of range for shape []"),
    ("iota", [], {"shape": (2, -1)}, "negative dimension in shape [2, -1]"),
    ("iota", [T(f32, 2)], {"shape": (2,)}, "expects 0 operand(s), got 1"),
    ("full", [], {"shape": (2,)}, "missing attribute 'value'"),
    ("full", [], {"value": "x"}, "attribute 'value' expects float, got 'x'"),
    ("full", [], {"value": True}, "attribute 'value' expects float, got True"),
    ("full", [], {"shape": (-1,), "value": 1.0}, "negative dimension in shape [-1]"),
    ("full", [], {"shape": (2,), "value": math.nan, "dtype": i32}, "value nan is not representable as i32"),
    ("full", [], {"value": 1e10, "dtype": i32}, "value 10000000000.0 is not representable as i32"),
    ("constant", [], {"value": ((1, 2), (3,))}, "constant value is a ragged list"),
    ("constant", [], {"value": "abc"}, "attribute 'value' expects literal, got 'abc'"),
    ("constant", [], {"value": 1, "dtype": "int"}, "attribute 'dtype' expects dtype, got 'int'"),
    ("causal_mask", [], {"rows": -1, "cols": 2}, "rows and cols must be non-negative"),
    ("causal_mask", [], {"rows": 2}, "missing attribute 'cols'"),
    ("causal_mask", [], {"rows": 2.0, "cols": 2}, "attribute 'rows' expects int, got 2.0"),
    ("sum", [T(boolean, 2)], {}, "does not take bool operands, got bool[2]"),
    ("sum", [T(f32, 2, 3)], {"axes": (2,)}, "axis 2 out of range for rank 2"),
    ("sum", [T(f32, 2, 3)], {"axes": (0, -2)}, "repeated axis in [0, -2]"),
    ("sum", [T(f32, 2, 3)], {"axes": 0}, "attribute 'axes' expects ints, got 0"),
    ("max", [T(f32, 2, 3)], {"axes": (-3,)}, "axis -3 out of range for rank 2"),
    ("max", [T(f32, 2)], {"keepdims": 1}, "attribute 'keepdims' expects bool, got 1"),
    ("mean", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("mean", [T(f32)], {"axes": (0,)}, "axis 0 out of range for rank 0"),
    ("argmax", [T(f32, 2, 3)], {"axis": 2}, "axis 2 out of range for rank 2"),
    ("argmax", [T(f32, 3, 0)], {"axis": 1}, "reduces over the empty axis 1 of f32[3,0]"),
    ("softmax", [T(i32, 2)], {}, "expects a float operand, got i32[2]"),
    ("softmax", [T(f32)], {}, "axis -1 out of range for rank 0"),
    ("log_softmax", [T(f32, 2, 3)], {"axis": 2}, "axis 2 out of range for rank 2"),
    ("reshape", [T(f32, 2, 3)], {"shape": (4,)}, "cannot reshape f32[2,3] (6 elements) to [4]"),
    ("reshape", [T(f32, 2, 3)], {"shape": (-1, 6)}, "cannot reshape f32[2,3] (6 elements) to [-1, 6]"),
    ("transpose", [T(f32, 2, 3)], {"perm": (0, 0)}, "perm [0, 0] is not a permutation of 2 axes"),
    ("transpose", [T(f32, 2, 3)], {"perm": (1, 0, 2)}, "perm [1, 0, 2] is not a permutation of 2 axes"),
    ("broadcast_to", [T(f32, 3)], {"shape": (4,)}, "cannot broadcast f32[3] to [4]"),
    ("broadcast_to", [T(f32, 2, 3)], {"shape": (3,)}, "cannot broadcast f32[2,3] to [3]"),
    ("broadcast_to", [T(f32, 1)], {"shape": (-1,)}, "cannot broadcast f32[1] to [-1]"),
    ("slice", [T(f32, 5)], {"starts": (1,), "stops": (6,)}, "slice 1:6:1 out of range for dimension 5 of f32[5]"),
    ("slice", [T(f32, 5)], {"starts": (3,), "stops": (1,)}, "slice 3:1:1 out of range for dimension 5 of f32[5]"),
    ("slice", [T(f32, 5)], {"starts": (0,), "stops": (5,), "steps": (0,)},
     "slice 0:5:0 out of range for dimension 5 of f32[5]"),
    ("slice", [T(f32, 3, 4)], {"starts": (0,), "stops": (1,)},
     "starts, stops and steps need 2 entries each for f32[3,4]"),
    ("concat", [], {"axis": 0}, "expects at least one operand"),
    ("concat", [T(f32, 2, 3), T(f32, 2, 4)], {"axis": 0}, "shapes f32[2,3] and f32[2,4] differ off the concat axis 0"),
    ("concat", [T(f32, 2, 3), T(f32, 2, 3, 1)], {"axis": 1},
     "shapes f32[2,3] and f32[2,3,1] differ off the concat axis 1"),
    ("concat", [T(f32, 2), T(i32, 2)], {"axis": 0}, "operand dtypes differ: f32[2], i32[2]"),
    ("concat", [T(f32), T(f32)], {"axis": 0}, "axis 0 out of range for rank 0"),
    ("gather", [T(f32, 5, 3), T(f32, 2)], {}, "indices must be integers, got f32[2]"),
    ("gather", [T(f32, 5, 3), T(i32, 2)], {"axis": 2}, "axis 2 out of range for rank 2"),
    ("matmul", [T(f32, 3), T(f32, 3, 4)], {}, "operands need rank >= 2, got f32[3] and f32[3,4]"),
    ("matmul", [T(f32, 2, 3), T(f32, 4, 5)], {}, "contraction sizes differ: f32[2,3] and f32[4,5] (K = 3 vs 4)"),
    ("matmul", [T(f32, 2, 3), T(f32, 2, 3)], {"transpose_b": True, "transpose_a": True},
     "contraction sizes differ: f32[2,3] and f32[2,3] (K = 2 vs 3)"),
    ("matmul", [T(i32, 2, 3), T(i32, 3, 2)], {}, "expects float operands, got i32[2,3]"),
    ("matmul", [T(f32, 2, 2, 3), T(f32, 3, 3, 2)], {}, "operand shapes [2] and [3] do not broadcast"),
    ("layer_norm", [T(f32, 4, 8), T(f32, 3), T(f32, 8)], {}, "scale/shift f32[3] must be f32[8] for input f32[4,8]"),
    ("layer_norm", [T(f32, 4, 8), T(f32, 8), T(f16, 8)], {}, "scale/shift f16[8] must be f32[8] for input f32[4,8]"),
    ("layer_norm", [T(f32), T(f32), T(f32)], {}, "expects a float tensor of rank >= 1, got f32[]"),
    ("rms_norm", [T(i32, 4, 8), T(i32, 8)], {}, "expects a float tensor of rank >= 1, got i32[4,8]"),
    ("rms_norm", [T(f32, 4, 8), T(f32, 8)], {"eps": "small"}, "attribute 'eps' expects float, got 'small'"),
    ("cross_entropy", [T(f32, 4, 5), T(f32, 4)], {}, "labels must be integers shaped [4], got f32[4]"),
    ("cross_entropy", [T(f32, 4, 5), T(i32, 5)], {}, "labels must be integers shaped [4], got i32[5]"),
    ("cross_entropy", [T(f32, 4, 5), T(i32, 4), T(boolean, 5)], {},
     "mask must be shaped like the labels [4], got bool[5]"),
    ("cross_entropy", [T(i32, 4, 5), T(i32, 4)], {}, "logits must be a float tensor of rank >= 1, got i32[4,5]"),
    ("cross_entropy", [T(f32, 4, 5)], {}, "expects 2 or 3 operand(s), got 1"),
    ("conv2d", [T(f32, 1, 3, 5, 5), T(f32, 4, 2, 3, 3)], {},
     "channels of f32[1,3,5,5] and f32[4,2,3,3] do not match groups=1"),
    ("conv2d", [T(f32, 1, 4, 5, 5), T(f32, 3, 2, 3, 3)], {"groups": 2},
     "channels of f32[1,4,5,5] and f32[3,2,3,3] do not match groups=2"),
    ("conv2d", [T(f32, 1, 2, 2, 2), T(f32, 4, 2, 3, 3)], {}, "kernel [3, 3] larger than padded input [2, 2]"),
    ("conv2d", [T(f32, 1, 2, 5, 5), T(f32, 4, 2, 3, 3)], {"stride": (1, 1, 1)},
     "attribute 'stride' needs 2 entries, got [1, 1, 1]"),
    ("conv2d", [T(f32, 2, 5, 5), T(f32, 4, 2, 3, 3)], {},
     "expects float NCHW input and OIHW weight, got f32[2,5,5] and f32[4,2,3,3]"),
    ("max_pool2d", [T(f32, 1, 2, 4, 4)], {"kernel": (2, 2), "padding": (2, 0)}, "padding must be at most half the kernel"),
    ("max_pool2d", [T(f32, 2, 4, 4)], {"kernel": (2, 2)}, "expects a float NCHW tensor, got f32[2,4,4]"),
    ("avg_pool2d", [T(f32, 1, 1, 2, 2)], {"kernel": (3, 3)}, "kernel [3, 3] larger than padded input [2, 2]"),
    ("avg_pool2d", [T(f32, 1, 1, 4, 4)], {"kernel": (2, 2), "stride": (1,)},
     "attribute 'stride' needs 2 entries, got [1]"),
    ("fused", [T(f32, 2, 3)], {}, "has no region"),
    ("fused", [T(f32, 2, 3)], {"label": 3}, "attribute 'label' expects str, got 3"),
    ("conv2d_input_grad", [T(f32, 1, 3, 3, 3), T(f32, 3, 2, 3, 3)], {"input_hw": (6, 5)},
     "gradient f32[1,3,3,3] does not match an input of size [6, 5] (the forward output would be [4, 3])"),
    ("conv2d_input_grad", [T(f32, 1, 4, 3, 3), T(f32, 3, 2, 3, 3)], {"input_hw": (5, 5)},
     "channels of f32[1,4,3,3] and f32[3,2,3,3] do not match groups=1"),
    ("conv2d_weight_grad", [T(f32, 1, 2, 5, 5), T(f32, 2, 3, 3, 3)], {"kernel_hw": (3, 3)},
     "expects float NCHW input and gradient of one batch, got f32[1,2,5,5] and f32[2,3,3,3]"),
    ("conv2d_weight_grad", [T(f32, 1, 2, 5, 5), T(f32, 1, 3, 3, 3)], {"kernel_hw": (3, 3), "groups": 2},
     "channels of f32[1,2,5,5] and f32[1,3,3,3] do not match groups=2"),
    ("max_pool2d_grad", [T(f32, 1, 2, 4, 4), T(f32, 1, 2, 3, 3)], {"kernel": (2, 2)},
     "gradient f32[1,2,3,3] does not match an input of size [4, 4] (the forward output would be [2, 2])"),
    ("max_pool2d_grad", [T(f32, 1, 2, 4, 4), T(f16, 1, 2, 2, 2)], {"kernel": (2, 2)},
     "input f32[1,2,4,4] and gradient f16[1,2,2,2] do not match"),
    ("avg_pool2d_grad", [T(i32, 1, 1, 2, 2)], {"kernel": (2, 2), "input_hw": (4, 4)},
     "expects a float NCHW gradient, got i32[1,1,2,2]"),
    ("pad", [T(f32, 2, 3)], {"low": (1,), "high": (0, 0)}, "low, high and interior need 2 entries each for f32[2,3]"),
    ("pad", [T(f32, 2, 3)], {"low": (1, -1), "high": (0, 0)}, "padding amounts must be non-negative"),
    ("scatter_add", [T(f32, 4, 3), T(f32, 4)], {"size": 5}, "indices must be integers, got f32[4]"),
    ("scatter_add", [T(f32, 4, 3), T(i32, 3)], {"size": 5},
     "updates f32[4,3] do not hold one slice per index of i32[3] at axis 0"),
    ("scatter_add", [T(f32, 4, 3), T(i32, 4)], {"axis": 2, "size": 5},
     "axis 2 or size 5 out of range for updates f32[4,3] and indices i32[4]"),
    ("scatter_add", [T(f32, 4, 3), T(i32, 4), T(f32, 4, 3)], {"size": 5},
     "base f32[4,3] is not of the result's type f32[5,3]"),
    ("dynamic_slice", [T(f32, 2, 5), T(i32, 3)], {"axis": 1, "size": 2},
     "starts must be an integer vector with one entry per row of axis 0 (2), got i32[3]"),
    ("dynamic_slice", [T(f32, 2, 5), T(i32, 2)], {"axis": 0, "size": 2},
     "axis 0 out of range for f32[2,5]: 1 <= axis < rank (axis 0 holds the rows)"),
    ("dynamic_slice", [T(f32, 2, 5), T(i32, 2)], {"axis": 1, "size": 6}, "size 6 out of range for axis 1 of f32[2,5]"),
    ("dynamic_update_slice", [T(f32, 2, 5, 3), T(f32, 2, 1, 2), T(i32, 2)], {"axis": 1},
     "update f32[2,1,2] does not fit f32[2,5,3] along axis 1"),
    ("dynamic_update_slice", [T(f32, 2, 5), T(f32, 2, 1), T(f32, 2)], {"axis": 1},
     "starts must be an integer vector with one entry per row of axis 0 (2), got f32[2]"),
]


@pytest.mark.parametrize("name,types,attrs,message", TYPE_ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(TYPE_ERRORS)])
def test_type_rule_errors(name, types, attrs, message):
    operands = [Value(t, name=f"x{i}") for i, t in enumerate(types)]
    with pytest.raises(VerifyError) as info:
        make_op(name, operands, attrs)
    assert info.value.message == f"'{name}': {message}"


@pytest.mark.parametrize("region_types,message", [
    ([T(f32, 2, 3)], "region takes 1 arguments but the op has 2 operands"),
    ([T(f32, 2, 3), T(f32, 2)], "region argument 1 is f32[2] but operand 1 is f32[3]"),
])
def test_fused_region_type_errors(region_types, message):
    region = Region([Value(t) for t in region_types], results=[])
    region.results = [region.args[0]]
    operands = [Value(T(f32, 2, 3), name="a"), Value(T(f32, 3), name="b")]
    with pytest.raises(VerifyError) as info:
        make_op("fused", operands, {}, region=region)
    assert info.value.message == f"'fused': {message}"


# --- cost ----------------------------------------------------------------------------------
def _op(name, types, **attrs) -> Op:
    return make_op(name, [Value(t, name=f"x{i}") for i, t in enumerate(types)], attrs)


def test_matmul_cost():
    cost = lookup("matmul").cost(_op("matmul", [T(f32, 4, 2, 3), T(f32, 5, 3)], transpose_b=True))
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (2 * 4 * 2 * 5 * 3, 4 * 24 + 4 * 15, 4 * 40)
    cost = lookup("matmul").cost(_op("matmul", [T(bf16, 8, 16), T(bf16, 16, 32)]))
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (2 * 8 * 32 * 16, 2 * (128 + 512), 2 * 256)


def test_conv2d_cost():
    op = _op("conv2d", [T(f32, 2, 4, 8, 8), T(f32, 6, 2, 3, 3)], padding=(1, 1), groups=2)
    cost = lookup("conv2d").cost(op)
    assert op.result.type == T(f32, 2, 6, 8, 8)
    assert cost.flops == 2 * (2 * 6 * 8 * 8) * (2 * 3 * 3)
    assert (cost.bytes_read, cost.bytes_written) == (4 * (512 + 108), 4 * 768)


def test_elementwise_cost():
    cost = lookup("add").cost(_op("add", [T(f32, 4, 1), T(f32, 1, 8)]))
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (32, 16 + 32, 128)
    cost = lookup("exp").cost(_op("exp", [T(f16, 10)]))
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (4 * 10, 20, 20)
    cost = lookup("sum").cost(_op("sum", [T(f32, 6, 5)], axes=(1,)))
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (30, 120, 24)


def test_fused_cost_sums_its_region():
    _, op = build(CASES["fused"][0])
    inner = sum(lookup(o.name).cost(o).flops for o in op.region.ops)
    cost = lookup("fused").cost(op)
    a, v = (x.type for x in op.operands)
    assert cost.flops == inner == 6 + 6 + 6
    assert (cost.bytes_read, cost.bytes_written) == (a.nbytes + v.nbytes, a.nbytes + 2 * a.dtype.itemsize)
