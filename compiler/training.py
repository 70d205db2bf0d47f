"""Training compilation: a forward graph with a scalar `loss` becomes one training step.

`build_training_graph(forward, options)` returns a new graph holding, in order,
the forward ops (phase `fwd`), the backward pass (`bwd`, `compiler.autodiff`),
the global gradient norm and, with `max_grad_norm`, the clipping coefficient
(`gradnorm`), and the optimizer update (`opt`, `compiler.optimizers`), which
scales each gradient by that coefficient as it reads it. For data parallelism (`data_parallel`),
each gradient is all-reduced across the `world_size` replicas between the
backward pass and the clipping (`allreduce`), so clipping and the optimizer see
the global gradient: the graph takes the input `replica_weight` (f32[]), this
replica's share of the global batch's loss weight (its completion tokens over
the global batch's; 1 / world_size for equal shares), and sums `weight * grad`
over the replicas, which is the gradient of the global batch's mean loss (all
gradients in one flat f32 buffer, one all-reduce). It keeps every forward output (`loss` and
metrics), adds the output `grad_norm` (the pre-clip global L2 norm, f32[]) and
the input `lr` (f32[]), and records in `updates` the new value of every trained
param and of every optimizer state. A param the loss does not depend on gets no
gradient and is left unchanged (as PyTorch skips params whose grad is None).
"""
from __future__ import annotations

from typing import Annotated, Callable, Literal

import pydantic
from pydantic_core import PydanticCustomError

from compiler.autodiff import append_gradients
from compiler.optimizers import OPTIMIZERS, clipped, global_norm, step_counter
from ir.builder import Builder
from ir.dtypes import DType
from ir.errors import IRError, config_error
from ir.graph import Graph, Op, Param, Phase, Region, Value
from ir.types import TensorType

#: data parallel: the input giving this replica's share of the global batch's loss weight
REPLICA_WEIGHT = "replica_weight"
#: the replica group gradients are all-reduced over
GROUP = "data"

Beta = Annotated[float, pydantic.Field(ge=0.0, lt=1.0)]


class TrainingOptions(pydantic.BaseModel):
    """What shapes the training graph; the learning rate is a run-time input instead."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["sgd", "adamw"] = "adamw"
    #: SGD momentum (0: plain SGD, no momentum buffer)
    momentum: float = pydantic.Field(0.0, ge=0.0)
    #: SGD: L2 penalty added to the gradient; AdamW: decoupled decay p *= 1 - lr * weight_decay
    weight_decay: float = pydantic.Field(0.0, ge=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = pydantic.Field(1e-8, gt=0.0)
    #: clip the global gradient norm to this value; None: no clipping (the norm is still an output)
    max_grad_norm: float | None = pydantic.Field(None, gt=0.0)
    #: one replica of a data-parallel group of `world_size`: gradients are all-reduced before clipping
    data_parallel: bool = False
    world_size: int = pydantic.Field(1, ge=1)
    #: data parallel: the all-reduce runs over RDU-to-RDU links instead of through the hosts (cost model)
    reduce_on_rdu: bool = False

    @pydantic.model_validator(mode="after")
    def _replicas_need_data_parallel(self) -> TrainingOptions:
        if (self.world_size > 1 or self.reduce_on_rdu) and not self.data_parallel:
            field = "world_size" if self.world_size > 1 else "reduce_on_rdu"
            raise PydanticCustomError("data_parallel_only", f"{field} needs data_parallel")
        return self

    @pydantic.field_validator("momentum")
    @classmethod
    def _momentum_is_for_sgd(cls, momentum: float, info: pydantic.ValidationInfo) -> float:
        if momentum and info.data.get("optimizer") != "sgd":
            raise PydanticCustomError("sgd_only", "applies to the sgd optimizer only (adamw has betas)")
        return momentum

    @classmethod
    def parse(cls, label: Callable[[str], str] = "training option '{}'".format, **values) -> TrainingOptions:
        """Options from plain values; ConfigError naming the first bad field as `label(field)`."""
        try:
            return cls(**values)
        except pydantic.ValidationError as err:
            raise config_error(err, label) from None


def build_training_graph(forward: Graph, options: TrainingOptions | None = None) -> Graph:
    """The training step of `forward` (left unchanged): fwd, bwd, gradnorm and opt ops."""
    options = options or TrainingOptions()
    if "loss" not in forward.outputs:
        raise IRError(f"graph @{forward.name} has no 'loss' output, so there is nothing to train (a model "
                      "declares it in its train block; an inference compile needs none)")
    graph = clone(forward)
    _check_free_names(graph)
    for op in graph.ops:
        op.phase = op.phase or Phase.fwd
    grads = append_gradients(graph)
    if not grads:
        raise IRError(f"graph @{graph.name}: no trainable param affects the loss, nothing to train")
    pairs = [(p, grads[p.name]) for p in graph.params if p.name in grads]
    b = Builder(graph)
    lr = b.input("lr", TensorType((), DType.f32))
    if options.data_parallel:
        weight = b.input(REPLICA_WEIGHT, TensorType((), DType.f32))
        with b.in_phase(Phase.allreduce):
            reduced = all_reduce_gradients(b, [g for _, g in pairs], weight, options.world_size)
            pairs = [(p, g) for (p, _), g in zip(pairs, reduced)]
    with b.in_phase(Phase.gradnorm):
        norm, coef = global_norm(b, [g for _, g in pairs], options.max_grad_norm)
    b.output("grad_norm", norm)
    with b.in_phase(Phase.opt):  # scaled where the optimizer reads them: no clipped copy in memory
        step_counter(b)
        scaled = clipped(b, [g for _, g in pairs], coef)
        OPTIMIZERS[options.optimizer](b, [(p, g) for (p, _), g in zip(pairs, scaled)], lr, options)
    return graph


def all_reduce_gradients(b: Builder, grads: list[Value], weight: Value, world_size: int) -> list[Value]:
    """Each gradient summed over the replicas, weighted by `weight`: one all-reduce of all of them
    flattened into one f32 buffer (one message per ring step, as DDP's gradient buckets), sliced back
    (each gradient keeps its type)."""
    flat = [_shaped(b, g if g.type.dtype == DType.f32 else b.cast(g, dtype=DType.f32), (g.type.size,)) for g in grads]
    buffer = flat[0] if len(flat) == 1 else b.concat(*flat, axis=0)
    total = b.all_reduce(b.mul(buffer, weight), op="sum", group=GROUP, world_size=world_size)
    out, start = [], 0
    for g in grads:
        part = _shaped(b, b.slice(total, starts=(start,), stops=(start + g.type.size,)), g.type.shape)
        out.append(part if g.type.dtype == DType.f32 else b.cast(part, dtype=g.type.dtype))
        start += g.type.size
    return out


def _shaped(b: Builder, value: Value, shape: tuple[int, ...]) -> Value:
    return value if value.type.shape == tuple(shape) else b.reshape(value, shape=tuple(shape))


def _check_free_names(graph: Graph) -> None:
    """The names training adds must not be taken already."""
    taken = [v.name for v in graph.inputs if v.name in ("lr", REPLICA_WEIGHT)]
    taken += [p.name for p in graph.params if p.name.startswith("optimizer.")]
    taken += [name for name in graph.outputs if name == "grad_norm"]
    if taken:
        raise IRError(f"graph @{graph.name} already uses '{taken[0]}', a name the training graph adds")


def clone(graph: Graph) -> Graph:
    """A copy of `graph` with fresh values and ops (attributes, types and locations are shared)."""
    env: dict[Value, Value] = {}

    def value(v: Value) -> Value:
        env[v] = Value(v.type, name=v.name)
        return env[v]

    inputs = [value(v) for v in graph.inputs]
    params = [Param(value(p.value), p.init, p.role) for p in graph.params]
    return Graph(graph.name, inputs, params, _clone_ops(graph.ops, env),
                 {k: env[v] for k, v in graph.outputs.items()}, {k: env[v] for k, v in graph.updates.items()})


def _clone_ops(ops: list[Op], env: dict[Value, Value]) -> list[Op]:
    out = []
    for op in ops:
        region = None
        if op.region is not None:
            args = [Value(a.type) for a in op.region.args]
            env.update(zip(op.region.args, args))
            region = Region(args, _clone_ops(op.region.ops, env), [env[v] for v in op.region.results])
        new = Op(op.name, [env[v] for v in op.operands], dict(op.attrs), region=region, locs=op.locs, phase=op.phase)
        new.results = [Value(r.type, new, r.index, r.name) for r in op.results]
        env.update(zip(op.results, new.results))
        out.append(new)
    return out
