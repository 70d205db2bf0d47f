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

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

import attrs
import lark

from compiler.config import TYPES, Field, Schema
from compiler.frontend.builtins import BUILTINS
from compiler.frontend.expressions import Expressions
from compiler.frontend.parser import parse_tree
from compiler.frontend.source import Source, suggest
from compiler.frontend.values import CONSTANTS, Builtin, Function, OpRef, describe, format_value, is_int, is_number
from ir.builder import Builder
from ir.dtypes import DType
from ir.errors import FrontendError, Location
from ir.graph import Graph, Role, Value
from ir.init import INITIALIZERS, Init
from ir.ops import REGISTRY
from ir.types import TensorType

#: how deep function calls may nest, and how many lowering steps a model may take
MAX_CALL_DEPTH = 64
MAX_STEPS = 5_000_000

_SCOPE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
#: the modes lowering one step of generation (the others: "train" and "forward")
GENERATION_MODES = ("prefill", "decode")


class Scope:
    """Variables of one block; a `frame` (function body, top level) ends the shadowing check."""

    def __init__(self, parent: Scope | None = None, frame: bool = False):
        self.values: dict[str, Any] = {}
        self.where: dict[str, Location | None] = {}
        self.parent = parent
        self.frame = frame

    def get(self, name: str) -> tuple[bool, Any]:
        owner = self.owner(name)
        return (True, owner.values[name]) if owner else (False, None)

    def owner(self, name: str) -> Scope | None:
        scope = self
        while scope is not None and name not in scope.values:
            scope = scope.parent
        return scope

    def conflict(self, name: str) -> Scope | None:
        """The block of this frame already holding `name`, if any."""
        scope = self
        while scope is not None:
            if name in scope.values:
                return scope
            if scope.frame:
                return None
            scope = scope.parent
        return None

    def names(self) -> set[str]:
        scope, out = self, set()
        while scope is not None:
            out |= set(scope.values)
            scope = scope.parent
        return out


class _Return(Exception):
    def __init__(self, value: Any):
        super().__init__()
        self.value = value


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
        lowerer = Lowerer(empty, values, training=False)
        value = lowerer.eval(self.expr, Scope(lowerer.globals, frame=True))
        if isinstance(value, (Value, Function, Builtin, OpRef)):
            raise self.source.error(f"a config default must be a compile-time value, got {describe(value)}",
                                    self.expr)
        return value


def lower(module: Module, config: dict[str, Any], training: bool = True, generate: str | None = None) -> Graph:
    """The forward graph of `module` with resolved `config` values; `training` adds `train` blocks;
    `generate` ("prefill" or "decode") lowers one step of generation instead (with its caches)."""
    if generate is not None and (training or generate not in GENERATION_MODES):
        raise ValueError(f"generate must be one of {GENERATION_MODES} and training off, got {generate!r}")
    return Lowerer(module, config, training, generate).run()


def declares_caches(module: Module) -> bool:
    """Whether the module has `cache` declarations (it can be compiled for generation)."""
    return any(node.data == "cache_decl" for node in module.tree.iter_subtrees())


class Lowerer(Expressions):
    """Executes a module's statements, building the graph as it goes."""

    def __init__(self, module: Module, config: dict[str, Any], training: bool, generate: str | None = None):
        self.module = module
        self.source = module.source
        self.training = training
        self.mode = generate or ("train" if training else "forward")
        #: each declared cache's value -> its param name
        self.caches: dict[Value, str] = {}
        self.graph = Graph(module.name)
        self.builder = Builder(self.graph)
        self.params: dict[str, Value] = {}
        self.param_where: dict[str, Location | None] = {}
        self.prefix = ""
        self.depth = 0
        self.blocks = 0
        self.in_train = False
        self.steps = 0
        self.embedded: dict[tuple, lark.Tree] = {}
        self.globals = Scope(frame=True)
        self.globals.values.update(CONSTANTS)
        self.globals.values["mode"] = self.mode
        self.globals.values.update(config)
        self.collect_functions()

    def collect_functions(self) -> None:
        for node in self.module.tree.children:
            if node.data != "def_stmt":
                continue
            name, params, body = node.children
            if str(name) in self.globals.values:
                existing = self.globals.values[str(name)]
                what = "function" if isinstance(existing, Function) else "config field or constant"
                raise self.error(f"'{name}' is already defined (as a {what})", name)
            self.globals.values[str(name)] = Function(str(name), self.def_params(params), body, node)

    def def_params(self, node: lark.Tree | None) -> tuple[tuple[str, lark.Tree | None], ...]:
        out: dict[str, lark.Tree | None] = {}
        for param in node.children if node is not None else ():
            if param is None:
                continue
            name, default = param.children
            if str(name) in out:
                raise self.error(f"parameter '{name}' repeated", name)
            out[str(name)] = default
        return tuple(out.items())

    def run(self) -> Graph:
        self.exec_block(self.module.tree.children, Scope(self.globals, frame=True))
        if not self.graph.outputs:
            raise FrontendError("the model declares no outputs (e.g. 'output logits = ...')",
                                Location(self.source.filename, 1, 1), self.source.line(1))
        return self.graph

    # --- helpers ------------------------------------------------------------------------
    def error(self, message: str, node=None) -> FrontendError:
        return self.source.error(message, node)

    def location(self, node) -> Location | None:
        return self.source.location(node)

    def tick(self, node) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.error(f"lowering takes over {MAX_STEPS} steps (an endless loop?)", node)

    def param_named(self, path: str) -> Value | None:
        """The param `path` names: relative to the current prefix first, then absolute."""
        if self.prefix and f"{self.prefix}.{path}" in self.params:
            return self.params[f"{self.prefix}.{path}"]
        return self.params.get(path)

    def visible_names(self, scope: Scope) -> set[str]:
        relative = {p[len(self.prefix) + 1:] for p in self.params if self.prefix and p.startswith(self.prefix + ".")}
        return scope.names() | set(self.params) | relative | set(BUILTINS) | set(REGISTRY)

    def parse_embedded(self, text: str, origin: Location) -> lark.Tree:
        return parse_tree(self.source, text, start="expr", origin=origin)

    def define(self, scope: Scope, token: lark.Token, value: Any) -> None:
        name = str(token)
        holder = scope.conflict(name)
        if holder is not None:
            first = holder.where.get(name)
            raise self.error(f"'{name}' is already defined{f' (at {first})' if first else ''}; "
                             f"use '{name} = ...' to change it", token)
        scope.values[name] = value
        scope.where[name] = self.location(token)

    def exec_block(self, statements: list, scope: Scope) -> None:
        for statement in statements:
            self.tick(statement)
            getattr(self, f"_stmt_{statement.data}")(statement, scope)

    def exec_body(self, block: lark.Tree, scope: Scope) -> None:
        self.blocks += 1
        try:
            self.exec_block(block.children, scope)
        finally:
            self.blocks -= 1

    def top_level(self, node, what: str) -> None:
        if self.blocks:
            raise self.error(f"{what} belongs at the top level of the file", node)

    def outside_functions(self, node, what: str) -> None:
        if self.depth:
            raise self.error(f"{what} cannot appear inside a function", node)

    @contextlib.contextmanager
    def scoped(self, name: str, node) -> Iterator[None]:
        if not _SCOPE_NAME.match(name):
            raise self.error(f"scope name '{name}' must be dot-separated letters, digits and '_'", node)
        saved = self.prefix
        self.prefix = f"{saved}.{name}" if saved else name
        try:
            yield
        finally:
            self.prefix = saved

    # --- declarations ---------------------------------------------------------------------
    def _stmt_model_decl(self, node, scope):
        self.top_level(node, "'model'")

    def _stmt_config_block(self, node, scope):
        self.top_level(node, "'config'")

    def _stmt_def_stmt(self, node, scope):
        self.top_level(node, "'def'")

    def _stmt_input_decl(self, node, scope):
        self.outside_functions(node, "'input'")
        name, type_node = node.children
        if any(v.name == name for v in self.graph.inputs):
            raise self.error(f"input '{name}' declared twice", name)
        if str(name) in self.params:
            raise self.error(f"input '{name}' has the name of a param (at {self.param_where[str(name)]})", name)
        value = self.builder.input(str(name), self.tensor_type(type_node, scope))
        self.define(scope, name, value)

    def _stmt_param_decl(self, node, scope):
        path, type_node, init_node = node.children
        name = self.new_param_name(path)
        self.add_param(name, path, self.tensor_type(type_node, scope), self.initializer(init_node, scope))

    def _stmt_cache_decl(self, node, scope):
        path, type_node = node.children
        if self.mode not in GENERATION_MODES:
            raise self.error(f"a cache exists only in a generation step (mode \"prefill\" or \"decode\"), "
                             f"not in mode \"{self.mode}\": declare it under 'if mode == \"decode\" ...'", node)
        name = self.new_param_name(path)
        value = self.add_param(name, path, self.tensor_type(type_node, scope), Init("zeros"), Role.state)
        self.caches[value] = name

    def new_param_name(self, path: lark.Tree) -> str:
        """`path` under the current prefix, checked to be a new, well-formed param name."""
        name = ".".join(filter(None, (self.prefix, ".".join(map(str, path.children)))))
        if not _PARAM_NAME.match(name):
            raise self.error(f"param name '{name}' must start with a letter or '_'", path)
        if any(v.name == name for v in self.graph.inputs):
            raise self.error(f"param '{name}' has the name of an input", path)
        if name in self.params:
            first = self.param_where.get(name)
            raise self.error(f"param '{name}' declared twice{f' (first at {first})' if first else ''}; "
                             f"give each call of a function with params its own scope", path)
        return name

    def add_param(self, name: str, path: lark.Tree, type: TensorType, init: Init, role: Role = Role.param) -> Value:
        self.params[name] = self.builder.param(name, type, init, role)
        self.param_where[name] = self.location(path)
        return self.params[name]

    def tensor_type(self, node: lark.Tree, scope: Scope) -> TensorType:
        dtype_token, *dims = node.children
        try:
            dtype = DType.parse(str(dtype_token))
        except ValueError as err:
            raise self.error(str(err), dtype_token) from None
        shape = []
        for dim in dims:
            if dim is None:
                continue
            size = self.eval(dim, scope)
            if not is_int(size) or size < 0:
                raise self.error(f"a dimension must be a non-negative integer, got {describe(size)}", dim)
            shape.append(size)
        return TensorType(tuple(shape), dtype)

    def initializer(self, node: lark.Tree, scope: Scope) -> Init:
        kind, args_node = node.children
        args, kwargs = self.arguments(args_node, scope)
        if args:
            raise self.error(f"initializer arguments must be named, e.g. {kind}(std=0.02)", node)
        if str(kind) not in INITIALIZERS:
            raise self.error(f"unknown initializer '{kind}'{suggest(str(kind), INITIALIZERS)}", kind)
        for key, value in kwargs.items():
            if not is_number(value) and not isinstance(value, str):
                raise self.error(f"initializer argument '{key}' must be a number, got {describe(value)}", node)
        try:
            return Init(str(kind), kwargs)
        except (ValueError, TypeError) as err:
            raise self.error(str(err), node) from None

    # --- bindings ---------------------------------------------------------------------------
    def _stmt_let_stmt(self, node, scope):
        name, expr = node.children
        self.define(scope, name, self.eval(expr, scope))

    def _stmt_let_tuple(self, node, scope):
        *names, expr = node.children
        value = self.eval(expr, scope)
        if not isinstance(value, tuple) or len(value) != len(names):
            raise self.error(f"cannot unpack {describe(value)} into {len(names)} names", node)
        for name, item in zip(names, value):
            self.define(scope, name, item)

    def _stmt_assign_stmt(self, node, scope):
        name, expr = node.children
        value = self.eval(expr, scope)
        owner = scope.owner(str(name))
        if owner is None:
            raise self.error(f"undefined name '{name}' (define it with 'let {name} = ...')"
                             f"{suggest(str(name), scope.names())}", name)
        if owner is self.globals:
            raise self.error(f"cannot assign to '{name}': it is a config field, function or constant", name)
        owner.values[str(name)] = value

    def _stmt_output_stmt(self, node, scope):
        self.outside_functions(node, "'output'")
        name, expr = node.children
        value = self.lookup(name, scope) if expr is None else self.eval(expr, scope)
        if not isinstance(value, Value):
            raise self.error(f"output '{name}' must be a tensor, got {describe(value)}", name)
        if str(name) in self.graph.outputs:
            raise self.error(f"output '{name}' declared twice", name)
        self.builder.output(str(name), value)
        if expr is not None:
            self.define(scope, name, value)

    # --- control ------------------------------------------------------------------------------
    def _stmt_scope_stmt(self, node, scope):
        string, block = node.children
        with self.scoped(self.interpolate(string, scope), string):
            self.exec_body(block, scope)

    def _stmt_for_stmt(self, node, scope):
        name, iterable, block = node.children
        items = self.eval(iterable, scope)
        if not isinstance(items, tuple):
            raise self.error(f"'for' needs a tuple or range(...), got {describe(items)}", iterable)
        for item in items:
            inner = Scope(scope)
            self.define(inner, name, item)
            self.exec_body(block, inner)

    def _stmt_if_stmt(self, node, scope):
        cond, block, *rest = node.children
        clauses = [(cond, block)] + [tuple(c.children) for c in rest[:-1]]
        for test, body in clauses:
            if self.boolean(self.eval(test, scope), "'if'", test):
                return self.exec_body(body, Scope(scope))
        if rest and rest[-1] is not None:
            self.exec_body(rest[-1], Scope(scope))

    def _stmt_train_block(self, node, scope):
        self.outside_functions(node, "'train'")
        if self.in_train:
            raise self.error("'train' blocks do not nest", node)
        if not self.training:
            return
        self.in_train = True
        try:
            self.exec_body(node.children[0], Scope(scope))
        finally:
            self.in_train = False

    def _stmt_assert_stmt(self, node, scope):
        cond, message = node.children
        if self.boolean(self.eval(cond, scope), "'assert'", cond):
            return
        text = self.source.text[cond.meta.start_pos:cond.meta.end_pos] if not cond.meta.empty else "condition"
        if message is not None:
            text = format_value(self.eval(message, scope))
        raise self.error(f"assertion failed: {text}", node)

    def _stmt_return_stmt(self, node, scope):
        if not self.depth:
            raise self.error("'return' outside a function", node)
        raise _Return(self.eval(node.children[0], scope))

    # --- functions ------------------------------------------------------------------------------
    def call_function(self, fn: Function, args: list, kwargs: dict, node, prefix: str = "") -> Any:
        if self.depth >= MAX_CALL_DEPTH:
            raise self.error(f"function calls nest more than {MAX_CALL_DEPTH} deep (endless recursion?)", node)
        frame = self.bind(fn, args, kwargs, node)
        with self.scoped(prefix, node) if prefix else contextlib.nullcontext():
            self.depth += 1
            try:
                self.exec_body(fn.body, frame)
            except _Return as ret:
                return ret.value
            finally:
                self.depth -= 1
        return None

    def bind(self, fn: Function, args: list, kwargs: dict, node) -> Scope:
        names = [name for name, _ in fn.params]
        if len(args) > len(names):
            raise self.error(f"'{fn.name}' takes {len(names)} argument(s), got {len(args)}", node)
        bound = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise self.error(f"'{fn.name}' has no parameter '{key}'{suggest(key, names)}", node)
            if key in bound:
                raise self.error(f"'{fn.name}' got two values for '{key}'", node)
            bound[key] = value
        frame = Scope(self.globals, frame=True)
        for name, default in fn.params:
            if name not in bound:
                if default is None:
                    raise self.error(f"'{fn.name}' is missing argument '{name}'", node)
                bound[name] = self.eval(default, Scope(self.globals, frame=True))
            frame.values[name] = bound[name]
        return frame
