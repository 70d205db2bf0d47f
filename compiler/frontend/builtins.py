"""Helpers callable from RDL besides the IR ops: compile-time utilities and shape helpers.

Each helper is `fn(ctx, node, *args, **kwargs)`: `ctx` is the lowering context (for
`ctx.op` and `ctx.error`), `node` the call being lowered. Shape helpers resolve everything
at compile time (`reshape(x, [B, -1])`) and emit plain IR ops.
"""
from __future__ import annotations

import math
from typing import Any

from compiler.frontend.context import Context
from compiler.frontend.values import Builtin, describe, is_int, is_number
from ir.graph import Value

#: the longest tuple `range` may make
MAX_RANGE = 100_000


def tensor(ctx: Context, node, value: Any, what: str) -> Value:
    if not isinstance(value, Value):
        raise ctx.error(f"{what} must be a tensor, got {describe(value)}", node)
    return value


def integer(ctx: Context, node, value: Any, what: str) -> int:
    if not is_int(value):
        raise ctx.error(f"{what} must be an integer, got {describe(value)}", node)
    return value


def ints(ctx: Context, node, value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(is_int(v) for v in value):
        raise ctx.error(f"{what} must be a list of integers, got {describe(value)}", node)
    return value


def axis_of(ctx: Context, node, axis: Any, rank: int, what: str = "axis") -> int:
    """`axis` made non-negative, or an error naming the rank."""
    axis = integer(ctx, node, axis, what)
    if not -rank <= axis < rank:
        raise ctx.error(f"{what} {axis} out of range for a tensor of rank {rank}", node)
    return axis % rank


def _range(ctx, node, start, stop=None, step=1):
    bounds = (start, 0 if stop is None else stop, step)
    for value in bounds:
        integer(ctx, node, value, "a range bound")
    if step == 0:
        raise ctx.error("range step must not be zero", node)
    values = range(start, stop, step) if stop is not None else range(start)
    if len(values) > MAX_RANGE:
        raise ctx.error(f"range of {len(values)} values is too long (at most {MAX_RANGE})", node)
    return tuple(values)


def _len(ctx, node, value):
    if isinstance(value, Value):
        if not value.type.rank:
            raise ctx.error(f"len() of a rank-0 {describe(value)}", node)
        return value.type.shape[0]
    if isinstance(value, (tuple, str)):
        return len(value)
    raise ctx.error(f"len() needs a tuple, string or tensor, got {describe(value)}", node)


def _reshape(ctx, node, x, shape):
    x = tensor(ctx, node, x, "reshape's operand")
    dims = list(ints(ctx, node, shape, "reshape's shape"))
    known = math.prod(d for d in dims if d != -1)
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ctx.error(f"reshape's shape {dims} may hold one -1 and otherwise sizes >= 0", node)
    if -1 in dims and known and x.type.size % known == 0:
        dims[dims.index(-1)] = x.type.size // known
    if -1 in dims or math.prod(dims) != x.type.size:
        raise ctx.error(f"cannot reshape {x.type} ({x.type.size} elements) to {list(shape)}", node)
    return x if tuple(dims) == x.type.shape else ctx.op("reshape", [x], {"shape": tuple(dims)}, node)


def _permute(ctx, node, x, dims):
    x = tensor(ctx, node, x, "permute's operand")
    perm = ints(ctx, node, dims, "the permutation")
    if len(perm) != x.type.rank:
        raise ctx.error(f"permutation {list(perm)} needs {x.type.rank} axes for {x.type}", node)
    perm = tuple(axis_of(ctx, node, p, x.type.rank, "permutation axis") for p in perm)
    if sorted(perm) != list(range(x.type.rank)):
        raise ctx.error(f"{list(dims)} is not a permutation of {x.type.rank} axes", node)
    return x if perm == tuple(range(x.type.rank)) else ctx.op("transpose", [x], {"perm": perm}, node)


def _swapaxes(ctx, node, x, a, b):
    x = tensor(ctx, node, x, "swapaxes' operand")
    perm = list(range(x.type.rank))
    a, b = axis_of(ctx, node, a, x.type.rank), axis_of(ctx, node, b, x.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return _permute(ctx, node, x, tuple(perm))


def _transpose(ctx, node, x, perm=None):
    """With no permutation: swap the last two axes (a matrix transpose)."""
    x = tensor(ctx, node, x, "transpose's operand")
    if perm is not None:
        return _permute(ctx, node, x, perm)
    if x.type.rank < 2:
        raise ctx.error(f"transpose needs a tensor of rank >= 2, got {x.type}", node)
    return _swapaxes(ctx, node, x, -1, -2)


def _unsqueeze(ctx, node, x, axis):
    x = tensor(ctx, node, x, "unsqueeze's operand")
    axis = axis_of(ctx, node, axis, x.type.rank + 1)
    shape = x.type.shape[:axis] + (1,) + x.type.shape[axis:]
    return ctx.op("reshape", [x], {"shape": shape}, node)


def _squeeze(ctx, node, x, axis):
    x = tensor(ctx, node, x, "squeeze's operand")
    axis = axis_of(ctx, node, axis, x.type.rank)
    if x.type.shape[axis] != 1:
        raise ctx.error(f"cannot squeeze axis {axis} of size {x.type.shape[axis]} in {x.type}", node)
    return ctx.op("reshape", [x], {"shape": x.type.shape[:axis] + x.type.shape[axis + 1:]}, node)


def _flatten(ctx, node, x, start=1):
    """Merge the axes from `start` on into one."""
    x = tensor(ctx, node, x, "flatten's operand")
    start = axis_of(ctx, node, start, x.type.rank, "start axis")
    return _reshape(ctx, node, x, x.type.shape[:start] + (-1,))


def _split(ctx, node, x, parts, axis=-1):
    """`parts` equal slices along `axis`, as a tuple."""
    x = tensor(ctx, node, x, "split's operand")
    parts = integer(ctx, node, parts, "the number of parts")
    axis = axis_of(ctx, node, axis, x.type.rank)
    size = x.type.shape[axis]
    if parts < 1 or size % parts:
        raise ctx.error(f"cannot split axis {axis} of size {size} of {x.type} into {parts} equal parts", node)
    step, out = size // parts, []
    for i in range(parts):
        starts = tuple(i * step if a == axis else 0 for a in range(x.type.rank))
        stops = tuple((i + 1) * step if a == axis else d for a, d in enumerate(x.type.shape))
        out.append(ctx.op("slice", [x], {"starts": starts, "stops": stops}, node))
    return tuple(out)


def _cache_write(ctx, node, cache, update, starts, axis):
    """Write `update` into a declared cache at each row's start along `axis`; the result is the
    cache's new value (and the update of its param)."""
    cache = tensor(ctx, node, cache, "cache_write's cache")
    name = ctx.caches.get(cache)
    if name is None:
        raise ctx.error(f"cache_write needs a tensor declared with 'cache', got {describe(cache)}", node)
    if name in ctx.graph.updates:
        raise ctx.error(f"cache '{name}' is written twice in one step", node)
    operands = [cache, tensor(ctx, node, update, "cache_write's update"),
                tensor(ctx, node, starts, "cache_write's starts")]
    written = ctx.op("dynamic_update_slice", operands, {"axis": axis_of(ctx, node, axis, cache.type.rank)}, node)
    ctx.builder.update(name, written)
    return written


def _number(cast):
    def convert(ctx, node, value):
        if not is_number(value) and not (cast is str and isinstance(value, str)):
            raise ctx.error(f"{cast.__name__}() needs a compile-time number, got {describe(value)}"
                           + ("; for tensors use cast(x, dtype=...)" if isinstance(value, Value) else ""), node)
        try:
            return cast(value)
        except (OverflowError, ValueError) as err:
            raise ctx.error(f"{cast.__name__}({value}): {err}", node) from None
    return convert


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("range", _range), Builtin("len", _len), Builtin("reshape", _reshape),
    Builtin("transpose", _transpose), Builtin("permute", _permute), Builtin("swapaxes", _swapaxes),
    Builtin("unsqueeze", _unsqueeze), Builtin("squeeze", _squeeze), Builtin("flatten", _flatten),
    Builtin("split", _split), Builtin("int", _number(int)), Builtin("float", _number(float)),
    Builtin("str", _number(str)), Builtin("cache_write", _cache_write),
)}
