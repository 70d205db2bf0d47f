"""Lowering an RDL module to an IR graph.

- `config { name: type = default }` declares the model's fields (resolved by
  `compiler.config`); each field is a name visible everywhere.
- `input x: i32[B, S]` and `output y = expr` declare graph inputs and outputs, at the
  top level or in a `train { }` block, which is lowered only when compiling for training.
- `param path: f32[...] = init` declares the param `<prefix>.<path>`. A param is
  referred to by its path, relative to the current prefix or absolute.
- `scope "name" { }` extends the param-name prefix (it does not scope variables);
  `a.b.f(x)` calls function `f` with the prefix extended by `a.b`.
- `cache path: f32[...]` declares generation state (a KV cache: a zero-initialized `state`
  param) when lowering a generation step (`mode` "prefill" or "decode"); the builtin
  `cache_write(cache, update, starts, axis=)` writes it and records the param's update.
  The compile-time name `mode` says what is lowered: "train", "forward", "prefill", "decode".
- `let x = e` defines a variable, `x = e` rebinds it. `for`, `if` and `train` bodies
  are blocks of their own; a function body sees its arguments, the config fields and
  the functions, not the caller's variables.
- Everything but tensors is computed while lowering; loops are unrolled. Each op
  carries the `file:line:col` of the expression it comes from.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import lark

from compiler.config import TYPES, Field, Schema
from compiler.frontend.context import Context, Scope
from compiler.frontend.expressions import EXPRESSIONS
from compiler.frontend.parser import parse_tree
from compiler.frontend.source import Source
from compiler.frontend.statements import GENERATION_MODES, STATEMENTS
from compiler.frontend.values import CONSTANTS, Builtin, Function, OpRef, describe
from ir.errors import FrontendError, Location
from ir.graph import Graph, Value


@attrs.frozen(eq=False)
class Module:
    """A parsed model: its source, parse tree, graph name and config fields."""

    source: Source
    tree: lark.Tree
    name: str
    schema: Schema


def parse_module(source: Source) -> Module:
    """Parse `source` and read its `model` name and `config` fields."""
    tree = parse_tree(source)
    names = [s for s in tree.children if s.data == "model_decl"]
    configs = [s for s in tree.children if s.data == "config_block"]
    for extra in names[1:] + configs[1:]:
        raise source.error(f"'{'model' if extra.data == 'model_decl' else 'config'}' declared twice", extra)
    name = str(names[0].children[0]) if names else re.sub(r"[^A-Za-z0-9_.]", "_", Path(source.filename).stem)
    fields = _fields(source, configs[0]) if configs else ()
    return Module(source, tree, name or "model", Schema(fields))


def _fields(source: Source, block: lark.Tree) -> tuple[Field, ...]:
    fields: dict[str, Field] = {}
    for node in block.children:
        name, type_token, expr = node.children
        where = source.location(name)
        if str(name) in fields:
            raise source.error(f"config field '{name}' declared twice (first at {fields[str(name)].location})", name)
        if str(type_token) not in TYPES:
            raise source.error(f"unknown config type '{type_token}' (expected {', '.join(TYPES)})", type_token)
        default = _Default(source, expr)
        fields[str(name)] = Field(str(name), str(type_token), default, where, source.line(where.line))
    return tuple(fields.values())


@attrs.frozen(eq=False)
class _Default:
    """A config field's default expression, evaluated with the fields before it."""

    source: Source
    expr: lark.Tree

    def __call__(self, values: dict[str, Any]) -> Any:
        empty = Module(self.source, lark.Tree("start", []), "config", Schema())
        ctx = new_context(empty, values, training=False, mode="forward")
        value = ctx.eval(self.expr, Scope(ctx.globals, frame=True))
        if isinstance(value, (Value, Function, Builtin, OpRef)):
            raise self.source.error(f"a config default must be a compile-time value, got {describe(value)}",
                                    self.expr)
        return value


def lower(module: Module, config: dict[str, Any], training: bool = True, generate: str | None = None) -> Graph:
    """The forward graph of `module` with resolved `config` values; `training` adds `train` blocks;
    `generate` ("prefill" or "decode") lowers one step of generation instead (with its caches)."""
    if generate is not None and (training or generate not in GENERATION_MODES):
        raise ValueError(f"generate must be one of {GENERATION_MODES} and training off, got {generate!r}")
    ctx = new_context(module, config, training, generate or ("train" if training else "forward"))
    ctx.exec_block(module.tree.children, Scope(ctx.globals, frame=True))
    if not ctx.graph.outputs:
        raise FrontendError("the model declares no outputs (e.g. 'output logits = ...')",
                            Location(module.source.filename, 1, 1), module.source.line(1))
    return ctx.graph


def declares_caches(module: Module) -> bool:
    """Whether the module has `cache` declarations (it can be compiled for generation)."""
    return any(node.data == "cache_decl" for node in module.tree.iter_subtrees())


def new_context(module: Module, config: dict[str, Any], training: bool, mode: str) -> Context:
    """A lowering context for `module`: config fields, constants, `mode` and functions are global."""
    ctx = Context(module.source, Graph(module.name), mode=mode, training=training,
                  statements=STATEMENTS, expressions=EXPRESSIONS)
    ctx.globals.values.update(CONSTANTS)
    ctx.globals.values["mode"] = mode
    ctx.globals.values.update(config)
    for node in module.tree.children:
        if node.data == "def_stmt":
            _declare_function(ctx, node)
    return ctx


def _declare_function(ctx: Context, node: lark.Tree) -> None:
    name, params, body = node.children
    if str(name) in ctx.globals.values:
        existing = ctx.globals.values[str(name)]
        what = "function" if isinstance(existing, Function) else "config field or constant"
        raise ctx.error(f"'{name}' is already defined (as a {what})", name)
    ctx.globals.values[str(name)] = Function(str(name), _def_params(ctx, params), body, node)


def _def_params(ctx: Context, node: lark.Tree | None) -> tuple[tuple[str, lark.Tree | None], ...]:
    out: dict[str, lark.Tree | None] = {}
    for param in node.children if node is not None else ():
        if param is None:
            continue
        name, default = param.children
        if str(name) in out:
            raise ctx.error(f"parameter '{name}' repeated", name)
        out[str(name)] = default
    return tuple(out.items())
