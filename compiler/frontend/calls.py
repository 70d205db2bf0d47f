"""Names and calls in RDL: looking a name up, and calling functions, builtins and IR ops.

A name is a variable, config field, function, param (relative to the param-name prefix),
builtin or op. Calling a function runs its body's statements in a frame of its own.
"""
from __future__ import annotations

import contextlib
from typing import Any

import lark

from compiler.frontend.builtins import BUILTINS
from compiler.frontend.context import Context, Return, Scope
from compiler.frontend.source import suggest
from compiler.frontend.values import Builtin, Function, OpRef, describe, is_int
from ir.dtypes import DType
from ir.graph import Value
from ir.ops import REGISTRY

#: how deep function calls may nest
MAX_CALL_DEPTH = 64


def lookup(ctx: Context, token: lark.Token, scope, calling: bool = False) -> Any:
    """A variable, config field, function, param (relative to the scope), builtin or op."""
    name = str(token)
    found, value = scope.get(name)
    if found:
        return value
    param = ctx.param_named(name)
    if param is not None:
        return param
    if name in BUILTINS:
        return BUILTINS[name]
    if name in REGISTRY:
        return OpRef(name)
    if calling:
        callables = {n for n in scope.names() if isinstance(scope.get(n)[1], Function)}
        raise ctx.error(f"unknown op or function '{name}'"
                         f"{suggest(name, callables | set(BUILTINS) | set(REGISTRY))}", token)
    raise ctx.error(f"undefined name '{name}'{suggest(name, visible_names(ctx, scope))}", token)


def arguments(ctx: Context, node, scope) -> tuple[list, dict]:
    args, kwargs = [], {}
    for arg in node.children if node is not None else ():
        if arg is None:
            continue
        if arg.data != "kwarg":
            if kwargs:
                raise ctx.error("positional argument after keyword arguments", arg)
            args.append(ctx.eval(arg, scope))
            continue
        name, expr = arg.children
        if str(name) in kwargs:
            raise ctx.error(f"keyword argument '{name}' given twice", name)
        kwargs[str(name)] = ctx.eval(expr, scope)
    return args, kwargs


def call(ctx: Context, target: Any, args: list, kwargs: dict, node) -> Any:
    if isinstance(target, Function):
        return call_function(ctx, target, args, kwargs, node)
    if isinstance(target, Builtin):
        return call_builtin(ctx, target, args, kwargs, node)
    if isinstance(target, OpRef):
        return call_op(ctx, target.name, args, kwargs, node)
    raise ctx.error(f"{describe(target)} is not callable", node)


def call_builtin(ctx: Context, target: Builtin, args: list, kwargs: dict, node) -> Any:
    try:
        target.signature.bind(ctx, node, *args, **kwargs)
    except TypeError as err:
        raise ctx.error(f"bad arguments to '{target.name}': {err}", node) from None
    return target.fn(ctx, node, *args, **kwargs)


def call_op(ctx: Context, name: str, args: list, kwargs: dict, node) -> Any:
    """An IR op: tensors (or numbers) are operands, keyword arguments are attributes."""
    for key, value in kwargs.items():
        if isinstance(value, (Value, Function, Builtin, OpRef)):
            raise ctx.error(f"attribute '{key}' of '{name}' must be a compile-time value, "
                             f"got {describe(value)}", node)
    tensors = [a for a in args if isinstance(a, Value)]
    if len(tensors) < len(args):
        if not tensors:
            raise ctx.error(f"'{name}' needs a tensor operand, got {describe(args[0])}", node)
        like = next((t.type.dtype for t in tensors if t.type.dtype.is_float),
                    next((t.type.dtype for t in tensors if t.type.dtype != DType.bool), tensors[0].type.dtype))
        args = [a if isinstance(a, Value) else lift(ctx, a, like, node, f"'{name}'") for a in args]
    return ctx.op(name, args, kwargs, node)


def lift(ctx: Context, value: Any, dtype: DType, node, context: str) -> Value:
    """A Python scalar as a rank-0 tensor of `dtype`."""
    if isinstance(value, bool):
        ok = dtype == DType.bool
    elif is_int(value):
        ok = dtype != DType.bool
    elif isinstance(value, float):
        ok = dtype.is_float
    else:
        raise ctx.error(f"cannot use {describe(value)} as a tensor operand of {context}", node)
    if not ok:
        raise ctx.error(f"dtype mismatch in {context}: {describe(value)} with a tensor of dtype {dtype} "
                         f"(use cast(x, dtype=...))", node)
    return ctx.op("full", [], {"shape": (), "value": float(value), "dtype": dtype}, node)


def call_function(ctx: Context, fn: Function, args: list, kwargs: dict, node, prefix: str = "") -> Any:
    if ctx.depth >= MAX_CALL_DEPTH:
        raise ctx.error(f"function calls nest more than {MAX_CALL_DEPTH} deep (endless recursion?)", node)
    frame = bind(ctx, fn, args, kwargs, node)
    with ctx.scoped(prefix, node) if prefix else contextlib.nullcontext():
        ctx.depth += 1
        try:
            ctx.exec_body(fn.body, frame)
        except Return as ret:
            return ret.value
        finally:
            ctx.depth -= 1
    return None


def bind(ctx: Context, fn: Function, args: list, kwargs: dict, node) -> Scope:
    names = [name for name, _ in fn.params]
    if len(args) > len(names):
        raise ctx.error(f"'{fn.name}' takes {len(names)} argument(s), got {len(args)}", node)
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise ctx.error(f"'{fn.name}' has no parameter '{key}'{suggest(key, names)}", node)
        if key in bound:
            raise ctx.error(f"'{fn.name}' got two values for '{key}'", node)
        bound[key] = value
    frame = Scope(ctx.globals, frame=True)
    for name, default in fn.params:
        if name not in bound:
            if default is None:
                raise ctx.error(f"'{fn.name}' is missing argument '{name}'", node)
            bound[name] = ctx.eval(default, Scope(ctx.globals, frame=True))
        frame.values[name] = bound[name]
    return frame


def visible_names(ctx: Context, scope: Scope) -> set[str]:
    relative = {p[len(ctx.prefix) + 1:] for p in ctx.params if ctx.prefix and p.startswith(ctx.prefix + ".")}
    return scope.names() | set(ctx.params) | relative | set(BUILTINS) | set(REGISTRY)
