"""Pooling stages: `pool2d` (max or average windows) and its gradient `pool2d_grad`."""
from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from backend.pef.records import Access, Body, Buffer, ints, nonneg_all, one_of, pair, positive_all
from backend.pef.reference import crop, padded, window_starts, windows
from backend.pef.stages.base import StageKind, declare


def _window_tile(tile, kernel) -> int:
    n, c, h, w = tile
    return n * c * (h + kernel[0]) * (w + kernel[1])


@declare
@attrs.frozen
class Pool2dStage(StageKind):
    """max (padding is -inf) or avg (padding counts as zero) windows of NCHW x."""

    kind: ClassVar[str] = "pool2d"
    ops: ClassVar[tuple[str, ...]] = ("max_pool2d", "avg_pool2d")
    out: str
    x: Access
    x_shape: tuple[int, ...] = ints(nonneg_all)
    mode: str = attrs.field(validator=one_of("max", "avg"))
    kernel: tuple[int, ...] = ints(pair, positive_all)
    stride: tuple[int, ...] = ints(pair, positive_all)
    padding: tuple[int, ...] = ints(pair, nonneg_all)
    epilogue: Body | None = None

    def work(self, buffers) -> int:
        return buffers[self.out].size * math.prod(self.kernel)

    def check(self, v, where, out: Buffer) -> str:
        if len(self.x_shape) != 4:
            raise v.fail(where, "x_shape needs 4 entries")
        x = v.access(f"{where}.x", self.x, self.x_shape, used=out.size > 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise v.fail(where, "padding must be at most half the kernel")
        size = [(s + 2 * p - k) // st + 1 for s, k, st, p in
                zip(self.x_shape[2:], self.kernel, self.stride, self.padding)]
        if min(size) < 1:
            raise v.fail(where, "the window is larger than the padded input")
        v.expect_shape(where, out, (*self.x_shape[:2], *size))
        return x.dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        x = r.read(self.x, self.x_shape)
        fill = -np.inf if self.mode == "max" else 0.0
        cols = windows(x, self.kernel, self.stride, self.padding, fill=fill)
        return cols.max(axis=(-2, -1)) if self.mode == "max" else cols.mean(axis=(-2, -1))

    @classmethod
    def lower(cls, k, op, mode: str, kernel, stride, padding) -> Pool2dStage:
        (x,) = op.operands
        return cls(k.target(op.result), k.operand_access(x), x.type.shape, mode, kernel, stride, padding)

    def tile_elements(self, tile, access: Access) -> int:
        return _window_tile(tile, self.kernel)


@declare
@attrs.frozen
class Pool2dGradStage(StageKind):
    """A pooling's gradient for its input [N,C,H,W] from g [N,C,OH,OW]: `avg` spreads g/(kh*kw)
    over each window; `max` adds g at each window's first maximum of x (padding -inf)."""

    kind: ClassVar[str] = "pool2d_grad"
    ops: ClassVar[tuple[str, ...]] = ("max_pool2d_grad", "avg_pool2d_grad")
    out: str
    mode: str = attrs.field(validator=one_of("max", "avg"))
    x: Access | None
    g: Access
    g_shape: tuple[int, ...] = ints(nonneg_all)
    kernel: tuple[int, ...] = ints(pair, positive_all)
    stride: tuple[int, ...] = ints(pair, positive_all)
    padding: tuple[int, ...] = ints(pair, nonneg_all)

    def work(self, buffers) -> int:
        return buffers[self.out].size + math.prod(self.g_shape) * math.prod(self.kernel)

    def check(self, v, where, out: Buffer) -> str:
        if len(out.shape) != 4 or tuple(out.shape[:2]) != tuple(self.g_shape[:2]):
            raise v.fail(where, f"output {list(out.shape)} does not match gradient {list(self.g_shape)}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise v.fail(where, "padding must be at most half the kernel")
        v.window_grad(where, out.shape, self.kernel, self.g_shape, self)
        if math.prod(self.g_shape) and not out.size:
            raise v.fail(where, f"adds a gradient into an empty {list(out.shape)} output")
        if (self.x is None) != (self.mode == "avg"):
            raise v.fail(f"{where}.x", "max pooling's gradient reads x; average pooling's does not")
        if self.x is not None:
            v.access(f"{where}.x", self.x, out.shape, out.dtype)
        return v.access(f"{where}.g", self.g, self.g_shape, out.dtype).dtype

    def reference(self, r, out: Buffer) -> np.ndarray:
        g = r.read(self.g, self.g_shape)
        (kh, kw), oh, ow = self.kernel, self.g_shape[2], self.g_shape[3]
        result = padded(out.shape, self.padding, g.dtype)
        taps = [(i, j) for i in range(kh) for j in range(kw)]
        if self.mode == "avg":
            for i, j in taps:
                result[(slice(None), slice(None), *window_starts(self, (oh, ow), i, j))] += g / (kh * kw)
            return crop(result, self.padding)
        x = r.read(self.x, out.shape)
        xp = np.pad(x, ((0, 0), (0, 0), (self.padding[0],) * 2, (self.padding[1],) * 2), constant_values=-np.inf)
        taken = [xp[(slice(None), slice(None), *window_starts(self, (oh, ow), i, j))] for i, j in taps]
        first = np.argmax(np.stack(taken), axis=0)
        for t, (i, j) in enumerate(taps):
            result[(slice(None), slice(None), *window_starts(self, (oh, ow), i, j))] += np.where(first == t, g, 0)
        return crop(result, self.padding)

    @classmethod
    def lower(cls, k, op, mode: str, kernel, stride, padding) -> Pool2dGradStage:
        """Operands: (x, g) when the gradient needs the input (max), else (g,)."""
        *x, g = op.operands
        return cls(k.target(op.result), mode, k.operand_access(x[0]) if x else None,
                   k.operand_access(g), g.type.shape, kernel, stride, padding)

    def tile_elements(self, tile, access: Access) -> int:
        return _window_tile(tile, self.kernel)
