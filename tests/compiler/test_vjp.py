"""Every differentiable op's VJP against float64 central finite differences.

Each case builds one op on f32-typed inputs, builds its VJP with a Builder, and runs
both with the ops' numpy `ref` on float64 arrays. The VJP's gradient for each float
operand must match the finite differences of <g, f(x)> element by element.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autodiff_helpers import run_f64
from ir.builder import Builder
from ir.dtypes import DType
from ir.graph import Op, Value
from ir.ops import REGISTRY, lookup
from ir.types import TensorType

f32, f16, i32 = DType.f32, DType.f16, DType.i32


@dataclasses.dataclass
class Case:
    """Operands (float64 for float operands), attributes, FD step and tolerance."""

    args: list[np.ndarray]
    attrs: dict = dataclasses.field(default_factory=dict)
    h: float = 1e-6
    rtol: float = 1e-5

    def __post_init__(self):
        self.args = [np.asarray(a) for a in self.args]


Draw = Callable[[st.SearchStrategy], object]
CASES: dict[str, Callable[[Draw], Case]] = {}


def case(*names: str):
    def register(fn):
        for name in names:
            CASES[name] = (lambda n: lambda draw: fn(draw, n))(name)
        return fn
    return register


# --- value helpers ---------------------------------------------------------------------
def rng(draw: Draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def shape(draw: Draw, min_rank: int = 0, max_rank: int = 3, max_dim: int = 4) -> tuple[int, ...]:
    return tuple(draw(st.lists(st.integers(1, max_dim), min_size=min_rank, max_size=max_rank)))


def normal(r: np.random.Generator, shape) -> np.ndarray:
    return r.standard_normal(shape)


def away_from_zero(r: np.random.Generator, shape) -> np.ndarray:
    return r.choice([-1.0, 1.0], shape) * r.uniform(0.2, 2.0, shape)


def distinct(r: np.random.Generator, shape) -> np.ndarray:
    """Values at least 0.1 apart (no ties, so max-like ops are smooth around them)."""
    size = math.prod(shape)
    return (r.permutation(size) * 0.1 + r.uniform(0.0, 0.02, size)).reshape(shape) - size * 0.05


def broadcast_partner(draw: Draw, out: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to `out`: some leading axes dropped, some axes set to 1."""
    drop = draw(st.integers(0, len(out)))
    return tuple(1 if draw(st.booleans()) else d for d in out[drop:])


# --- cases -----------------------------------------------------------------------------
@case("neg", "exp", "tanh", "sin", "cos", "erf", "sigmoid", "silu")
def _smooth_unary(draw, name):
    return Case([normal(rng(draw), shape(draw))])


@case("log", "sqrt", "rsqrt")
def _positive_unary(draw, name):
    return Case([rng(draw).uniform(0.3, 3.0, shape(draw))])


@case("abs", "relu")
def _kinked_unary(draw, name):
    return Case([away_from_zero(rng(draw), shape(draw))])


@case("gelu")
def _gelu(draw, name):
    return Case([normal(rng(draw), shape(draw)) * 2], {"approximate": draw(st.sampled_from(["tanh", "none"]))})


@case("cast")
def _cast(draw, name):
    dtype = draw(st.sampled_from([f32, f16]))
    # the forward rounds to the target type: the step must dwarf its rounding error
    return Case([normal(rng(draw), shape(draw))], {"dtype": dtype}, h=1e-3 if dtype == f32 else 0.1,
                rtol=1e-3 if dtype == f32 else 3e-2)


def _binary_shapes(draw):
    out = shape(draw, 0, 3)
    return (broadcast_partner(draw, out), out) if draw(st.booleans()) else (out, broadcast_partner(draw, out))


@case("add", "sub", "mul")
def _binary(draw, name):
    r = rng(draw)
    a, b = _binary_shapes(draw)
    return Case([normal(r, a), normal(r, b)])


@case("div")
def _div(draw, name):
    r = rng(draw)
    a, b = _binary_shapes(draw)
    return Case([normal(r, a), away_from_zero(r, b)])


@case("pow")
def _pow(draw, name):
    r = rng(draw)
    a, b = _binary_shapes(draw)
    return Case([r.uniform(0.5, 2.0, a), r.uniform(-2.0, 2.0, b)])


@case("maximum", "minimum")
def _extremum(draw, name):
    r = rng(draw)
    a, b = _binary_shapes(draw)
    # x = 0.1 and y = 0.35 (mod 0.5): never within 0.25 of each other
    return Case([r.integers(-4, 4, a) * 0.5 + 0.1, r.integers(-4, 4, b) * 0.5 + 0.35])


@case("where")
def _where(draw, name):
    r = rng(draw)
    out = shape(draw, 0, 3)
    shapes = [broadcast_partner(draw, out) for _ in range(3)]
    shapes[draw(st.integers(0, 2))] = out
    return Case([r.random(shapes[0]) < 0.5, normal(r, shapes[1]), normal(r, shapes[2])])


def _axes(draw, rank: int):
    if rank == 0 or draw(st.booleans()):
        return None
    return tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))


@case("sum", "mean")
def _reduce(draw, name):
    x = normal(rng(draw), shape(draw, 1, 3))
    return Case([x], {"axes": _axes(draw, x.ndim), "keepdims": draw(st.booleans())})


@case("max")
def _max(draw, name):
    x = distinct(rng(draw), shape(draw, 1, 3))
    return Case([x], {"axes": _axes(draw, x.ndim), "keepdims": draw(st.booleans())})


@case("softmax", "log_softmax")
def _softmax(draw, name):
    x = normal(rng(draw), shape(draw, 1, 3)) * 2
    return Case([x], {"axis": draw(st.integers(-x.ndim, x.ndim - 1))})


@case("matmul")
def _matmul(draw, name):
    r = rng(draw)
    m, n, k = (draw(st.integers(1, 4)) for _ in range(3))
    batch = shape(draw, 0, 2, 3)
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = (k, m) if ta else (m, k)
    b = (n, k) if tb else (k, n)
    a_batch, b_batch = (batch, broadcast_partner(draw, batch)) if draw(st.booleans()) else \
        (broadcast_partner(draw, batch), batch)
    return Case([normal(r, a_batch + a), normal(r, b_batch + b)], {"transpose_a": ta, "transpose_b": tb})


@case("layer_norm", "rms_norm")
def _norm(draw, name):
    r = rng(draw)
    x = normal(r, shape(draw, 0, 2) + (draw(st.integers(2, 6)),)) * 2 + 0.5
    params = [normal(r, x.shape[-1:]) for _ in range(2 if name == "layer_norm" else 1)]
    return Case([x, *params], {"eps": draw(st.sampled_from([1e-5, 1e-2]))})


@case("cross_entropy")
def _cross_entropy(draw, name):
    r = rng(draw)
    lead = shape(draw, 1, 2)
    classes = draw(st.integers(2, 6))
    args = [normal(r, lead + (classes,)) * 2, r.integers(0, classes, lead).astype(np.int32)]
    mask = draw(st.sampled_from(["none", "bool", "float"]))
    if mask == "bool":
        args.append(r.random(lead) < 0.7)
    elif mask == "float":
        weights = r.uniform(0.05, 1.0, lead)
        assume(abs(weights.sum() - 1.0) > 0.05)  # max(total, 1) has a kink at 1
        args.append(weights)
    return Case(args)


def _conv_setup(draw):
    """Shapes and attributes of a small valid conv2d."""
    groups = draw(st.integers(1, 2))
    n, cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    attrs = {"stride": (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
             "padding": (draw(st.integers(0, 1)), draw(st.integers(0, 1))),
             "dilation": (draw(st.integers(1, 2)), draw(st.integers(1, 2))), "groups": groups}
    span = [(k - 1) * d + 1 for k, d in zip((kh, kw), attrs["dilation"])]
    hw = tuple(max(s - 2 * p, 1) + draw(st.integers(0, 3)) for s, p in zip(span, attrs["padding"]))
    out = tuple((x + 2 * p - s) // st_ + 1 for x, p, s, st_ in zip(hw, attrs["padding"], span, attrs["stride"]))
    x_shape, w_shape = (n, groups * cg, *hw), (groups * og, cg, kh, kw)
    return x_shape, w_shape, (n, groups * og, *out), attrs


@case("conv2d")
def _conv2d(draw, name):
    r = rng(draw)
    x, w, _, attrs = _conv_setup(draw)
    return Case([normal(r, x), normal(r, w)], attrs)


@case("conv2d_input_grad")
def _conv2d_input_grad(draw, name):
    r = rng(draw)
    x, w, g, attrs = _conv_setup(draw)
    return Case([normal(r, g), normal(r, w)], {**attrs, "input_hw": x[2:]})


@case("conv2d_weight_grad")
def _conv2d_weight_grad(draw, name):
    r = rng(draw)
    x, w, g, attrs = _conv_setup(draw)
    return Case([normal(r, x), normal(r, g)], {**attrs, "kernel_hw": w[2:]})


def _pool_setup(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.none() | st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    hw = tuple(k + draw(st.integers(0, 3)) for k in kernel)
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *hw)
    return x_shape, {"kernel": kernel, "stride": stride, "padding": padding}


def _pool_out(x_shape, attrs):
    stride = attrs["stride"] or attrs["kernel"]
    return x_shape[:2] + tuple((x + 2 * p - k) // s + 1 for x, p, k, s in
                               zip(x_shape[2:], attrs["padding"], attrs["kernel"], stride))


@case("max_pool2d")
def _max_pool(draw, name):
    x_shape, attrs = _pool_setup(draw)
    return Case([distinct(rng(draw), x_shape)], attrs)


@case("avg_pool2d")
def _avg_pool(draw, name):
    x_shape, attrs = _pool_setup(draw)
    return Case([normal(rng(draw), x_shape)], attrs)


@case("avg_pool2d_grad")
def _avg_pool_grad(draw, name):
    x_shape, attrs = _pool_setup(draw)
    return Case([normal(rng(draw), _pool_out(x_shape, attrs))], {**attrs, "input_hw": x_shape[2:]})


@case("reshape")
def _reshape(draw, name):
    x = normal(rng(draw), shape(draw))
    target = draw(st.sampled_from([(x.size,), x.shape[::-1], (1,) + x.shape, (x.size, 1)]))
    return Case([x], {"shape": target})


@case("transpose")
def _transpose(draw, name):
    x = normal(rng(draw), shape(draw, 1, 4))
    return Case([x], {"perm": tuple(draw(st.permutations(range(x.ndim))))})


@case("broadcast_to")
def _broadcast_to(draw, name):
    out = shape(draw, 0, 3)
    return Case([normal(rng(draw), broadcast_partner(draw, out))], {"shape": out})


@case("slice")
def _slice(draw, name):
    x = normal(rng(draw), shape(draw, 1, 3, 5))
    starts = tuple(draw(st.integers(0, d - 1)) for d in x.shape)
    stops = tuple(draw(st.integers(lo + 1, d)) for lo, d in zip(starts, x.shape))
    steps = draw(st.none() | st.tuples(*(st.integers(1, 3) for _ in x.shape)))
    return Case([x], {"starts": starts, "stops": stops, "steps": steps})


@case("concat")
def _concat(draw, name):
    r = rng(draw)
    base = shape(draw, 1, 3)
    axis = draw(st.integers(0, len(base) - 1))
    parts = [tuple(draw(st.integers(1, 3)) if i == axis else d for i, d in enumerate(base))
             for _ in range(draw(st.integers(1, 3)))]
    return Case([normal(r, p) for p in parts], {"axis": axis - len(base) * draw(st.integers(0, 1))})


@case("all_reduce")
def _all_reduce(draw, name):
    op = draw(st.sampled_from(["sum", "mean"]))
    return Case([normal(rng(draw), shape(draw))], {"op": op, "group": "data", "world_size": draw(st.integers(1, 4))})


@case("gather")
def _gather(draw, name):
    r = rng(draw)
    table = normal(r, shape(draw, 1, 3))
    axis = draw(st.integers(0, table.ndim - 1))
    indices = r.integers(0, table.shape[axis], shape(draw, 0, 2)).astype(np.int32)
    return Case([table, indices], {"axis": axis})


@case("scatter_add")
def _scatter_add(draw, name):
    r = rng(draw)
    table = shape(draw, 1, 3)
    axis = draw(st.integers(0, len(table) - 1))
    indices = r.integers(0, table[axis], shape(draw, 0, 2)).astype(np.int32)
    updates = normal(r, table[:axis] + indices.shape + table[axis + 1:])
    base = [normal(r, table)] if draw(st.booleans()) else []
    return Case([updates, indices, *base], {"axis": axis, "size": table[axis]})


@case("dynamic_slice", "dynamic_update_slice")
def _dynamic(draw, name):
    """One start per row; some windows run past either end of the axis."""
    r = rng(draw)
    x = normal(r, shape(draw, 2, 4))
    axis = draw(st.integers(1, x.ndim - 1))
    size = draw(st.integers(1, x.shape[axis]))
    starts = r.integers(-size, x.shape[axis] + 1, x.shape[0]).astype(np.int32)
    if name == "dynamic_slice":
        return Case([x, starts], {"axis": axis, "size": size})
    update = normal(r, x.shape[:axis] + (size,) + x.shape[axis + 1:])
    return Case([x, update, starts], {"axis": axis})

@case("pad")
def _pad(draw, name):
    x = normal(rng(draw), shape(draw, 0, 3))
    pads = [tuple(draw(st.integers(0, 2)) for _ in x.shape) for _ in range(3)]
    return Case([x], {"low": pads[0], "high": pads[1], "interior": pads[2], "value": draw(st.sampled_from([0.0, 1.5]))})


# --- the check -------------------------------------------------------------------------
def build(name: str, c: Case) -> tuple[list[Op], list[Value], list[Value | None]]:
    """[the op, then its VJP's ops], cotangent inputs, and the VJP's operand gradients."""
    b = Builder()
    xs = [b.input(f"x{i}", TensorType(a.shape, f32 if a.dtype == np.float64 else DType.of(a)))
          for i, a in enumerate(c.args)]
    b.op(name, *xs, **c.attrs)
    gs = [b.input(f"g{i}", r.type) for i, r in enumerate(b.ops[0].results)]
    return b.ops, gs, lookup(name).vjp(b, b.ops[0], gs)


def numeric_gradient(op: Op, c: Case, i: int, cotangents: list[np.ndarray]) -> np.ndarray:
    """d<g, f(x)>/dx_i by central differences, element by element."""
    x = c.args[i]
    out = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        values = []
        for sign in (1.0, -1.0):
            args = list(c.args)
            args[i] = x.copy()
            args[i][j] += sign * c.h
            env = dict(zip(op.operands, args))
            run_f64([op], env)
            values.append(sum(float(np.sum(g * env[y])) for g, y in zip(cotangents, op.results)))
        out[j] = (values[0] - values[1]) / (2 * c.h)
    return out


def check_vjp(name: str, c: Case, seed: int = 0) -> None:
    ops, gs, vjp = build(name, c)
    op = ops[0]
    assert len(vjp) == len(op.operands)
    cotangents = [np.random.default_rng(seed).standard_normal(v.type.shape) for v in gs]
    env = dict(zip(op.operands, c.args)) | dict(zip(gs, cotangents))
    with np.errstate(all="ignore"):
        run_f64(ops, env)
    for i, (x, grad) in enumerate(zip(c.args, vjp)):
        if x.dtype != np.float64:
            assert grad is None, f"operand {i} of '{name}' is not float but got a gradient"
            continue
        assert grad is not None and grad.type == op.operands[i].type
        scale = max(1.0, float(np.abs(env[grad]).max(initial=0.0)))
        np.testing.assert_allclose(env[grad], numeric_gradient(op, c, i, cotangents), rtol=c.rtol,
                                   atol=c.rtol * scale, err_msg=f"gradient of operand {i} of '{name}'")


# --- tests -----------------------------------------------------------------------------
#: ops declared differentiable that have no VJP of their own, and why
WITHOUT_VJP = {"fused": "autodiff inlines fused regions (tests/compiler/test_autodiff.py)"}


def test_every_differentiable_op_has_a_vjp_and_a_case():
    differentiable = {name for name, d in REGISTRY.items() if d.differentiable}
    missing_vjp = sorted(n for n in differentiable - set(WITHOUT_VJP) if lookup(n).vjp is None)
    assert not missing_vjp, f"differentiable ops without a VJP: {missing_vjp}"
    missing_case = sorted(differentiable - set(CASES) - set(WITHOUT_VJP))
    assert not missing_case, f"differentiable ops without a finite-difference case: {missing_case}"
    assert not set(CASES) - differentiable, "cases for ops not declared differentiable"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_vjp_matches_finite_differences(name, data):
    check_vjp(name, CASES[name](data.draw))
