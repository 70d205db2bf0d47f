"""Reverse-mode automatic differentiation over the IR.

`append_gradients(graph)` appends the backward pass of the scalar `loss` output to
the graph, in phase `bwd`: ordinary ops built by each op's `vjp` hook in the
registry, walked in reverse order, so every later pass can optimize them.

Only values that both depend on a trainable float param (`Role.param`) and feed
the loss take part; integer and bool values, and ops declared not
`differentiable`, carry no gradient. A value used several times gets the sum of
its uses' gradients. Fused kernels are inlined first (autodiff normally runs
before fusion). Gradient ops that turn out unused (e.g. a matmul's gradient for
its data input) are dropped.
"""
from __future__ import annotations

from ir.builder import Builder, make_op
from ir.errors import IRError
from ir.graph import Graph, Op, Phase, Role, Value
from ir.ops import lookup
from ir.rewrite import erase_unused, rewrite


def append_gradients(graph: Graph, loss_name: str = "loss") -> dict[str, Value]:
    """Append d(loss)/d(param) for every trainable param the loss depends on, by param name."""
    loss = scalar_loss(graph, loss_name)
    if any(op.region is not None for op in graph.ops):
        rewrite(graph, _inline_region)
        loss = graph.outputs[loss_name]
    trainable = [p for p in graph.params if p.role == Role.param and p.type.dtype.is_float]
    relevant = _relevant(graph, loss, {p.value for p in trainable})
    b = Builder(graph, ops=[])
    with b.in_phase(Phase.bwd):
        cotangents = _backprop(b, graph.ops, loss, relevant)
    grads = {p.name: cotangents[p.value] for p in trainable if p.value in cotangents}
    graph.ops.extend(erase_unused(b.ops, set(grads.values())))
    return grads


def scalar_loss(graph: Graph, loss_name: str = "loss") -> Value:
    """The graph's scalar float loss output, or IRError."""
    loss = graph.outputs.get(loss_name)
    if loss is None:
        raise IRError(f"graph @{graph.name} has no '{loss_name}' output to differentiate")
    if loss.type.shape != () or not loss.type.dtype.is_float:
        raise IRError(f"output '{loss_name}' must be a float scalar to differentiate, got {loss.type}")
    return loss


def _inline_region(b: Builder, op: Op) -> list[Value] | None:
    """A fused op replaced by copies of its region's ops (the rewrite inlines nested ones)."""
    if op.region is None:
        return None
    env = dict(zip(op.region.args, op.operands))
    for inner in op.region.ops:
        copy = make_op(inner.name, [env[v] for v in inner.operands], inner.attrs,
                       inner.locs or op.locs, op.phase, inner.region)
        b.ops.append(copy)
        env.update(zip(inner.results, copy.results))
    return [env[v] for v in op.region.results]


def _relevant(graph: Graph, loss: Value, sources: set[Value]) -> set[Value]:
    """Float values that depend differentiably on `sources` and that the loss depends on."""
    active = set(sources)
    for op in graph.ops:
        if lookup(op.name).differentiable and any(v in active for v in op.operands):
            active.update(r for r in op.results if r.type.dtype.is_float)
    needed = {loss}
    for op in reversed(graph.ops):
        if any(r in needed for r in op.results):
            needed.update(op.operands)
    return active & needed


def _backprop(b: Builder, ops: list[Op], loss: Value, relevant: set[Value]) -> dict[Value, Value]:
    """Cotangents of every relevant value, from a cotangent of 1 for the loss."""
    cotangents = {loss: b.scalar(1.0, loss.type.dtype)}
    for op in reversed(ops):
        if not any(r in cotangents for r in op.results):
            continue
        with b.at(*op.locs):
            for operand, grad in zip(op.operands, _vjp(b, op, cotangents)):
                if grad is None or operand not in relevant:
                    continue
                if grad.type != operand.type:
                    raise AssertionError(f"'{op.name}' VJP gave {grad.type} for a {operand.type} operand")
                seen = cotangents.get(operand)
                cotangents[operand] = grad if seen is None else b.add(seen, grad)
    return cotangents


def _vjp(b: Builder, op: Op, cotangents: dict[Value, Value]) -> list[Value | None]:
    opdef = lookup(op.name)
    if opdef.vjp is None:
        where = f" at {op.locs[0]}" if op.locs else ""
        raise IRError(f"cannot differentiate '{op.name}'{where}: the op declares no gradient")
    grads = [cotangents.get(r) or b.full(shape=r.type.shape, value=0.0, dtype=r.type.dtype) for r in op.results]
    return opdef.vjp(b, op, grads)
