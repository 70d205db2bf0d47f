"""Convolution stages: `conv2d` and its two gradients, NCHW with OIHW weights, as PyTorch."""
from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Body, Buffer, ints, nonneg_all, pair, positive, positive_all
from backend.pef.reference import crop, padded, window_starts, windows
from backend.pef.stages.base import StageKind, declare


def span(out: int, kernel: int, stride: int, dilation: int) -> int:
    """Input rows a window op's tile of `out` rows and `kernel` taps reads."""
    return stride * (out - 1) + dilation * (kernel - 1) + 1


class _Conv(StageKind):
    """What the three convolution stages share: the contracted axes (the last three of seven)."""

    def contracted(self, rank: int) -> tuple[int, ...]:
        return (rank - 3, rank - 2, rank - 1)


@declare
@attrs.frozen
class Conv2dStage(_Conv):
    """NCHW x [x_shape] and OIHW w [w_shape], stride/padding/dilation/groups as PyTorch; out is
    [N, O, OH, OW]. Loop nest (n, o, oh, ow, c/groups, kh, kw)."""

    kind: ClassVar[str] = "conv2d"
    ops: ClassVar[tuple[str, ...]] = ("conv2d",)
    out: str
    x: Access
    w: Access
    x_shape: tuple[int, ...] = ints(nonneg_all)
    w_shape: tuple[int, ...] = ints(nonneg_all)
    stride: tuple[int, ...] = ints(pair, positive_all)
    padding: tuple[int, ...] = ints(pair, nonneg_all)
    dilation: tuple[int, ...] = ints(pair, positive_all)
    groups: int = attrs.field(validator=positive)
    epilogue: Body | None = None

    def loop_nest(self, out_shape) -> tuple[int, ...]:
        return tuple(out_shape) + tuple(self.w_shape[1:])

    def work(self, buffers) -> int:
        return buffers[self.out].size * math.prod(self.w_shape[1:])

    def check(self, v, where, out: Buffer) -> str:
        if len(self.x_shape) != 4 or len(self.w_shape) != 4:
            raise v.fail(where, "x_shape and w_shape need 4 entries")
        n, c, h, w = self.x_shape
        o, cg, kh, kw = self.w_shape
        if c != cg * self.groups or o % self.groups:
            raise v.fail(where, f"channels {c} and {o} do not match groups={self.groups}")
        x = v.access(f"{where}.x", self.x, self.x_shape, used=out.size > 0)
        v.access(f"{where}.w", self.w, self.w_shape, x.dtype, used=out.size > 0)
        size = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                zip((h, w), (kh, kw), self.stride, self.padding, self.dilation)]
        if min(size) < 1:
            raise v.fail(where, "the kernel is larger than the padded input")
        v.expect_shape(where, out, (n, o, *size))
        return x.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        x = r.read(self.x, self.x_shape).astype(np.float32)
        w = r.read(self.w, self.w_shape).astype(np.float32)
        g = self.groups
        cols = windows(x, self.w_shape[2:], self.stride, self.padding, self.dilation)
        n, c, oh, ow = cols.shape[:4]
        cols = cols.reshape(n, g, c // g, oh, ow, *self.w_shape[2:])
        wg = w.reshape(g, self.w_shape[0] // g, *self.w_shape[1:])
        return np.einsum("ngchwij,gocij->ngohw", cols, wg, optimize=True).reshape(out.shape)

    @classmethod
    def lower(cls, k, op, stride, padding, dilation, groups) -> Conv2dStage:
        x, w = op.operands
        return cls(k.target(op.result), k.operand_access(x), k.operand_access(w),
                   x.type.shape, w.type.shape, stride, padding, dilation, groups)

    def tile_elements(self, tile, access: Access) -> int:
        if access is self.x:
            n, _, oh, ow, c, kh, kw = tile
            return n * c * span(oh, kh, self.stride[0], self.dilation[0]) * span(ow, kw, self.stride[1], self.dilation[1])
        return math.prod(tile[1:2] + tile[4:])


@declare
@attrs.frozen
class Conv2dInputGradStage(_Conv):
    """conv2d's gradient for its input: g [N,O,OH,OW] and w [O,C/groups,kh,kw] give out [N,C,H,W]
    (each g element times the weights added back over its window). Loop nest
    (n, c, h, w, o/groups, kh, kw)."""

    kind: ClassVar[str] = "conv2d_input_grad"
    ops: ClassVar[tuple[str, ...]] = ("conv2d_input_grad",)
    out: str
    g: Access
    w: Access
    g_shape: tuple[int, ...] = ints(nonneg_all)
    w_shape: tuple[int, ...] = ints(nonneg_all)
    stride: tuple[int, ...] = ints(pair, positive_all)
    padding: tuple[int, ...] = ints(pair, nonneg_all)
    dilation: tuple[int, ...] = ints(pair, positive_all)
    groups: int = attrs.field(validator=positive)

    def loop_nest(self, out_shape) -> tuple[int, ...]:
        return tuple(out_shape) + (self.w_shape[0] // self.groups, *self.w_shape[2:])

    def work(self, buffers) -> int:
        return buffers[self.out].size * math.prod(self.w_shape[1:])

    def check(self, v, where, out: Buffer) -> str:
        if len(self.w_shape) != 4 or len(out.shape) != 4 or len(self.g_shape) != 4:
            raise v.fail(where, "g_shape, w_shape and the output need 4 entries")
        o, cg, kh, kw = self.w_shape
        if self.g_shape[1] != o or o % self.groups or out.shape[1] != cg * self.groups:
            raise v.fail(where, f"channels do not match groups={self.groups}")
        v.window_grad(where, out.shape, (kh, kw), self.g_shape, self)
        g = v.access(f"{where}.g", self.g, self.g_shape, out.dtype, used=out.size > 0)
        v.access(f"{where}.w", self.w, self.w_shape, out.dtype, used=out.size > 0)
        return g.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        g = r.read(self.g, self.g_shape).astype(np.float32)
        w = r.read(self.w, self.w_shape).astype(np.float32)
        groups, (o, cg, kh, kw) = self.groups, self.w_shape
        n, _, oh, ow = self.g_shape
        gg = g.reshape(n, groups, o // groups, oh, ow)
        wg = w.reshape(groups, o // groups, cg, kh, kw)
        result = padded(out.shape, self.padding, np.float32)
        for i in range(kh):
            for j in range(kw):
                part = np.einsum("ngohw,goc->ngchw", gg, wg[..., i, j]).reshape(n, groups * cg, oh, ow)
                result[(slice(None), slice(None), *window_starts(self, (oh, ow), i, j, self.dilation))] += part
        return crop(result, self.padding)

    @classmethod
    def lower(cls, k, op, stride, padding, dilation, groups) -> Conv2dInputGradStage:
        g, w = op.operands
        return cls(k.target(op.result), k.operand_access(g), k.operand_access(w),
                   g.type.shape, w.type.shape, stride, padding, dilation, groups)

    def tile_elements(self, tile, access: Access) -> int:
        n, c, h, w, o, kh, kw = tile
        if access is self.w:
            return o * c * kh * kw
        return n * o * math.ceil((h + self.dilation[0] * (kh - 1)) / self.stride[0]) * \
            math.ceil((w + self.dilation[1] * (kw - 1)) / self.stride[1])


@declare
@attrs.frozen
class Conv2dWeightGradStage(_Conv):
    """conv2d's gradient for its weight: x [N,C,H,W] and g [N,O,OH,OW] give out [O,C/groups,kh,kw].
    Loop nest (o, c/groups, kh, kw, n, oh, ow)."""

    kind: ClassVar[str] = "conv2d_weight_grad"
    ops: ClassVar[tuple[str, ...]] = ("conv2d_weight_grad",)
    out: str
    x: Access
    g: Access
    x_shape: tuple[int, ...] = ints(nonneg_all)
    g_shape: tuple[int, ...] = ints(nonneg_all)
    stride: tuple[int, ...] = ints(pair, positive_all)
    padding: tuple[int, ...] = ints(pair, nonneg_all)
    dilation: tuple[int, ...] = ints(pair, positive_all)
    groups: int = attrs.field(validator=positive)

    def loop_nest(self, out_shape) -> tuple[int, ...]:
        return tuple(out_shape) + (self.g_shape[0], *self.g_shape[2:])

    def work(self, buffers) -> int:
        return buffers[self.out].size * math.prod(self.g_shape) // max(self.g_shape[1], 1)

    def check(self, v, where, out: Buffer) -> str:
        if len(self.x_shape) != 4 or len(out.shape) != 4 or len(self.g_shape) != 4:
            raise v.fail(where, "x_shape, g_shape and the output need 4 entries")
        o, cg, kh, kw = out.shape
        if self.g_shape[1] != o or o % self.groups or self.x_shape[1] != cg * self.groups:
            raise v.fail(where, f"channels do not match groups={self.groups}")
        v.window_grad(where, self.x_shape, (kh, kw), self.g_shape, self)
        x = v.access(f"{where}.x", self.x, self.x_shape, out.dtype, used=out.size > 0)
        v.access(f"{where}.g", self.g, self.g_shape, out.dtype, used=out.size > 0)
        return x.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        x = r.read(self.x, self.x_shape).astype(np.float32)
        g = r.read(self.g, self.g_shape).astype(np.float32)
        groups, (o, cg, kh, kw) = self.groups, out.shape
        n, _, oh, ow = self.g_shape
        xp = np.pad(x, ((0, 0), (0, 0), (self.padding[0],) * 2, (self.padding[1],) * 2))
        gg = g.reshape(n, groups, o // groups, oh, ow)
        result = np.zeros(out.shape, np.float32)
        for i in range(kh):
            for j in range(kw):
                cols = xp[(slice(None), slice(None), *window_starts(self, (oh, ow), i, j, self.dilation))]
                cols = cols.reshape(n, groups, cg, oh, ow)
                result[:, :, i, j] = np.einsum("ngchw,ngohw->goc", cols, gg).reshape(o, cg)
        return result

    @classmethod
    def lower(cls, k, op, stride, padding, dilation, groups) -> Conv2dWeightGradStage:
        x, g = op.operands
        return cls(k.target(op.result), k.operand_access(x), k.operand_access(g),
                   x.type.shape, g.type.shape, stride, padding, dilation, groups)

    def tile_elements(self, tile, access: Access) -> int:
        o, c, kh, kw, n, oh, ow = tile
        if access is self.g:
            return n * o * oh * ow
        return n * c * span(oh, kh, self.stride[0], self.dilation[0]) * span(ow, kw, self.stride[1], self.dilation[1])
