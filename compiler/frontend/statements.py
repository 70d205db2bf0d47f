"""Lowering RDL statements: declarations, bindings and control flow.

`STATEMENTS` maps each statement rule of the grammar to its handler
`handler(ctx, node, scope)`; `Context.exec_block` dispatches through it.
"""
from __future__ import annotations

import re
from typing import Callable

import lark

from compiler.frontend.calls import arguments, lookup
from compiler.frontend.context import Context, Handler, Return, Scope
from compiler.frontend.expressions import boolean, interpolate
from compiler.frontend.source import suggest
from compiler.frontend.values import describe, format_value, is_int, is_number
from ir.dtypes import DType
from ir.graph import Role, Value
from ir.init import INITIALIZERS, Init
from ir.types import TensorType

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
#: the modes lowering one step of generation (the others: "train" and "forward")
GENERATION_MODES = ("prefill", "decode")

#: statement rule of the grammar -> its handler
STATEMENTS: dict[str, Handler] = {}


def statement(*rules: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of statement `rules`."""
    def register(handler: Handler) -> Handler:
        STATEMENTS.update(dict.fromkeys(rules, handler))
        return handler
    return register


def top_level(ctx: Context, node, what: str) -> None:
    if ctx.blocks:
        raise ctx.error(f"{what} belongs at the top level of the file", node)


def outside_functions(ctx: Context, node, what: str) -> None:
    if ctx.depth:
        raise ctx.error(f"{what} cannot appear inside a function", node)


# --- declarations ---------------------------------------------------------------------
@statement("model_decl")
def _model_decl(ctx: Context, node, scope):
    top_level(ctx, node, "'model'")


@statement("config_block")
def _config_block(ctx: Context, node, scope):
    top_level(ctx, node, "'config'")


@statement("def_stmt")
def _def_stmt(ctx: Context, node, scope):
    top_level(ctx, node, "'def'")


@statement("input_decl")
def _input_decl(ctx: Context, node, scope):
    outside_functions(ctx, node, "'input'")
    name, type_node = node.children
    if any(v.name == name for v in ctx.graph.inputs):
        raise ctx.error(f"input '{name}' declared twice", name)
    if str(name) in ctx.params:
        raise ctx.error(f"input '{name}' has the name of a param (at {ctx.param_where[str(name)]})", name)
    value = ctx.builder.input(str(name), tensor_type(ctx, type_node, scope))
    ctx.define(scope, name, value)


@statement("param_decl")
def _param_decl(ctx: Context, node, scope):
    path, type_node, init_node = node.children
    name = new_param_name(ctx, path)
    add_param(ctx, name, path, tensor_type(ctx, type_node, scope), initializer(ctx, init_node, scope))


@statement("cache_decl")
def _cache_decl(ctx: Context, node, scope):
    path, type_node = node.children
    if ctx.mode not in GENERATION_MODES:
        raise ctx.error(f"a cache exists only in a generation step (mode \"prefill\" or \"decode\"), "
                         f"not in mode \"{ctx.mode}\": declare it under 'if mode == \"decode\" ...'", node)
    name = new_param_name(ctx, path)
    value = add_param(ctx, name, path, tensor_type(ctx, type_node, scope), Init("zeros"), Role.state)
    ctx.caches[value] = name


def new_param_name(ctx: Context, path: lark.Tree) -> str:
    """`path` under the current prefix, checked to be a new, well-formed param name."""
    name = ".".join(filter(None, (ctx.prefix, ".".join(map(str, path.children)))))
    if not _PARAM_NAME.match(name):
        raise ctx.error(f"param name '{name}' must start with a letter or '_'", path)
    if any(v.name == name for v in ctx.graph.inputs):
        raise ctx.error(f"param '{name}' has the name of an input", path)
    if name in ctx.params:
        first = ctx.param_where.get(name)
        raise ctx.error(f"param '{name}' declared twice{f' (first at {first})' if first else ''}; "
                         f"give each call of a function with params its own scope", path)
    return name


def add_param(ctx: Context, name: str, path: lark.Tree, type: TensorType, init: Init,
              role: Role = Role.param) -> Value:
    ctx.params[name] = ctx.builder.param(name, type, init, role)
    ctx.param_where[name] = ctx.location(path)
    return ctx.params[name]


def tensor_type(ctx: Context, node: lark.Tree, scope: Scope) -> TensorType:
    dtype_token, *dims = node.children
    try:
        dtype = DType.parse(str(dtype_token))
    except ValueError as err:
        raise ctx.error(str(err), dtype_token) from None
    shape = []
    for dim in dims:
        if dim is None:
            continue
        size = ctx.eval(dim, scope)
        if not is_int(size) or size < 0:
            raise ctx.error(f"a dimension must be a non-negative integer, got {describe(size)}", dim)
        shape.append(size)
    return TensorType(tuple(shape), dtype)


def initializer(ctx: Context, node: lark.Tree, scope: Scope) -> Init:
    kind, args_node = node.children
    args, kwargs = arguments(ctx, args_node, scope)
    if args:
        raise ctx.error(f"initializer arguments must be named, e.g. {kind}(std=0.02)", node)
    if str(kind) not in INITIALIZERS:
        raise ctx.error(f"unknown initializer '{kind}'{suggest(str(kind), INITIALIZERS)}", kind)
    for key, value in kwargs.items():
        if not is_number(value) and not isinstance(value, str):
            raise ctx.error(f"initializer argument '{key}' must be a number, got {describe(value)}", node)
    try:
        return Init(str(kind), kwargs)
    except (ValueError, TypeError) as err:
        raise ctx.error(str(err), node) from None


# --- bindings ---------------------------------------------------------------------------
@statement("let_stmt")
def _let_stmt(ctx: Context, node, scope):
    name, expr = node.children
    ctx.define(scope, name, ctx.eval(expr, scope))


@statement("let_tuple")
def _let_tuple(ctx: Context, node, scope):
    *names, expr = node.children
    value = ctx.eval(expr, scope)
    if not isinstance(value, tuple) or len(value) != len(names):
        raise ctx.error(f"cannot unpack {describe(value)} into {len(names)} names", node)
    for name, item in zip(names, value):
        ctx.define(scope, name, item)


@statement("assign_stmt")
def _assign_stmt(ctx: Context, node, scope):
    name, expr = node.children
    value = ctx.eval(expr, scope)
    owner = scope.owner(str(name))
    if owner is None:
        raise ctx.error(f"undefined name '{name}' (define it with 'let {name} = ...')"
                         f"{suggest(str(name), scope.names())}", name)
    if owner is ctx.globals:
        raise ctx.error(f"cannot assign to '{name}': it is a config field, function or constant", name)
    owner.values[str(name)] = value


@statement("output_stmt")
def _output_stmt(ctx: Context, node, scope):
    outside_functions(ctx, node, "'output'")
    name, expr = node.children
    value = lookup(ctx, name, scope) if expr is None else ctx.eval(expr, scope)
    if not isinstance(value, Value):
        raise ctx.error(f"output '{name}' must be a tensor, got {describe(value)}", name)
    if str(name) in ctx.graph.outputs:
        raise ctx.error(f"output '{name}' declared twice", name)
    ctx.builder.output(str(name), value)
    if expr is not None:
        ctx.define(scope, name, value)


# --- control ------------------------------------------------------------------------------
@statement("scope_stmt")
def _scope_stmt(ctx: Context, node, scope):
    string, block = node.children
    with ctx.scoped(interpolate(ctx, string, scope), string):
        ctx.exec_body(block, scope)


@statement("for_stmt")
def _for_stmt(ctx: Context, node, scope):
    name, iterable, block = node.children
    items = ctx.eval(iterable, scope)
    if not isinstance(items, tuple):
        raise ctx.error(f"'for' needs a tuple or range(...), got {describe(items)}", iterable)
    for item in items:
        inner = Scope(scope)
        ctx.define(inner, name, item)
        ctx.exec_body(block, inner)


@statement("if_stmt")
def _if_stmt(ctx: Context, node, scope):
    cond, block, *rest = node.children
    clauses = [(cond, block)] + [tuple(c.children) for c in rest[:-1]]
    for test, body in clauses:
        if boolean(ctx, ctx.eval(test, scope), "'if'", test):
            return ctx.exec_body(body, Scope(scope))
    if rest and rest[-1] is not None:
        ctx.exec_body(rest[-1], Scope(scope))


@statement("train_block")
def _train_block(ctx: Context, node, scope):
    outside_functions(ctx, node, "'train'")
    if ctx.in_train:
        raise ctx.error("'train' blocks do not nest", node)
    if not ctx.training:
        return
    ctx.in_train = True
    try:
        ctx.exec_body(node.children[0], Scope(scope))
    finally:
        ctx.in_train = False


@statement("assert_stmt")
def _assert_stmt(ctx: Context, node, scope):
    cond, message = node.children
    if boolean(ctx, ctx.eval(cond, scope), "'assert'", cond):
        return
    text = ctx.source.text[cond.meta.start_pos:cond.meta.end_pos] if not cond.meta.empty else "condition"
    if message is not None:
        text = format_value(ctx.eval(message, scope))
    raise ctx.error(f"assertion failed: {text}", node)


@statement("return_stmt")
def _return_stmt(ctx: Context, node, scope):
    if not ctx.depth:
        raise ctx.error("'return' outside a function", node)
    raise Return(ctx.eval(node.children[0], scope))
