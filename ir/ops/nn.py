"""Neural-network ops: normalizations, cross-entropy, convolution and pooling."""
from __future__ import annotations

import numpy as np

from ir.dtypes import DType
from ir.ops.base import Attr, Cost, FusionKind, LoopNest, OpDef, TypeRuleError, register
from ir.types import TensorType


def _check_feature(x: TensorType, *params: TensorType) -> None:
    for p in params:
        if p.shape != x.shape[-1:] or p.dtype != x.dtype:
            raise TypeRuleError(f"scale/shift {p} must be {x.dtype}[{x.shape[-1]}] for input {x}")


def _sum_leading(b, v):
    """`v` summed over every axis but the last: a per-feature parameter's gradient."""
    return b.sum(v, axes=tuple(range(v.type.rank - 1))) if v.type.rank > 1 else v


def _xhat_term(b, xhat, dxhat):
    """xhat * mean(dxhat * xhat) over the last axis."""
    return b.mul(xhat, b.mean(b.mul(dxhat, xhat), axes=(-1,), keepdims=True))


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

    @classmethod
    def vjp(cls, b, op, grads):
        """dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * weight."""
        x, weight, _ = op.operands
        g = grads[0]
        centered = b.sub(x, b.mean(x, axes=(-1,), keepdims=True))
        var = b.mean(b.mul(centered, centered), axes=(-1,), keepdims=True)
        inv = b.rsqrt(b.add(var, b.scalar(op.attrs["eps"], x.type.dtype)))
        xhat = b.mul(centered, inv)
        dxhat = b.mul(g, weight)
        mean_dxhat = b.mean(dxhat, axes=(-1,), keepdims=True)
        dx = b.mul(inv, b.sub(b.sub(dxhat, mean_dxhat), _xhat_term(b, xhat, dxhat)))
        return [dx, _sum_leading(b, b.mul(g, xhat)), _sum_leading(b, g)]


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

    @classmethod
    def vjp(cls, b, op, grads):
        """dx = inv * (dxhat - xhat * mean(dxhat * xhat)), dxhat = g * weight."""
        x, weight = op.operands
        g = grads[0]
        ms = b.mean(b.mul(x, x), axes=(-1,), keepdims=True)
        inv = b.rsqrt(b.add(ms, b.scalar(op.attrs["eps"], x.type.dtype)))
        xhat = b.mul(x, inv)
        dxhat = b.mul(g, weight)
        dx = b.mul(inv, b.sub(dxhat, _xhat_term(b, xhat, dxhat)))
        return [dx, _sum_leading(b, b.mul(g, xhat))]


def _max_and_exp_sum(b, logits):
    """Each row's max and sum(exp(x - max)) as log_softmax(axis=-1) decomposes them (kept dims): the
    cross-entropy's forward and gradient share these two reductions."""
    top = b.max(logits, axes=(-1,), keepdims=True)
    return top, b.sum(b.exp(b.sub(logits, top)), axes=(-1,), keepdims=True)


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
        """The label's log probability, (x[label] - max(x)) - log(sum(exp(x - max(x)))) as
        log_softmax computes it, reads x[label] by a gather: no pass over the classes picks it out.
        A label out of range (which `ref` refuses) reads a class of its own row, the nearest."""
        logits, labels = op.operands[:2]
        dtype, shape, classes = logits.type.dtype, labels.type.shape, logits.type.shape[-1]
        top, total = _max_and_exp_sum(b, logits)
        rows = b.reshape(b.iota(shape=(labels.type.size,), axis=0, dtype=DType.i64), shape=shape)
        label = b.minimum(b.maximum(b.cast(labels, dtype=DType.i64), b.scalar(0, DType.i64)),
                          b.scalar(classes - 1, DType.i64))
        index = b.add(b.mul(rows, b.scalar(classes, DType.i64)), label)
        label_logit = b.gather(b.reshape(logits, shape=(logits.type.size,)), index, axis=0)
        logp = b.sub(b.sub(label_logit, b.reshape(top, shape=shape)), b.log(b.reshape(total, shape=shape)))
        nll = b.neg(logp)
        if len(op.operands) == 2:  # the mean, and 0 when there are no labels (as `ref`)
            return [b.div(b.sum(nll), b.scalar(float(max(nll.type.size, 1)), dtype))]
        weights = b.cast(op.operands[2], dtype=dtype)
        count = b.maximum(b.sum(weights), b.scalar(1.0, dtype))
        return [b.div(b.sum(b.mul(nll, weights)), count)]

    @classmethod
    def vjp(cls, b, op, grads):
        """d/dlogits = (softmax - onehot) * weight / count; float mask weights get theirs too. The log
        softmax is the logits less their log-sum-exp, whose reductions are the forward's: the backward
        keeps one number per row from the forward, not a log softmax as large as the logits."""
        logits, labels = op.operands[:2]
        dtype, g = logits.type.dtype, grads[0]
        top, total = _max_and_exp_sum(b, logits)
        logp = b.sub(logits, b.add(top, b.log(total)))
        classes = b.iota(shape=logits.type.shape, axis=logits.type.rank - 1, dtype=labels.type.dtype)
        onehot = b.cast(b.eq(classes, b.reshape(labels, shape=labels.type.shape + (1,))), dtype=dtype)
        diff = b.sub(b.exp(logp), onehot)
        column = labels.type.shape + (1,)
        if len(op.operands) == 2:
            scale = b.div(g, b.scalar(float(max(labels.type.size, 1)), dtype))
            return [b.mul(diff, scale), None]
        mask = op.operands[2]
        weights = b.cast(mask, dtype=dtype)
        total = b.sum(weights)
        count = b.maximum(total, b.scalar(1.0, dtype))
        per_count = b.div(g, count)
        dlogits = b.mul(diff, b.reshape(b.mul(weights, per_count), shape=column))
        if not mask.type.dtype.is_float:
            return [dlogits, None, None]
        # d/dw_i = (nll_i - loss * [total > 1]) / count: count = max(total, 1) moves with w only above 1
        nll = b.neg(b.sum(b.mul(onehot, logp), axes=(-1,)))
        moving = b.cast(b.gt(total, b.scalar(1.0, dtype)), dtype=dtype)
        return [dlogits, None, b.mul(b.sub(nll, b.mul(op.result, moving)), per_count)]


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


_CONV_ATTRS = {"stride": Attr("ints", (1, 1)), "padding": Attr("ints", (0, 0)),
               "dilation": Attr("ints", (1, 1)), "groups": Attr("int", 1)}


def _conv_attrs(op) -> dict:
    """A conv op's stride, padding, dilation and groups (not its tile), for its gradient ops and stage."""
    return {k: op.attrs[k] for k in _CONV_ATTRS}


@register
class Conv2d(OpDef):
    """2-D convolution, NCHW input and OIHW weight (PyTorch's layout), no bias."""

    name = "conv2d"
    kind = FusionKind.output_fusable
    arity = 2
    #: tile: sizes over the loop nest (n, o, oh, ow, c, kh, kw), set by the `tile` pass; () is untiled
    attrs = {**_CONV_ATTRS, "tile": Attr("ints", ())}

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
    def vjp(cls, b, op, grads):
        x, w = op.operands
        conv = _conv_attrs(op)
        return [b.conv2d_input_grad(grads[0], w, input_hw=x.type.shape[2:], **conv),
                b.conv2d_weight_grad(x, grads[0], kernel_hw=w.type.shape[2:], **conv)]

    @classmethod
    def cost(cls, op):
        x, w = (v.type for v in op.operands)
        out = op.results[0].type
        flops = 2 * out.size * w.shape[1] * w.shape[2] * w.shape[3]
        return Cost(flops, x.nbytes + w.nbytes, out.nbytes)

    @classmethod
    def stage(cls, op):
        return {**_conv_attrs(op)}

    @classmethod
    def loop_nest(cls, op):
        """Axes (n, o, oh, ow, c, kh, kw): c counts one group's input channels."""
        (n, _, _, _), (o, c, kh, kw) = (v.type.shape for v in op.operands)
        _, _, oh, ow = op.result.type.shape
        return LoopNest((n, o, oh, ow, c, kh, kw), 3,
                        (_image(0, 4, (2, 5), (3, 6), op.attrs), _axes(1, 4, 5, 6)), _axes(0, 1, 2, 3))


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
        return {"mode": cls.mode, "kernel": op.attrs["kernel"],
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

    @classmethod
    def vjp(cls, b, op, grads):
        return [b.max_pool2d_grad(op.operands[0], grads[0], **op.attrs)]


@register
class AvgPool2d(Pool2d):
    """Mean over each window (padding counts as zeros, as PyTorch's default)."""

    name = "avg_pool2d"
    mode = "avg"

    @classmethod
    def ref(cls, attrs, x):
        kh, kw = attrs["kernel"]
        return _windows(x, kh, kw, cls.stride(attrs), attrs["padding"]).mean(axis=(-2, -1))

    @classmethod
    def vjp(cls, b, op, grads):
        return [b.avg_pool2d_grad(grads[0], input_hw=op.operands[0].type.shape[2:], **op.attrs)]


# --- gradient ops: what the VJPs of conv2d and pooling build --------------------------------
def _scatter_windows(out: np.ndarray, values: np.ndarray, kh: int, kw: int, stride, dilation=(1, 1)) -> None:
    """Add values[..., oh, ow, i, j] into out[..., oh*stride + i*dilation, ...] (windows' transpose)."""
    oh, ow = values.shape[-4:-2]
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
            cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
            out[..., rows, cols] += values[..., i, j]


def _wide16(*arrays: np.ndarray) -> list[np.ndarray]:
    """16-bit floats widened to f32 for accumulation (numpy's einsum has no bf16)."""
    return [a.astype(np.float32) if a.dtype.itemsize < 4 else a for a in arrays]


def _crop(padded: np.ndarray, padding) -> np.ndarray:
    h, w = padded.shape[-2] - 2 * padding[0], padded.shape[-1] - 2 * padding[1]
    return padded[..., padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _check_window_grad(x_hw, kernel_hw, attrs, stride, dilation, g: TensorType) -> None:
    """The cotangent `g` must have the forward op's output size for an input of size `x_hw`."""
    _check_pairs(attrs, "padding")
    want = tuple(_window_out(x_hw[i], kernel_hw[i], stride[i], attrs["padding"][i], dilation[i]) for i in range(2))
    if want != tuple(g.shape[2:]):
        raise TypeRuleError(f"gradient {g} does not match an input of size {list(x_hw)} "
                            f"(the forward output would be {list(want)})")


@register
class Conv2dInputGrad(OpDef):
    """conv2d's gradient for its input: (g [N,O,OH,OW], weight [O,C/groups,kh,kw]) -> [N,C,H,W]."""

    name = "conv2d_input_grad"
    kind = FusionKind.output_fusable
    arity = 2
    #: tile: sizes over the loop nest (n, c, h, w, o, kh, kw), set by the `tile` pass; () is untiled
    attrs = {**_CONV_ATTRS, "input_hw": Attr("ints"), "tile": Attr("ints", ())}

    @classmethod
    def infer(cls, types, attrs):
        g, w = types
        _check_pairs(attrs, "stride", "dilation", "input_hw")
        groups = attrs["groups"]
        if g.rank != 4 or w.rank != 4 or g.dtype != w.dtype or not g.dtype.is_float:
            raise TypeRuleError(f"expects float NCHW gradient and OIHW weight, got {g} and {w}")
        if groups < 1 or w.shape[0] != g.shape[1] or w.shape[0] % groups:
            raise TypeRuleError(f"channels of {g} and {w} do not match groups={groups}")
        _check_window_grad(attrs["input_hw"], w.shape[2:], attrs, attrs["stride"], attrs["dilation"], g)
        return [TensorType((g.shape[0], w.shape[1] * groups, *attrs["input_hw"]), g.dtype)]

    @classmethod
    def ref(cls, attrs, g, w):
        n, o, oh, ow = g.shape
        groups, (kh, kw), (ph, pw) = attrs["groups"], w.shape[2:], attrs["padding"]
        g, w = _wide16(g, w)
        gg = g.reshape(n, groups, o // groups, oh, ow)
        wg = w.reshape(groups, o // groups, w.shape[1], kh, kw)
        cols = np.einsum("ngohw,gocij->ngchwij", gg, wg, optimize=True)
        h, wd = attrs["input_hw"]
        out = np.zeros((n, groups, w.shape[1], h + 2 * ph, wd + 2 * pw), dtype=np.result_type(g, w))
        _scatter_windows(out, cols, kh, kw, attrs["stride"], attrs["dilation"])
        return _crop(out, attrs["padding"]).reshape(n, groups * w.shape[1], h, wd)

    @classmethod
    def vjp(cls, b, op, grads):
        g, w = op.operands
        conv = _conv_attrs(op)
        return [b.conv2d(grads[0], w, **conv), b.conv2d_weight_grad(grads[0], g, kernel_hw=w.type.shape[2:], **conv)]

    @classmethod
    def cost(cls, op):
        g, w = (v.type for v in op.operands)
        return Cost(2 * g.size * w.shape[1] * w.shape[2] * w.shape[3], g.nbytes + w.nbytes,
                    op.result.type.nbytes)

    @classmethod
    def stage(cls, op):
        return {**_conv_attrs(op)}

    @classmethod
    def loop_nest(cls, op):
        """Axes (n, c, h, w, o, kh, kw): o counts one group's output channels; g rows span h / stride."""
        g, w = (v.type.shape for v in op.operands)
        n, c, h, wd = op.result.type.shape
        (sh, sw), (dh, dw) = op.attrs["stride"], op.attrs["dilation"]
        rows = ((2, 1.0 / sh), (5, dh / sh))
        cols = ((3, 1.0 / sw), (6, dw / sw))
        return LoopNest((n, c, h, wd, g[1] // op.attrs["groups"], w[2], w[3]), 3,
                        ((((0, 1.0),), ((4, 1.0),), rows, cols), _axes(4, 1, 5, 6)), _axes(0, 1, 2, 3))


@register
class Conv2dWeightGrad(OpDef):
    """conv2d's gradient for its weight: (x [N,C,H,W], g [N,O,OH,OW]) -> [O,C/groups,kh,kw]."""

    name = "conv2d_weight_grad"
    kind = FusionKind.output_fusable
    arity = 2
    #: tile: sizes over the loop nest (o, c, kh, kw, n, oh, ow), set by the `tile` pass; () is untiled
    attrs = {**_CONV_ATTRS, "kernel_hw": Attr("ints"), "tile": Attr("ints", ())}

    @classmethod
    def infer(cls, types, attrs):
        x, g = types
        _check_pairs(attrs, "stride", "dilation", "kernel_hw")
        groups = attrs["groups"]
        if x.rank != 4 or g.rank != 4 or x.dtype != g.dtype or not x.dtype.is_float or x.shape[0] != g.shape[0]:
            raise TypeRuleError(f"expects float NCHW input and gradient of one batch, got {x} and {g}")
        if groups < 1 or x.shape[1] % groups or g.shape[1] % groups:
            raise TypeRuleError(f"channels of {x} and {g} do not match groups={groups}")
        _check_window_grad(x.shape[2:], attrs["kernel_hw"], attrs, attrs["stride"], attrs["dilation"], g)
        return [TensorType((g.shape[1], x.shape[1] // groups, *attrs["kernel_hw"]), x.dtype)]

    @classmethod
    def ref(cls, attrs, x, g):
        groups, (kh, kw) = attrs["groups"], attrs["kernel_hw"]
        x, g = _wide16(x, g)
        cols = _windows(x, kh, kw, attrs["stride"], attrs["padding"], attrs["dilation"])
        n, c, oh, ow = cols.shape[:4]
        cols = cols.reshape(n, groups, c // groups, oh, ow, kh, kw)
        gg = g.reshape(n, groups, g.shape[1] // groups, oh, ow)
        out = np.einsum("ngchwij,ngohw->gocij", cols, gg, optimize=True)
        return out.reshape(g.shape[1], c // groups, kh, kw)

    @classmethod
    def vjp(cls, b, op, grads):
        x, g = op.operands
        conv = _conv_attrs(op)
        return [b.conv2d_input_grad(g, grads[0], input_hw=x.type.shape[2:], **conv), b.conv2d(x, grads[0], **conv)]

    @classmethod
    def cost(cls, op):
        x, g = (v.type for v in op.operands)
        kh, kw = op.attrs["kernel_hw"]
        return Cost(2 * g.size * (x.shape[1] // op.attrs["groups"]) * kh * kw, x.nbytes + g.nbytes,
                    op.result.type.nbytes)

    @classmethod
    def stage(cls, op):
        return {**_conv_attrs(op)}

    @classmethod
    def loop_nest(cls, op):
        """Axes (o, c, kh, kw, n, oh, ow): c counts one group's input channels."""
        (n, _, _, _), (_, o, oh, ow) = (v.type.shape for v in op.operands)
        _, c, kh, kw = op.result.type.shape
        return LoopNest((o, c, kh, kw, n, oh, ow), 3,
                        (_image(4, 1, (5, 2), (6, 3), op.attrs), _axes(4, 0, 5, 6)), _axes(0, 1, 2, 3))


def _axes(*axes: int) -> tuple:
    """Dimensions that each follow one loop axis."""
    return tuple(((a, 1.0),) for a in axes)


def _image(n: int, c: int, rows: tuple[int, int], cols: tuple[int, int], attrs) -> tuple:
    """An NCHW input read through windows: (output position, kernel offset) axes per spatial dim."""
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    return (((n, 1.0),), ((c, 1.0),), ((rows[0], float(sh)), (rows[1], float(dh))),
            ((cols[0], float(sw)), (cols[1], float(dw))))


class Pool2dGrad(OpDef):
    """A pooling op's gradient for its input, an NCHW tensor of the input's size."""

    kind = FusionKind.opaque
    attrs = Pool2d.attrs

    @classmethod
    def check(cls, attrs, x_hw, g: TensorType) -> None:
        _check_pairs(attrs, "kernel")
        if g.rank != 4 or not g.dtype.is_float:
            raise TypeRuleError(f"expects a float NCHW gradient, got {g}")
        _check_window_grad(x_hw, attrs["kernel"], attrs, Pool2d.stride(attrs), (1, 1), g)

    @classmethod
    def cost(cls, op):
        g = op.operands[-1].type
        base = super().cost(op)
        return Cost(g.size * op.attrs["kernel"][0] * op.attrs["kernel"][1], base.bytes_read, base.bytes_written)

    @classmethod
    def stage(cls, op):
        return {"mode": cls.mode, "kernel": op.attrs["kernel"],
                "stride": Pool2d.stride(op.attrs), "padding": op.attrs["padding"]}


@register
class MaxPool2dGrad(Pool2dGrad):
    """max_pool2d's gradient: (x, g) -> g added at each window's first maximum of x.

    Not differentiable itself: its gradient for x is zero almost everywhere, and a
    second-order gradient through max pooling is not supported.
    """

    name = "max_pool2d_grad"
    mode = "max"
    arity = 2
    differentiable = False

    @classmethod
    def infer(cls, types, attrs):
        x, g = types
        if x.rank != 4 or x.dtype != g.dtype or x.shape[:2] != g.shape[:2]:
            raise TypeRuleError(f"input {x} and gradient {g} do not match")
        cls.check(attrs, x.shape[2:], g)
        return [x]

    @classmethod
    def ref(cls, attrs, x, g):
        (kh, kw), stride, padding = attrs["kernel"], Pool2d.stride(attrs), attrs["padding"]
        windows = _windows(x, kh, kw, stride, padding, fill=-np.inf)
        first = windows.reshape(*windows.shape[:4], kh * kw).argmax(-1)
        picks = (np.arange(kh * kw) == first[..., None]).reshape(windows.shape)
        (g,) = _wide16(g)
        out = np.zeros((*x.shape[:2], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]), dtype=g.dtype)
        _scatter_windows(out, picks * g[..., None, None], kh, kw, stride)
        return _crop(out, padding)


@register
class AvgPool2dGrad(Pool2dGrad):
    """avg_pool2d's gradient: g [N,C,OH,OW] spread evenly over each window of an input of size input_hw."""

    name = "avg_pool2d_grad"
    mode = "avg"
    arity = 1
    attrs = {**Pool2d.attrs, "input_hw": Attr("ints")}

    @classmethod
    def infer(cls, types, attrs):
        (g,) = types
        _check_pairs(attrs, "input_hw")
        cls.check(attrs, attrs["input_hw"], g)
        return [g.with_shape((*g.shape[:2], *attrs["input_hw"]))]

    @classmethod
    def ref(cls, attrs, g):
        (kh, kw), padding, (h, w) = attrs["kernel"], attrs["padding"], attrs["input_hw"]
        (g,) = _wide16(g)
        out = np.zeros((*g.shape[:2], h + 2 * padding[0], w + 2 * padding[1]), dtype=g.dtype)
        share = np.broadcast_to((g / (kh * kw))[..., None, None], (*g.shape, kh, kw))
        _scatter_windows(out, share, kh, kw, Pool2d.stride(attrs))
        return _crop(out, padding)

    @classmethod
    def vjp(cls, b, op, grads):
        return [b.avg_pool2d(grads[0], **{k: op.attrs[k] for k in Pool2d.attrs})]
