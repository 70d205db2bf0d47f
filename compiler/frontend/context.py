"""The state of one lowering, passed to every statement, expression and builtin handler.

`Context` holds the source (for errors), the graph builder, the params, the param-name
prefix and the nesting counters. It dispatches a parse-tree node to the handler that its
grammar rule names in the tables it was made with (`statements` and `expressions`).
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Mapping

import lark

from compiler.frontend.source import Source
from ir.builder import Builder
from ir.errors import FrontendError, Location, VerifyError
from ir.graph import Graph, Value

#: how many lowering steps a model may take
MAX_STEPS = 5_000_000

_SCOPE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")

#: a statement handler: `handler(ctx, node, scope)`; an expression handler returns the value
Handler = Callable[["Context", lark.Tree, "Scope"], Any]


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


class Return(Exception):
    """`return value` unwinding a function body."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


class Context:
    """Errors, the builder, the params and prefix, and the dispatch of nodes to handlers."""

    def __init__(self, source: Source, graph: Graph, *, mode: str, training: bool,
                 statements: Mapping[str, Handler], expressions: Mapping[str, Handler]):
        self.source = source
        self.graph = graph
        self.builder = Builder(graph)
        self.training = training
        #: what is lowered: "train", "forward", "prefill" or "decode"
        self.mode = mode
        self.statements = statements
        self.expressions = expressions
        #: each declared cache's value -> its param name
        self.caches: dict[Value, str] = {}
        self.params: dict[str, Value] = {}
        self.param_where: dict[str, Location | None] = {}
        self.prefix = ""
        #: function-call depth, block depth, whether inside `train { }`, lowering steps taken
        self.depth = 0
        self.blocks = 0
        self.in_train = False
        self.steps = 0
        #: parse trees of `{expr}` in strings, by position
        self.embedded: dict[tuple, lark.Tree] = {}
        self.globals = Scope(frame=True)

    # --- dispatch -------------------------------------------------------------------------
    def eval(self, node: lark.Tree, scope: Scope) -> Any:
        """The value of an expression node: a tensor or a compile-time value."""
        self.tick(node)
        return self.expressions[node.data](self, node, scope)

    def exec_block(self, statements: list, scope: Scope) -> None:
        for statement in statements:
            self.tick(statement)
            self.statements[statement.data](self, statement, scope)

    def exec_body(self, block: lark.Tree, scope: Scope) -> None:
        """The statements of a nested block (`for`, `if`, `scope`, `train`, a function body)."""
        self.blocks += 1
        try:
            self.exec_block(block.children, scope)
        finally:
            self.blocks -= 1

    # --- errors and ops -------------------------------------------------------------------
    def error(self, message: str, node=None) -> FrontendError:
        return self.source.error(message, node)

    def location(self, node) -> Location | None:
        return self.source.location(node)

    def tick(self, node) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.error(f"lowering takes over {MAX_STEPS} steps (an endless loop?)", node)

    def op(self, name: str, operands: list[Value], attrs: dict, node) -> Value | tuple[Value, ...]:
        """Emit one IR op at `node`'s location; a type-rule failure is an error there."""
        self.tick(node)
        with self.builder.at(self.location(node)):
            try:
                return self.builder.op(name, *operands, **attrs)
            except VerifyError as err:
                raise self.error(err.message, node) from None
            except (ValueError, TypeError, IndexError, OverflowError) as err:
                raise self.error(f"'{name}': invalid operands or attributes ({err})", node) from None

    # --- names ----------------------------------------------------------------------------
    def param_named(self, path: str) -> Value | None:
        """The param `path` names: relative to the current prefix first, then absolute."""
        if self.prefix and f"{self.prefix}.{path}" in self.params:
            return self.params[f"{self.prefix}.{path}"]
        return self.params.get(path)

    def define(self, scope: Scope, token: lark.Token, value: Any) -> None:
        name = str(token)
        holder = scope.conflict(name)
        if holder is not None:
            first = holder.where.get(name)
            raise self.error(f"'{name}' is already defined{f' (at {first})' if first else ''}; "
                             f"use '{name} = ...' to change it", token)
        scope.values[name] = value
        scope.where[name] = self.location(token)

    @contextlib.contextmanager
    def scoped(self, name: str, node) -> Iterator[None]:
        """Extend the param-name prefix by `name` for the duration."""
        if not _SCOPE_NAME.match(name):
            raise self.error(f"scope name '{name}' must be dot-separated letters, digits and '_'", node)
        saved = self.prefix
        self.prefix = f"{saved}.{name}" if saved else name
        try:
            yield
        finally:
            self.prefix = saved
