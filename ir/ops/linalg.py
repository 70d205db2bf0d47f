"""Matrix multiplication."""
from __future__ import annotations

import math

import numpy as np

from ir.ops.base import Attr, Cost, FusionKind, LoopNest, OpDef, TypeRuleError, register, unbroadcast
from ir.ops.elementwise import broadcast_shape, same_dtype
from ir.types import TensorType


def matmul_dims(a: TensorType, b: TensorType, attrs) -> tuple[tuple[int, ...], int, int, int]:
    """(batch shape, M, N, K) of a matmul, or TypeRuleError."""
    if a.rank < 2 or b.rank < 2:
        raise TypeRuleError(f"operands need rank >= 2, got {a} and {b}")
    m, k = a.shape[-2:][::-1] if attrs["transpose_a"] else a.shape[-2:]
    k2, n = b.shape[-2:][::-1] if attrs["transpose_b"] else b.shape[-2:]
    if k != k2:
        raise TypeRuleError(f"contraction sizes differ: {a} and {b} (K = {k} vs {k2})")
    return broadcast_shape(a.shape[:-2], b.shape[:-2]), m, n, k


@register
class Matmul(OpDef):
    """Batched a @ b over the last two axes; batch axes broadcast; either side may be transposed."""

    name = "matmul"
    kind = FusionKind.output_fusable
    arity = 2
    #: tile: sizes over the loop nest (batch..., m, n, k), set by the `tile` pass; () is untiled
    attrs = {"transpose_a": Attr("bool", False), "transpose_b": Attr("bool", False), "tile": Attr("ints", ())}

    @classmethod
    def infer(cls, types, attrs):
        a, b = types
        dtype = same_dtype(types)
        if not dtype.is_float:
            raise TypeRuleError(f"expects float operands, got {a}")
        batch, m, n, _ = matmul_dims(a, b, attrs)
        return [TensorType(batch + (m, n), dtype)]

    @classmethod
    def ref(cls, attrs, a, b):
        if attrs["transpose_a"]:
            a = np.swapaxes(a, -1, -2)
        if attrs["transpose_b"]:
            b = np.swapaxes(b, -1, -2)
        return np.matmul(a, b)

    @classmethod
    def vjp(cls, b, op, grads):
        """dA = g B^T and dB = A^T g, written on the stored (possibly transposed) operands."""
        x, y = op.operands
        g = grads[0]
        ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
        if ta:
            dx = b.matmul(y, g, transpose_a=tb, transpose_b=True)
        else:
            dx = b.matmul(g, y, transpose_b=not tb)
        if y.type.rank == 2 < x.type.rank and not ta:
            dy = _shared_gradient(b, x, g, tb)
        elif tb:
            dy = b.matmul(g, x, transpose_a=True, transpose_b=ta)
        else:
            dy = b.matmul(x, g, transpose_a=not ta)
        return [unbroadcast(b, dx, x.type.shape), unbroadcast(b, dy, y.type.shape)]

    @classmethod
    def cost(cls, op):
        a, b = (v.type for v in op.operands)
        batch, m, n, k = matmul_dims(a, b, op.attrs)
        flops = 2 * int(np.prod(batch)) * m * n * k
        return Cost(flops, a.nbytes + b.nbytes, op.results[0].type.nbytes)

    @classmethod
    def stage(cls, op):
        return {"transpose_a": op.attrs["transpose_a"], "transpose_b": op.attrs["transpose_b"]}

    @classmethod
    def loop_nest(cls, op):
        """Axes (batch..., m, n, k); an operand's batch dimension of size 1 is broadcast."""
        a, b = (v.type for v in op.operands)
        batch, m, n, k = matmul_dims(a, b, op.attrs)
        nb = len(batch)
        im, in_, ik = nb, nb + 1, nb + 2

        def operand(t, rows, cols, transpose):
            lead = [() if d == 1 else ((nb - (t.rank - 2) + j, 1.0),) for j, d in enumerate(t.shape[:-2])]
            inner = [((cols, 1.0),), ((rows, 1.0),)] if transpose else [((rows, 1.0),), ((cols, 1.0),)]
            return tuple(lead + inner)
        return LoopNest(batch + (m, n, k), 1,
                        (operand(a, im, ik, op.attrs["transpose_a"]), operand(b, ik, in_, op.attrs["transpose_b"])),
                        tuple(((i, 1.0),) for i in range(nb + 2)))


def _shared_gradient(b, x, g, transposed: bool):
    """The gradient of a matrix every batch entry shares, x^T g (or g^T x when it is stored
    transposed), as one product whose depth runs over the batch and the rows together: the
    batch entries' rows stacked, not a product per entry summed afterwards."""
    xs, gs = (b.reshape(v, shape=(math.prod(v.type.shape[:-1]), v.type.shape[-1])) for v in (x, g))
    return b.matmul(gs, xs, transpose_a=True) if transposed else b.matmul(xs, gs, transpose_a=True)
