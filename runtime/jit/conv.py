"""`conv2d` stages as a gemm over an implicit im2col matrix.

For image n and group g: out[n, g, o, (oh, ow)] = sum over (c, kh, kw) of
w[g, o, (c, kh, kw)] * x[n, g*Cg + c, oh*s0 + kh*d0 - p0, ow*s1 + kw*d1 - p1].
The gemm's packing loops read both matrices through `Decomposed` operands (a row
or column index split into digits with a stride each, plus padding bounds), so no
im2col buffer is ever written.
"""
from __future__ import annotations

import functools
from typing import Sequence

import attrs
import llvmlite.ir as ir

from backend.pef.stages import Conv2dInputGradStage, Conv2dStage, Conv2dWeightGradStage
from runtime.jit import codegen as cg
from runtime.jit.codegen import F32, i64
from runtime.jit.gemm import Gemm, emit_gemm
from runtime.jit.layout import Access, Expression, Index
from runtime.jit.module import KernelModule


@attrs.frozen
class Bound:
    """0 <= sum(row digit * row_coeffs) + sum(col digit * col_coeffs) + offset < limit."""

    row_coeffs: tuple[int, ...]
    col_coeffs: tuple[int, ...]
    offset: int
    limit: int


@attrs.frozen
class Decomposed:
    """A matrix whose row and column indices split into digits (mixed radix), each strided."""

    access: Access  # strides: batch strides only
    rows: tuple[tuple[int, int], ...]  # (extent, stride) per digit, most significant first
    cols: tuple[tuple[int, int], ...]
    bounds: tuple[Bound, ...] = ()

    def batch_strides(self) -> tuple[int, ...]:
        return self.access.strides

    def with_batch_strides(self, strides: Sequence[int]) -> Decomposed:
        return attrs.evolve(self, access=self.access.with_strides(strides))

    def base(self, b, batch):
        return cg.affine(b, self.access.offset, list(zip(batch, self.access.strides)))

    def load(self, b, ptrs, base, row, col):
        row_digits = cg.unravel(b, row, [e for e, _ in self.rows])
        col_digits = cg.unravel(b, col, [e for e, _ in self.cols])
        index = b.add(base, cg.affine(b, 0, [*zip(row_digits, (s for _, s in self.rows)),
                                             *zip(col_digits, (s for _, s in self.cols))]))
        inside = ir.Constant(cg.I1, 1)
        for bound in self.bounds:
            pos = cg.affine(b, bound.offset, [*zip(row_digits, bound.row_coeffs), *zip(col_digits, bound.col_coeffs)])
            ok = b.and_(b.icmp_signed(">=", pos, i64(0)), b.icmp_signed("<", pos, i64(bound.limit)))
            inside = b.and_(inside, ok)
        if not self.bounds:
            return cg.load(b, ptrs[self.access.arg], index, self.access.dtype)
        # a masked-off element reads element 0 instead (always in the buffer)
        value = cg.load(b, ptrs[self.access.arg], b.select(inside, index, i64(0)), self.access.dtype)
        return b.select(inside, value, ir.Constant(F32, 0.0))


def conv_gemm(stage: Conv2dStage, x: Access, w: Access, out: Access) -> Gemm:
    """The conv as a gemm batched over (n, g); the epilogue is bound separately."""
    n, c, h, wd = stage.x_shape
    o, cg_, kh, kw = stage.w_shape
    g = stage.groups
    og = o // g
    (s0, s1), (p0, p1), (d0, d1) = stage.stride, stage.padding, stage.dilation
    oh = (h + 2 * p0 - d0 * (kh - 1) - 1) // s0 + 1
    ow = (wd + 2 * p1 - d1 * (kw - 1) - 1) // s1 + 1
    xs, ws = x.strides, w.strides
    weights = Decomposed(w.with_strides((0, og * ws[0])), ((og, ws[0]),),
                         ((cg_, ws[1]), (kh, ws[2]), (kw, ws[3])))
    image = Decomposed(
        attrs.evolve(x, offset=x.offset - p0 * xs[2] - p1 * xs[3], strides=(xs[0], cg_ * xs[1])),
        ((cg_, xs[1]), (kh, d0 * xs[2]), (kw, d1 * xs[3])), ((oh, s0 * xs[2]), (ow, s1 * xs[3])),
        (Bound((0, d0, 0), (s0, 0), -p0, h), Bound((0, 0, d1), (0, s1), -p1, wd)))
    out = out.with_strides((o * oh * ow, og * oh * ow, oh * ow, 1))
    return Gemm((n, g), og, oh * ow, cg_ * kh * kw, weights, image, out)


@attrs.frozen
class SplitColumn:
    """An epilogue leaf (a read or an index) whose output rows and columns do not merge into the
    gemm's column `oh * OW + ow`, say a value broadcast along the rows: its strides are over the
    gemm's indices plus `oh`, which `load` takes from the column."""

    leaf: Access | Index  # strides: (n, g, o, column, oh)
    width: int  # OW

    @property
    def arg(self) -> int:
        return self.leaf.arg

    @property
    def strides(self) -> tuple[int, ...]:
        return self.leaf.strides[:-1]

    def with_strides(self, strides: Sequence[int]) -> SplitColumn:
        return attrs.evolve(self, leaf=self.leaf.with_strides((*strides, self.leaf.strides[-1])))

    def load(self, b: ir.IRBuilder, ptrs: Sequence[ir.Value], indices: Sequence[ir.Value]) -> ir.Value:
        return self.leaf.load(b, ptrs, [*indices, b.udiv(indices[-1], i64(self.width))])


def _epilogue_leaf(leaf: Access | Index, og: int, oh: int, ow: int) -> Access | Index | SplitColumn:
    """A leaf over (N, O, OH, OW) as one over the gemm's (n, g, o, oh*ow): the column's stride is
    the OW stride, and when OH's stride is not OW times it, each row adds the difference."""
    sn, so, sh, sw = leaf.strides
    merged = leaf.with_strides((sn, og * so, so, sw if ow > 1 else sh))
    if sh == ow * sw or oh == 1 or ow == 1:
        return merged
    return SplitColumn(merged.with_strides((*merged.strides, sh - ow * sw)), ow)


def lower_conv2d(km: KernelModule, name: str, stage: Conv2dStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent."""
    x, w = km.access(stage.x), km.access(stage.w)
    gemm = conv_gemm(stage, x, w, km.whole(stage.out))
    if stage.epilogue is not None:
        n, o, oh, ow = km.buffer(stage.out).shape
        expression = km.expression(stage.epilogue)
        bind = functools.partial(_epilogue_leaf, og=o // stage.groups, oh=oh, ow=ow)
        epilogue = Expression(expression.nodes, tuple(map(bind, expression.reads)),
                              tuple(map(bind, expression.indices)))
        gemm = attrs.evolve(gemm, epilogue=epilogue)
    return emit_gemm(km, name, gemm)


@attrs.frozen
class TransposedWindow:
    """conv2d_input_grad's right operand: rows (o, kh, kw), columns (h, w) of the input.

    Element = g[o, oh, ow] where h + p0 - kh*d0 = oh*s0 and w + p1 - kw*d1 = ow*s1
    (zero when no such in-range output position exists).
    """

    access: Access  # strides: batch strides only
    kernel: tuple[int, int, int]  # (Og, KH, KW)
    image: tuple[int, int]  # (H, W)
    grad: tuple[int, int]  # (OH, OW)
    grad_strides: tuple[int, int, int]  # of g along (o, oh, ow)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def batch_strides(self) -> tuple[int, ...]:
        return self.access.strides

    def with_batch_strides(self, strides: Sequence[int]) -> TransposedWindow:
        return attrs.evolve(self, access=self.access.with_strides(strides))

    def base(self, b, batch):
        return cg.affine(b, self.access.offset, list(zip(batch, self.access.strides)))

    def load(self, b, ptrs, base, row, col):
        o, kh, kw = cg.unravel(b, row, self.kernel)
        h, w = cg.unravel(b, col, self.image)
        inside = ir.Constant(cg.I1, 1)
        positions = []
        for pos, k, s, p, d, limit in ((h, kh, self.stride[0], self.padding[0], self.dilation[0], self.grad[0]),
                                       (w, kw, self.stride[1], self.padding[1], self.dilation[1], self.grad[1])):
            shifted = b.sub(b.add(pos, i64(p)), b.mul(k, i64(d)))
            quotient = b.sdiv(shifted, i64(s))
            ok = b.and_(b.icmp_signed(">=", shifted, i64(0)),
                        b.and_(b.icmp_signed("==", b.srem(shifted, i64(s)), i64(0)),
                               b.icmp_signed("<", quotient, i64(limit))))
            inside = b.and_(inside, ok)
            positions.append(quotient)
        index = b.add(base, cg.affine(b, 0, list(zip([o, *positions], self.grad_strides))))
        value = cg.load(b, ptrs[self.access.arg], b.select(inside, index, i64(0)), self.access.dtype)
        return b.select(inside, value, ir.Constant(F32, 0.0))


def lower_conv2d_input_grad(km: KernelModule, name: str, stage: Conv2dInputGradStage) -> int:
    """dx[n, g, c, (h, w)] = sum over (o, kh, kw) of w[g, o, c, kh, kw] * window(g)[(o, kh, kw), (h, w)]."""
    g_acc, w = km.access(stage.g), km.access(stage.w)
    n, _, h, wd = km.buffer(stage.out).shape
    o, cgr, kh, kw = stage.w_shape
    groups = stage.groups
    og = o // groups
    _, _, oh, ow = stage.g_shape
    ws, gs = w.strides, g_acc.strides
    weights = Decomposed(w.with_strides((0, og * ws[0])), ((cgr, ws[1]),), ((og, ws[0]), (kh, ws[2]), (kw, ws[3])))
    window = TransposedWindow(g_acc.with_strides((gs[0], og * gs[1])), (og, kh, kw), (h, wd), (oh, ow),
                              (gs[1], gs[2], gs[3]), tuple(stage.stride), tuple(stage.padding), tuple(stage.dilation))
    out = km.whole(stage.out).with_strides((groups * cgr * h * wd, cgr * h * wd, h * wd, 1))
    return emit_gemm(km, name, Gemm((n, groups), cgr, h * wd, og * kh * kw, weights, window, out))


def lower_conv2d_weight_grad(km: KernelModule, name: str, stage: Conv2dWeightGradStage) -> int:
    """dw[g, o, (c, kh, kw)] = sum over (n, oh, ow) of g[n, g, o, (oh, ow)] * im2col(x)[(n, oh, ow), (c, kh, kw)]."""
    x, g_acc = km.access(stage.x), km.access(stage.g)
    o, cgr, kh, kw = km.buffer(stage.out).shape
    groups = stage.groups
    og = o // groups
    n, _, h, wd = stage.x_shape
    _, _, oh, ow = stage.g_shape
    (s0, s1), (p0, p1), (d0, d1) = stage.stride, stage.padding, stage.dilation
    xs, gs = x.strides, g_acc.strides
    grads = Decomposed(g_acc.with_strides((og * gs[1],)), ((og, gs[1]),), ((n, gs[0]), (oh, gs[2]), (ow, gs[3])))
    image = Decomposed(
        attrs.evolve(x, offset=x.offset - p0 * xs[2] - p1 * xs[3], strides=(cgr * xs[1],)),
        ((n, xs[0]), (oh, s0 * xs[2]), (ow, s1 * xs[3])), ((cgr, xs[1]), (kh, d0 * xs[2]), (kw, d1 * xs[3])),
        (Bound((0, s0, 0), (0, d0, 0), -p0, h), Bound((0, 0, s1), (0, 0, d1), -p1, wd)))
    out = km.whole(stage.out).with_strides((og * cgr * kh * kw, cgr * kh * kw, 1))
    return emit_gemm(km, name, Gemm((groups,), og, cgr * kh * kw, n * oh * ow, grads, image, out))
