"""Vectorizable f32 transcendental functions emitted as branch-free LLVM IR.

Calls to libm would stop LLVM's loop vectorizer, so exp, log, tanh, erf, sin and
cos are polynomial approximations (Cephes' for exp/log/tanh/sin/cos; erf is a
least-squares fit on Chebyshev nodes: erf(x) = x*P(x^2) on [0, 1], 1 - exp(Q(x)) on
[1, 4], 1 beyond) built from selects, so an inlined call vectorizes. Each is within
3 ulp of the exact result (sin and cos: 4 ulp, or 2.5e-7 near their zeros); special values (nan, +-inf, +-0, subnormals, negative
log arguments) follow libm. sin and cos reduce their argument with Cephes'
three-part pi/4 (accurate for |x| < 8192, as Cephes' sinf; larger arguments give
values in [-1, 1] of lower accuracy). `pow` calls libm's `powf`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import llvmlite.ir as ir

from runtime.jit.codegen import F32, I32, intrinsic, internal_function

FAST = ("contract",)

EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
         1.6666665459e-1, 5.0000001201e-1)
LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
         1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
         3.3333331174e-1)
TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
          -3.33332819422e-1)
SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
#: erf(x)/x as a polynomial in x^2 on [0, 1] (lowest degree first)
ERF_SMALL = (1.1283791065216064, -0.37612414360046387, 0.11280789226293564,
             -0.026726989075541496, 0.004934518598020077, -0.0005696712760254741)
#: log(erfc(x)) as a polynomial in x on [1, 4] (lowest degree first)
ERFC_LOG = (0.0003032129898201674, -1.1301666498184204, -0.6319370865821838,
            -0.10997824370861053, 0.02636471763253212, -0.004740222357213497,
            0.0005927695310674608, -4.559062290354632e-05, 1.6140616025950294e-06)


def c(value: float) -> ir.Constant:
    return ir.Constant(F32, value)


def _i(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


class _Ops:
    """Float arithmetic with contraction allowed, on one builder."""

    def __init__(self, b: ir.IRBuilder):
        self.b = b

    def add(self, x, y):
        return self.b.fadd(x, y, flags=FAST)

    def sub(self, x, y):
        return self.b.fsub(x, y, flags=FAST)

    def mul(self, x, y):
        return self.b.fmul(x, y, flags=FAST)

    def horner(self, coeffs: Sequence[float], x: ir.Value) -> ir.Value:
        """coeffs[0]*x^(n-1) + ... + coeffs[-1] (highest degree first)."""
        acc = c(coeffs[0])
        for coeff in coeffs[1:]:
            acc = self.add(self.mul(acc, x), c(coeff))
        return acc

    def select(self, cond, x, y):
        return self.b.select(cond, x, y)

    def lt(self, x, y):
        return self.b.fcmp_ordered("<", x, y)

    def is_nan(self, x):
        return self.b.fcmp_unordered("uno", x, x)

    def abs(self, x):
        return intrinsic(self.b, "llvm.fabs", x)

    def copysign(self, magnitude, sign):
        return intrinsic(self.b, "llvm.copysign", magnitude, sign)


#: below this (-150 ln 2) exp(x) rounds to zero
VANISHES_BELOW = -103.972084


def _exp(o: _Ops, x: ir.Value) -> ir.Value:
    """exp; lanes whose result rounds to zero compute exp(0) and select zero, so that no multiply
    makes a denormal (one costs a microcode assist on Intel cores: a softmax of a causally masked
    row, mostly exp(-inf), ran 9x slower)."""
    b = o.b
    vanishes = o.lt(x, c(VANISHES_BELOW))
    clamped = intrinsic(b, "llvm.minnum", o.select(vanishes, c(0.0), x), c(89.0))
    n = intrinsic(b, "llvm.rint", o.mul(clamped, c(1.44269504088896341)))
    r = o.sub(o.sub(clamped, o.mul(n, c(0.693359375))), o.mul(n, c(-2.12194440e-4)))
    p = o.add(o.add(o.mul(o.horner(EXP_P, r), o.mul(r, r)), r), c(1.0))
    # 2**n as two factors so that n in [-150, 128] neither overflows nor flushes early
    ni = b.fptosi(n, I32)
    half = b.ashr(ni, _i(1))
    scale1 = b.bitcast(b.shl(b.add(half, _i(127)), _i(23)), F32)
    scale2 = b.bitcast(b.shl(b.add(b.sub(ni, half), _i(127)), _i(23)), F32)
    return o.select(o.is_nan(x), x, o.select(vanishes, c(0.0), o.mul(o.mul(p, scale1), scale2)))


def _log(o: _Ops, x: ir.Value) -> ir.Value:
    b = o.b
    tiny = o.lt(x, c(1.1754943508222875e-38))  # subnormal: scale up by 2**23 first
    scaled = o.select(tiny, o.mul(x, c(8388608.0)), x)
    bits = b.bitcast(scaled, I32)
    exponent = b.sub(b.lshr(bits, _i(23)), b.select(tiny, _i(126 + 23), _i(126)))
    mant = b.bitcast(b.or_(b.and_(bits, _i(0x007FFFFF)), _i(0x3F000000)), F32)  # [0.5, 1)
    small = o.lt(mant, c(0.707106781186547524))
    e = b.sitofp(b.sub(exponent, b.zext(small, I32)), F32)
    m = o.sub(o.select(small, o.add(mant, mant), mant), c(1.0))
    z = o.mul(m, m)
    y = o.mul(o.mul(o.horner(LOG_P, m), m), z)
    y = o.add(y, o.mul(e, c(-2.12194440e-4)))
    y = o.sub(y, o.mul(z, c(0.5)))
    result = o.add(o.add(m, y), o.mul(e, c(0.693359375)))
    result = o.select(b.fcmp_ordered("==", x, c(math.inf)), x, result)
    result = o.select(b.fcmp_ordered("==", x, c(0.0)), c(-math.inf), result)
    return o.select(b.fcmp_unordered("<", x, c(0.0)), c(math.nan), result)


def _tanh(o: _Ops, x: ir.Value) -> ir.Value:
    a = o.abs(x)
    z = o.mul(x, x)
    small = o.add(o.mul(o.mul(o.horner(TANH_P, z), z), x), x)
    e = _exp(o, o.add(a, a))
    large = o.sub(c(1.0), o.b.fdiv(c(2.0), o.add(e, c(1.0))))
    return o.copysign(o.select(o.lt(a, c(0.625)), small, large), x)


def _erf(o: _Ops, x: ir.Value) -> ir.Value:
    a = o.abs(x)
    small = o.mul(a, o.horner(ERF_SMALL[::-1], o.mul(a, a)))
    mid = o.sub(c(1.0), _exp(o, o.horner(ERFC_LOG[::-1], a)))
    magnitude = o.select(o.lt(a, c(1.0)), small, o.select(o.lt(a, c(4.0)), mid, c(1.0)))
    return o.select(o.is_nan(x), x, o.copysign(magnitude, x))


def _sincos(o: _Ops, x: ir.Value, cosine: bool) -> ir.Value:
    b = o.b
    a = o.abs(x)
    q = intrinsic(b, "llvm.trunc", o.mul(a, c(1.27323954473516)))
    octant = o.sub(q, o.mul(c(8.0), intrinsic(b, "llvm.floor", o.mul(q, c(0.125)))))  # exact, in [0, 8)
    j = b.fptosi(octant, I32)
    odd = b.and_(j, _i(1))
    j = b.and_(b.add(j, odd), _i(7))  # round up to even: octant pairs
    y = o.add(q, b.sitofp(odd, F32))
    r = o.sub(o.sub(o.sub(a, o.mul(y, c(0.78515625))), o.mul(y, c(2.4187564849853515625e-4))),
              o.mul(y, c(3.77489497744594108e-8)))
    r = intrinsic(b, "llvm.maxnum", intrinsic(b, "llvm.minnum", r, c(0.7853982)), c(-0.7853982))
    z = o.mul(r, r)
    sin_poly = o.add(o.mul(o.mul(o.horner(SIN_P, z), z), r), r)
    cos_poly = o.add(o.sub(o.mul(o.mul(o.horner(COS_P, z), z), z), o.mul(z, c(0.5))), c(1.0))
    if cosine:
        j = b.add(j, _i(2))
    swap = b.icmp_unsigned("!=", b.and_(j, _i(2)), _i(0))
    value = o.select(swap, cos_poly, sin_poly)
    negate = b.icmp_unsigned("!=", b.and_(j, _i(4)), _i(0))
    if not cosine:  # sin is odd: the sign bit of x (-0.0 included) flips it
        negate = b.xor(negate, b.icmp_signed("<", b.bitcast(x, I32), _i(0)))
    value = o.select(negate, b.fneg(value), value)
    invalid = b.or_(o.is_nan(x), b.fcmp_ordered("==", a, c(math.inf)))
    return o.select(invalid, c(math.nan), value)


_BODIES: dict[str, Callable[[_Ops, ir.Value], ir.Value]] = {
    "exp": _exp, "log": _log, "tanh": _tanh, "erf": _erf,
    "sin": lambda o, x: _sincos(o, x, False), "cos": lambda o, x: _sincos(o, x, True),
}


def call(b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """Call math function `name` on f32 values, defining it in the module on first use."""
    if name == "pow":
        module = b.module
        powf = module.globals.get("powf") or ir.Function(module, ir.FunctionType(F32, [F32, F32]), "powf")
        return b.call(powf, list(args))
    fn, needs_body = internal_function(b.module, f"rduflow.{name}f", F32, [F32])
    if needs_body:
        inner = ir.IRBuilder(fn.append_basic_block("entry"))
        inner.ret(_BODIES[name](_Ops(inner), fn.args[0]))
    return b.call(fn, list(args))
