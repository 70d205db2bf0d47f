"""Optimizers as graph code: global gradient-norm clipping, SGD and AdamW.

Each optimizer appends ops computing every trained param's new value and records
it in `graph.updates`. Its persistent state is `Role.state` params, updated the
same way, so a checkpoint saves it:

* `optimizer.step` (i32[], starts at 0): optimizer steps taken so far (t - 1
  during step t), for schedules and checkpoints.
* SGD with momentum: `optimizer.momentum_buffer.<param>`.
* AdamW: `optimizer.exp_avg.<param>` and `optimizer.exp_avg_sq.<param>`, and the
  bias corrections `optimizer.bias_correction1` and `optimizer.bias_correction2`
  (f32[]): 1 - beta**t, kept as c_t = (1 - beta) + beta * c_(t-1) from c_0 = 0.
  Computing 1 - beta**t from t in f32 would cancel catastrophically (for
  beta2 = 0.999 at t = 1 it is off by 1.3e-5 relative; PyTorch uses float64).

The learning rate is a run-time value (the graph input `lr`, f32[]), so a
schedule needs no recompile; the other hyperparameters are compile-time constants.
The formulas are PyTorch's (`torch.optim.SGD`, `torch.optim.AdamW`,
`torch.nn.utils.clip_grad_norm_`).
"""
from __future__ import annotations

from typing import Callable, Protocol

from ir.builder import Builder
from ir.dtypes import DType
from ir.graph import Param, Role, Value
from ir.init import Init
from ir.types import TensorType

STEP = "optimizer.step"
CLIP_EPS = 1e-6


class Hyper(Protocol):
    """The settings an optimizer reads (`compiler.training.TrainingOptions` has them)."""

    momentum: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float


class Constants:
    """Rank-0 constants built once per (value, dtype), ahead of the ops using them."""

    def __init__(self, b: Builder):
        self.b = b
        self.made: dict[tuple[float, DType], Value] = {}

    def __call__(self, value: float, like: Value | DType = DType.f32) -> Value:
        dtype = like if isinstance(like, DType) else like.type.dtype
        key = (float(value), dtype)
        if key not in self.made:
            self.made[key] = self.b.scalar(value, dtype)
        return self.made[key]


#: optimizer(b, [(param, gradient)], lr, hyper): appends ops and records the updates
Optimizer = Callable[[Builder, "list[tuple[Param, Value]]", Value, Hyper], None]


def state(b: Builder, kind: str, param: Param) -> Value:
    """A zero-initialized state tensor shaped like `param`, named `optimizer.<kind>.<param>`."""
    return b.param(f"optimizer.{kind}.{param.name}", param.type, Init("zeros"), Role.state)


def step_counter(b: Builder) -> None:
    """The step counter state, counting this step in its update."""
    step = b.param(STEP, TensorType((), DType.i32), Init("zeros"), Role.state)
    b.update(STEP, b.add(step, b.scalar(1, DType.i32)))


def bias_correction(b: Builder, c: Constants, index: int, beta: float) -> Value:
    """1 - beta**t for this step t, from state updated without cancellation."""
    prev = b.param(f"optimizer.bias_correction{index}", TensorType((), DType.f32), Init("zeros"), Role.state)
    new = b.add(c(1.0 - beta), b.mul(c(beta), prev))
    b.update(prev.name, new)
    return new


def global_norm(b: Builder, grads: list[Value], max_norm: float | None) -> tuple[Value, Value | None]:
    """(the global L2 norm of `grads` as f32, the clipping coefficient min(1, max_norm / (norm + 1e-6))
    or None without `max_norm`)."""
    squares = [_as(b, _sum_of_squares(b, g), DType.f32) for g in grads]
    total = squares[0]
    for square in squares[1:]:
        total = b.add(total, square)
    norm = b.sqrt(total)
    if max_norm is None:
        return norm, None
    c = Constants(b)
    return norm, b.minimum(b.div(c(max_norm), b.add(norm, c(CLIP_EPS))), c(1.0))


def _sum_of_squares(b: Builder, g: Value) -> Value:
    """sum(g * g), by rows first where g has them (a row per thread: a reduction to one
    number runs on one)."""
    square = b.mul(g, g)
    rank = len(g.type.shape)
    return b.sum(b.sum(square, axes=(rank - 1,)) if rank > 1 else square)


def clipped(b: Builder, grads: list[Value], coef: Value | None) -> list[Value]:
    """`grads` scaled by `coef` (unchanged without one)."""
    return grads if coef is None else [b.mul(g, _as(b, coef, g.type.dtype)) for g in grads]


def sgd(b: Builder, pairs: list[tuple[Param, Value]], lr: Value, hyper: Hyper) -> None:
    """p -= lr * buf, buf = momentum * buf + (g + weight_decay * p) (no buffer without momentum)."""
    c = Constants(b)
    for param, g in pairs:
        p = param.value
        if hyper.weight_decay:
            g = b.add(g, b.mul(c(hyper.weight_decay, p), p))
        if hyper.momentum:
            buf = state(b, "momentum_buffer", param)
            g = b.add(b.mul(c(hyper.momentum, p), buf), g)
            b.update(buf.name, g)
        b.update(param.name, b.sub(p, b.mul(_as(b, lr, p.type.dtype), g)))


def adamw(b: Builder, pairs: list[tuple[Param, Value]], lr: Value, hyper: Hyper) -> None:
    """AdamW with decoupled weight decay and bias correction."""
    c = Constants(b)
    beta1, beta2 = hyper.betas
    step_size = b.div(lr, bias_correction(b, c, 1, beta1))
    correction2 = b.sqrt(bias_correction(b, c, 2, beta2))
    decay = b.sub(c(1.0), b.mul(lr, c(hyper.weight_decay))) if hyper.weight_decay else None
    for param, g in pairs:
        p, dtype = param.value, param.type.dtype
        m, v = state(b, "exp_avg", param), state(b, "exp_avg_sq", param)
        new_m = b.add(m, b.mul(c(1.0 - beta1, p), b.sub(g, m)))
        new_v = b.add(b.mul(c(beta2, p), v), b.mul(c(1.0 - beta2, p), b.mul(g, g)))
        denom = b.add(b.div(b.sqrt(new_v), _as(b, correction2, dtype)), c(hyper.eps, p))
        decayed = b.mul(p, _as(b, decay, dtype)) if decay is not None else p
        b.update(param.name, b.sub(decayed, b.mul(_as(b, step_size, dtype), b.div(new_m, denom))))
        b.update(m.name, new_m)
        b.update(v.name, new_v)


OPTIMIZERS: dict[str, Optimizer] = {"sgd": sgd, "adamw": adamw}


def _as(b: Builder, value: Value, dtype: DType) -> Value:
    """`value` cast to `dtype` if it is not of it already."""
    return value if value.type.dtype == dtype else b.cast(value, dtype=dtype)
