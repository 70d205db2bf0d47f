"""Neural-network ops: normalizations, cross-entropy, convolution and pooling."""
from __future__ import annotations

import numpy as np

from ir.ops.base import Attr, Cost, FusionKind, OpDef, TypeRuleError, register
from ir.types import TensorType


def _check_feature(x: TensorType, *params: TensorType) -> None:
    for p in params:
        if p.shape != x.shape[-1:] or p.dtype != x.dtype:
            raise TypeRuleError(f"scale/shift {p} must be {x.dtype}[{x.shape[-1]}] for input {x}")


@register
class LayerNorm(OpDef):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""

    name = "layer_norm"
    kind = FusionKind.reduction
    arity = 3
    attrs = {"eps": Attr("float", 1e-5)}
    flops_per_element = 8

    @classmethod
    def infer(cls, types, attrs):
        x, weight, bias = types
        if not x.dtype.is_float or x.rank < 1:
            raise TypeRuleError(f"expects a float tensor of rank >= 1, got {x}")
        _check_feature(x, weight, bias)
        return [x]

    @classmethod
    def ref(cls, attrs, x, weight, bias):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + np.asarray(attrs["eps"], x.dtype)) * weight + bias

    @classmethod
    def decompose(cls, b, op):
        x, weight, bias = op.operands
        centered = b.sub(x, b.mean(x, axes=(-1,), keepdims=True))
        var = b.mean(b.mul(centered, centered), axes=(-1,), keepdims=True)
        inv = b.rsqrt(b.add(var, b.scalar(op.attrs["eps"], x.type.dtype)))
        return [b.add(b.mul(b.mul(centered, inv), weight), bias)]


@register
class RmsNorm(OpDef):
    """x / sqrt(mean(x**2) + eps) * weight over the last axis (Llama's RMSNorm)."""

    name = "rms_norm"
    kind = FusionKind.reduction
    arity = 2
    attrs = {"eps": Attr("float", 1e-6)}
    flops_per_element = 5

    @classmethod
    def infer(cls, types, attrs):
        x, weight = types
        if not x.dtype.is_float or x.rank < 1:
            raise TypeRuleError(f"expects a float tensor of rank >= 1, got {x}")
        _check_feature(x, weight)
        return [x]

    @classmethod
    def ref(cls, attrs, x, weight):
        ms = (x * x).mean(-1, keepdims=True)
        return x / np.sqrt(ms + np.asarray(attrs["eps"], x.dtype)) * weight

    @classmethod
    def decompose(cls, b, op):
        x, weight = op.operands
        ms = b.mean(b.mul(x, x), axes=(-1,), keepdims=True)
        inv = b.rsqrt(b.add(ms, b.scalar(op.attrs["eps"], x.type.dtype)))
        return [b.mul(b.mul(x, inv), weight)]


@register
class CrossEntropy(OpDef):
    """Mean over unmasked positions of -log_softmax(logits)[label].

    Operands: logits [..., V] (float), labels [...] (int), optional mask [...]
    (bool or float weights). With an all-zero mask the result is 0.
    """

    name = "cross_entropy"
    kind = FusionKind.reduction
    arity = (2, 3)
    flops_per_element = 6

    @classmethod
    def infer(cls, types, attrs):
        logits, labels = types[:2]
        if not logits.dtype.is_float or logits.rank < 1:
            raise TypeRuleError(f"logits must be a float tensor of rank >= 1, got {logits}")
        if not labels.dtype.is_int or labels.shape != logits.shape[:-1]:
            raise TypeRuleError(f"labels must be integers shaped {list(logits.shape[:-1])}, got {labels}")
        if len(types) == 3 and types[2].shape != labels.shape:
            raise TypeRuleError(f"mask must be shaped like the labels {list(labels.shape)}, got {types[2]}")
        return [TensorType((), logits.dtype)]

    @classmethod
    def ref(cls, attrs, logits, labels, mask=None):
        shifted = logits - logits.max(-1, keepdims=True, initial=-np.inf)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise IndexError(f"label out of range [0, {logits.shape[-1]})")
        nll = -np.take_along_axis(logp, labels[..., None].astype(np.int64), -1)[..., 0]
        weights = np.ones_like(nll) if mask is None else mask.astype(logits.dtype)
        return (nll * weights).sum() / max(weights.sum(), 1.0)

    @classmethod
    def index_bounds(cls, op):
        return {1: op.operands[0].type.shape[-1]}

    @classmethod
    def decompose(cls, b, op):
        logits, labels = op.operands[:2]
        dtype = logits.type.dtype
        classes = b.iota(shape=logits.type.shape, axis=logits.type.rank - 1, dtype=labels.type.dtype)
        onehot = b.eq(classes, b.reshape(labels, shape=labels.type.shape + (1,)))
        logp = b.log_softmax(logits, axis=-1)
        nll = b.neg(b.sum(b.where(onehot, logp, b.scalar(0.0, dtype)), axes=(-1,)))
        if len(op.operands) == 2:  # the mean, and 0 when there are no labels (as `ref`)
            return [b.div(b.sum(nll), b.scalar(float(max(nll.type.size, 1)), dtype))]
        weights = b.cast(op.operands[2], dtype=dtype)
        count = b.maximum(b.sum(weights), b.scalar(1.0, dtype))
        return [b.div(b.sum(b.mul(nll, weights)), count)]


def _window_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _check_pairs(attrs, *names):
    for name in names:
        if len(attrs[name]) != 2:
            raise TypeRuleError(f"attribute '{name}' needs 2 entries, got {list(attrs[name])}")


def _windows(x: np.ndarray, kh, kw, stride, padding, dilation=(1, 1), fill=0.0) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] view of the padded input's sliding windows."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=fill)
    span = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    view = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


@register
class Conv2d(OpDef):
    """2-D convolution, NCHW input and OIHW weight (PyTorch's layout), no bias."""

    name = "conv2d"
    kind = FusionKind.output_fusable
    arity = 2
    attrs = {"stride": Attr("ints", (1, 1)), "padding": Attr("ints", (0, 0)),
             "dilation": Attr("ints", (1, 1)), "groups": Attr("int", 1)}

    @classmethod
    def infer(cls, types, attrs):
        x, w = types
        _check_pairs(attrs, "stride", "padding", "dilation")
        g = attrs["groups"]
        if x.rank != 4 or w.rank != 4 or x.dtype != w.dtype or not x.dtype.is_float:
            raise TypeRuleError(f"expects float NCHW input and OIHW weight, got {x} and {w}")
        if g < 1 or x.shape[1] % g or w.shape[0] % g or w.shape[1] * g != x.shape[1]:
            raise TypeRuleError(f"channels of {x} and {w} do not match groups={g}")
        oh, ow = (_window_out(x.shape[2 + i], w.shape[2 + i], attrs["stride"][i], attrs["padding"][i],
                              attrs["dilation"][i]) for i in range(2))
        if oh < 1 or ow < 1:
            raise TypeRuleError(f"kernel {list(w.shape[2:])} larger than padded input {list(x.shape[2:])}")
        return [TensorType((x.shape[0], w.shape[0], oh, ow), x.dtype)]

    @classmethod
    def ref(cls, attrs, x, w):
        g = attrs["groups"]
        cols = _windows(x, w.shape[2], w.shape[3], attrs["stride"], attrs["padding"], attrs["dilation"])
        n, c, oh, ow = cols.shape[:4]
        cols = cols.reshape(n, g, c // g, oh, ow, w.shape[2], w.shape[3])
        wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])
        if x.dtype.itemsize < 4:  # accumulate 16-bit floats in f32 (numpy's einsum has no bf16)
            cols, wg = cols.astype(np.float32), wg.astype(np.float32)
        out = np.einsum("ngchwij,gocij->ngohw", cols, wg, optimize=True)
        return out.reshape(n, w.shape[0], oh, ow)

    @classmethod
    def cost(cls, op):
        x, w = (v.type for v in op.operands)
        out = op.results[0].type
        flops = 2 * out.size * w.shape[1] * w.shape[2] * w.shape[3]
        return Cost(flops, x.nbytes + w.nbytes, out.nbytes)

    @classmethod
    def stage(cls, op):
        return {"kind": "conv2d", **op.attrs}


class Pool2d(OpDef):
    """Window reduction over H and W of an NCHW tensor."""

    kind = FusionKind.output_fusable
    attrs = {"kernel": Attr("ints"), "stride": Attr("ints", None, optional=True),
             "padding": Attr("ints", (0, 0))}

    @classmethod
    def infer(cls, types, attrs):
        (x,) = types
        _check_pairs(attrs, "kernel", "padding")
        stride = cls.stride(attrs)
        if x.rank != 4 or not x.dtype.is_float:
            raise TypeRuleError(f"expects a float NCHW tensor, got {x}")
        if any(2 * p > k for p, k in zip(attrs["padding"], attrs["kernel"])):
            raise TypeRuleError("padding must be at most half the kernel")
        oh, ow = (_window_out(x.shape[2 + i], attrs["kernel"][i], stride[i], attrs["padding"][i]) for i in range(2))
        if oh < 1 or ow < 1:
            raise TypeRuleError(f"kernel {list(attrs['kernel'])} larger than padded input {list(x.shape[2:])}")
        return [x.with_shape((x.shape[0], x.shape[1], oh, ow))]

    @staticmethod
    def stride(attrs) -> tuple[int, int]:
        stride = attrs["stride"] or attrs["kernel"]
        if len(stride) != 2:
            raise TypeRuleError(f"attribute 'stride' needs 2 entries, got {list(stride)}")
        return stride

    @classmethod
    def cost(cls, op):
        base = super().cost(op)
        flops = op.results[0].type.size * op.attrs["kernel"][0] * op.attrs["kernel"][1]
        return Cost(flops, base.bytes_read, base.bytes_written)

    @classmethod
    def stage(cls, op):
        return {"kind": "pool2d", "mode": cls.mode, "kernel": op.attrs["kernel"],
                "stride": cls.stride(op.attrs), "padding": op.attrs["padding"]}


@register
class MaxPool2d(Pool2d):
    """Maximum over each window (padding counts as -inf)."""

    name = "max_pool2d"
    mode = "max"

    @classmethod
    def ref(cls, attrs, x):
        kh, kw = attrs["kernel"]
        return _windows(x, kh, kw, cls.stride(attrs), attrs["padding"], fill=-np.inf).max(axis=(-2, -1))


@register
class AvgPool2d(Pool2d):
    """Mean over each window (padding counts as zeros, as PyTorch's default)."""

    name = "avg_pool2d"
    mode = "avg"

    @classmethod
    def ref(cls, attrs, x):
        kh, kw = attrs["kernel"]
        return _windows(x, kh, kw, cls.stride(attrs), attrs["padding"]).mean(axis=(-2, -1))
