"""Lowering RDL expressions: compile-time folding, and IR ops for tensor expressions.

Operators on two compile-time values are computed at once (`n_embd // n_head`).
With a tensor on either side they become IR ops; a Python number meeting a
tensor becomes a rank-0 `full` of the tensor's dtype (the IR is strictly typed).
"""
from __future__ import annotations

import json
import math
import operator
import re
from typing import Any

import lark

from compiler.config import MAX_INT
from compiler.frontend import builtins
from compiler.frontend.builtins import BUILTINS
from compiler.frontend.source import suggest
from compiler.frontend.values import Builtin, Function, OpRef, describe, format_value, is_int, is_number, kind
from ir.dtypes import DType
from ir.errors import Location, VerifyError
from ir.graph import Value
from ir.ops import REGISTRY
from ir.ops.base import TypeRuleError
from ir.ops.elementwise import broadcast_shape

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}
#: the IR op an operator becomes when a tensor is involved
OPERATOR_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "@": "matmul",
                "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
#: compile-time sequences stay below this length (integers below `compiler.config.MAX_INT`)
MAX_SEQUENCE = 100_000

#: attributes of a tensor: `x.shape`, `x.T`, ...
TENSOR_ATTRIBUTES = {
    "shape": lambda lw, node, x: x.type.shape,
    "dtype": lambda lw, node, x: x.type.dtype,
    "rank": lambda lw, node, x: x.type.rank,
    "size": lambda lw, node, x: x.type.size,
    "T": lambda lw, node, x: builtins.BUILTINS["transpose"].fn(lw, node, x),
}

_INTERPOLATION = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def dotted(node: lark.Tree) -> list[lark.Token] | None:
    """The names of `a.b.c` (an attribute chain rooted at a name), else None."""
    names = []
    while node.data == "attr":
        node, name = node.children
        names.append(name)
    if node.data != "name":
        return None
    return [node.children[0], *reversed(names)]


def _shift(tree: lark.Tree, line: int, col: int) -> None:
    """Move positions of a tree parsed from text embedded at `line:col` of the file."""
    for sub in tree.iter_subtrees():
        if not sub.meta.empty:
            sub.meta.line, sub.meta.column = line, col + sub.meta.column - 1
        for child in sub.children:
            if isinstance(child, lark.Token):
                child.line, child.column = line, col + child.column - 1


class Expressions:
    """Mixin of `Lowerer`: evaluates expression nodes to tensors or compile-time values."""

    def eval(self, node: lark.Tree, scope) -> Any:
        self.tick(node)
        return getattr(self, f"_expr_{node.data}")(node, scope)

    # --- atoms ----------------------------------------------------------------------
    def _expr_int(self, node, scope):
        digits = str(node.children[0]).lstrip("0")
        if len(digits) > 20:
            raise self.error(f"integer literal of {len(digits)} digits is too large (beyond 64 bits)", node)
        return self.checked_int(int(node.children[0]), node)

    def _expr_float(self, node, scope):
        return float(node.children[0])

    def _expr_true(self, node, scope):
        return True

    def _expr_false(self, node, scope):
        return False

    def _expr_none(self, node, scope):
        return None

    def _expr_tuple(self, node, scope):
        return tuple(self.eval(c, scope) for c in node.children if c is not None)

    _expr_list = _expr_tuple

    def _expr_string(self, node, scope):
        return self.interpolate(node.children[0], scope)

    def _expr_name(self, node, scope):
        return self.lookup(node.children[0], scope)

    # --- names ----------------------------------------------------------------------
    def lookup(self, token: lark.Token, scope, calling: bool = False) -> Any:
        """A variable, config field, function, param (relative to the scope), builtin or op."""
        name = str(token)
        found, value = scope.get(name)
        if found:
            return value
        param = self.param_named(name)
        if param is not None:
            return param
        if name in BUILTINS:
            return BUILTINS[name]
        if name in REGISTRY:
            return OpRef(name)
        if calling:
            callables = {n for n in scope.names() if isinstance(scope.get(n)[1], Function)}
            raise self.error(f"unknown op or function '{name}'"
                             f"{suggest(name, callables | set(BUILTINS) | set(REGISTRY))}", token)
        raise self.error(f"undefined name '{name}'{suggest(name, self.visible_names(scope))}", token)

    def _expr_attr(self, node, scope):
        path = dotted(node)
        if path is not None and not scope.get(str(path[0]))[0]:
            return self.param_path(path, scope)
        target, name = node.children
        return self.attribute(self.eval(target, scope), name)

    def param_path(self, path: list[lark.Token], scope) -> Any:
        """`a.b.c`: the longest prefix naming a param, then tensor attributes."""
        for n in range(len(path), 0, -1):
            value = self.param_named(".".join(map(str, path[:n])))
            if value is not None:
                for name in path[n:]:
                    value = self.attribute(value, name)
                return value
        full = ".".join(map(str, path))
        raise self.error(f"undefined name '{full}'{suggest(full, self.visible_names(scope))}", path[0])

    def attribute(self, value: Any, token: lark.Token) -> Any:
        name = str(token)
        if isinstance(value, Value) and name in TENSOR_ATTRIBUTES:
            return TENSOR_ATTRIBUTES[name](self, token, value)
        known = f" (tensors have {', '.join(TENSOR_ATTRIBUTES)})" if isinstance(value, Value) else ""
        raise self.error(f"{describe(value)} has no attribute '{name}'{known}", token)

    # --- calls ----------------------------------------------------------------------
    def _expr_call(self, node, scope):
        callee, args_node = node.children
        args, kwargs = self.arguments(args_node, scope)
        if callee.data == "name":
            return self.call(self.lookup(callee.children[0], scope, calling=True), args, kwargs, node)
        path = dotted(callee) if callee.data == "attr" else None
        if path is None:
            return self.call(self.eval(callee, scope), args, kwargs, node)
        target = self.lookup(path[-1], scope, calling=True)
        if not isinstance(target, Function):
            raise self.error(f"only functions take a scope: '{'.'.join(map(str, path))}(...)' calls "
                             f"{describe(target)}", callee)
        return self.call_function(target, args, kwargs, node, ".".join(map(str, path[:-1])))

    def arguments(self, node, scope) -> tuple[list, dict]:
        args, kwargs = [], {}
        for arg in node.children if node is not None else ():
            if arg is None:
                continue
            if arg.data != "kwarg":
                if kwargs:
                    raise self.error("positional argument after keyword arguments", arg)
                args.append(self.eval(arg, scope))
                continue
            name, expr = arg.children
            if str(name) in kwargs:
                raise self.error(f"keyword argument '{name}' given twice", name)
            kwargs[str(name)] = self.eval(expr, scope)
        return args, kwargs

    def call(self, target: Any, args: list, kwargs: dict, node) -> Any:
        if isinstance(target, Function):
            return self.call_function(target, args, kwargs, node)
        if isinstance(target, Builtin):
            return self.call_builtin(target, args, kwargs, node)
        if isinstance(target, OpRef):
            return self.call_op(target.name, args, kwargs, node)
        raise self.error(f"{describe(target)} is not callable", node)

    def call_builtin(self, target: Builtin, args: list, kwargs: dict, node) -> Any:
        try:
            target.signature.bind(self, node, *args, **kwargs)
        except TypeError as err:
            raise self.error(f"bad arguments to '{target.name}': {err}", node) from None
        return target.fn(self, node, *args, **kwargs)

    def call_op(self, name: str, args: list, kwargs: dict, node) -> Any:
        """An IR op: tensors (or numbers) are operands, keyword arguments are attributes."""
        for key, value in kwargs.items():
            if isinstance(value, (Value, Function, Builtin, OpRef)):
                raise self.error(f"attribute '{key}' of '{name}' must be a compile-time value, "
                                 f"got {describe(value)}", node)
        tensors = [a for a in args if isinstance(a, Value)]
        if len(tensors) < len(args):
            if not tensors:
                raise self.error(f"'{name}' needs a tensor operand, got {describe(args[0])}", node)
            like = next((t.type.dtype for t in tensors if t.type.dtype.is_float),
                        next((t.type.dtype for t in tensors if t.type.dtype != DType.bool), tensors[0].type.dtype))
            args = [a if isinstance(a, Value) else self.lift(a, like, node, f"'{name}'") for a in args]
        return self.op(name, args, kwargs, node)

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

    def lift(self, value: Any, dtype: DType, node, context: str) -> Value:
        """A Python scalar as a rank-0 tensor of `dtype`."""
        if isinstance(value, bool):
            ok = dtype == DType.bool
        elif is_int(value):
            ok = dtype != DType.bool
        elif isinstance(value, float):
            ok = dtype.is_float
        else:
            raise self.error(f"cannot use {describe(value)} as a tensor operand of {context}", node)
        if not ok:
            raise self.error(f"dtype mismatch in {context}: {describe(value)} with a tensor of dtype {dtype} "
                             f"(use cast(x, dtype=...))", node)
        return self.op("full", [], {"shape": (), "value": float(value), "dtype": dtype}, node)

    # --- operators --------------------------------------------------------------------
    def _expr_binop(self, node, scope):
        left, op, right = node.children
        return self.binary(str(op), self.eval(left, scope), self.eval(right, scope), op)

    def binary(self, op: str, a: Any, b: Any, where) -> Any:
        if not isinstance(a, Value) and not isinstance(b, Value):
            return self.fold(op, a, b, where)
        name = OPERATOR_OPS.get(op)
        if name is None:
            raise self.error(f"'{op}' works on compile-time numbers only, got {describe(a)} and {describe(b)}",
                             where)
        like = (a if isinstance(a, Value) else b).type.dtype
        a = a if isinstance(a, Value) else self.lift(a, like, where, f"'{op}'")
        b = b if isinstance(b, Value) else self.lift(b, like, where, f"'{op}'")
        if op != "@":
            self.check_elementwise(op, a, b, where)
        return self.op(name, [a, b], {}, where)

    def check_elementwise(self, op: str, a: Value, b: Value, where) -> None:
        if a.type.dtype != b.type.dtype:
            raise self.error(f"dtype mismatch in '{op}': {a.type} and {b.type}", where)
        try:
            broadcast_shape(a.type.shape, b.type.shape)
        except TypeRuleError:
            raise self.error(f"shape mismatch in '{op}': {a.type} and {b.type} do not broadcast", where) from None

    def fold(self, op: str, a: Any, b: Any, where) -> Any:
        """`a op b` on compile-time values."""
        if op in _COMPARE:
            try:
                return _COMPARE[op](a, b)
            except TypeError:
                raise self.error(f"cannot compare {kind(a)} and {kind(b)} with '{op}'", where) from None
        self.check_fold(op, a, b, where)
        try:
            result = _ARITHMETIC[op](a, b)
        except ZeroDivisionError:
            raise self.error("division by zero", where) from None
        except (OverflowError, ValueError) as err:
            raise self.error(f"'{op}': {err}", where) from None
        if isinstance(result, complex):
            raise self.error(f"'{op}' of {describe(a)} and {describe(b)} is not a real number", where)
        return self.checked_int(result, where) if is_int(result) else result

    def check_fold(self, op: str, a: Any, b: Any, where) -> None:
        sequence = isinstance(a, (str, tuple)) or isinstance(b, (str, tuple))
        ok = (is_number(a) and is_number(b) and op != "@") or (
            op == "+" and type(a) is type(b) and sequence) or (
            op == "*" and sequence and (is_int(a) or is_int(b)))
        if not ok:
            raise self.error(f"unsupported operand types for '{op}': {kind(a)} and {kind(b)}", where)
        if op == "*" and sequence:
            seq, count = (a, b) if is_int(b) else (b, a)
            if len(seq) * max(count, 0) > MAX_SEQUENCE:
                raise self.error(f"repeated sequence would be too long (over {MAX_SEQUENCE})", where)
        if op == "**" and is_int(a) and is_int(b) and abs(a) > 1 and b * math.log2(abs(a)) > 64:
            raise self.error(f"integer {a} ** {b} is too large", where)

    def checked_int(self, value: int, where) -> int:
        if abs(value) >= MAX_INT:
            raise self.error(f"integer {value} is too large (beyond 64 bits)", where)
        return value

    def _expr_unary(self, node, scope):
        op, operand = node.children
        value = self.eval(operand, scope)
        if op == "not":
            return not self.boolean(value, "'not'", op)
        if isinstance(value, Value):
            return self.op("neg", [value], {}, op) if op == "-" else value
        if not is_number(value):
            raise self.error(f"unary '{op}' needs a number or tensor, got {describe(value)}", op)
        return -value if op == "-" else value

    def _expr_logic(self, node, scope):
        left, op, right = node.children
        first = self.boolean(self.eval(left, scope), f"'{op}'", left)
        if first == (op == "or"):
            return first
        return self.boolean(self.eval(right, scope), f"'{op}'", right)

    def boolean(self, value: Any, what: str, node) -> bool:
        if not isinstance(value, bool):
            raise self.error(f"{what} needs a compile-time boolean, got {describe(value)}", node)
        return value

    # --- indexing ---------------------------------------------------------------------
    def _expr_index(self, node, scope):
        target, subscripts = node.children
        value = self.eval(target, scope)
        items = [self.subscript(s, scope) for s in subscripts.children if s is not None]
        if isinstance(value, Value):
            return self.index_tensor(value, items, node)
        if isinstance(value, (tuple, str)) and len(items) == 1 and items[0] is not Ellipsis:
            try:
                return value[items[0]]
            except (IndexError, ValueError, TypeError) as err:
                raise self.error(f"cannot index {describe(value)} with {items[0]}: {err}", node) from None
        raise self.error(f"cannot index {describe(value)} with {len(items)} subscript(s)", node)

    def subscript(self, node, scope) -> Any:
        if node.data == "ellipsis":
            return Ellipsis
        if node.data == "slice":
            parts = [None if c is None else self.eval(c, scope) for c in node.children]
            for part in parts:
                if part is not None and not is_int(part):
                    raise self.error(f"slice bounds must be integers, got {describe(part)}", node)
            return slice(*parts)
        value = self.eval(node, scope)
        if not is_int(value) and not isinstance(value, Value):
            raise self.error(f"an index must be an integer, a slice or an integer tensor, got {describe(value)}",
                             node)
        return value

    def index_tensor(self, x: Value, items: list, node) -> Value:
        """Integers and slices become one `slice` (and a `reshape` dropping indexed axes);
        a lone integer tensor becomes a `gather` along axis 0."""
        if any(isinstance(i, Value) for i in items):
            if len(items) != 1:
                raise self.error("a tensor index must be the only subscript", node)
            return self.op("gather", [x, items[0]], {"axis": 0}, node)
        items = self.expand_ellipsis(x, items, node)
        starts, stops, steps, shape = [], [], [], []
        for axis, (item, dim) in enumerate(zip(items, x.type.shape)):
            if is_int(item):
                index = item + dim if item < 0 else item
                if not 0 <= index < dim:
                    raise self.error(f"index {item} out of range for axis {axis} of {x.type}", node)
                starts.append(index), stops.append(index + 1), steps.append(1)
                continue
            if item.step is not None and item.step <= 0:
                raise self.error(f"slice steps must be positive, got {item.step}", node)
            lo, hi, step = item.indices(dim)
            starts.append(lo), stops.append(max(lo, hi)), steps.append(step)
            shape.append(len(range(lo, max(lo, hi), step)))
        if (starts, stops, steps) != ([0] * x.type.rank, list(x.type.shape), [1] * x.type.rank):
            attrs = {"starts": tuple(starts), "stops": tuple(stops)}
            if any(s != 1 for s in steps):
                attrs["steps"] = tuple(steps)
            x = self.op("slice", [x], attrs, node)
        return x if len(shape) == x.type.rank else self.op("reshape", [x], {"shape": tuple(shape)}, node)

    def expand_ellipsis(self, x: Value, items: list, node) -> list:
        if items.count(Ellipsis) > 1:
            raise self.error("at most one '...' in a subscript", node)
        count = len(items) - items.count(Ellipsis)
        if count > x.type.rank:
            raise self.error(f"too many indices ({count}) for {x.type}", node)
        fill = [slice(None)] * (x.type.rank - count)
        if Ellipsis not in items:
            return items + fill
        at = items.index(Ellipsis)
        return items[:at] + fill + items[at + 1:]

    # --- strings ----------------------------------------------------------------------
    def interpolate(self, token: lark.Token, scope) -> str:
        """A string literal with `{expr}` replaced by compile-time values (`{{` is a brace)."""
        raw = str(token)[1:-1]
        out, pos = [], 0
        for match in _INTERPOLATION.finditer(raw):
            out.append(self.unescape(raw[pos:match.start()], token))
            pos = match.end()
            text = match.group(0)
            if text in ("{{", "}}"):
                out.append(text[0])
            elif match.group(1) is None:
                raise self.error(f"unmatched '{text}' in a string (write '{text * 2}' for a literal brace)", token)
            else:
                out.append(self.interpolated(token, match.start() + 1, match.group(1), scope))
        out.append(self.unescape(raw[pos:], token))
        return "".join(out)

    def unescape(self, text: str, token) -> str:
        try:
            return json.loads(f'"{text}"')
        except json.JSONDecodeError:
            raise self.error("bad escape sequence in a string", token) from None

    def interpolated(self, token: lark.Token, offset: int, text: str, scope) -> str:
        key = (token.line, token.column, offset)
        tree = self.embedded.get(key)
        if tree is None:
            col = token.column + 1 + offset
            tree = self.parse_embedded(text, Location(self.source.filename, token.line, col))
            _shift(tree, token.line, col)
            self.embedded[key] = tree
        value = self.eval(tree, scope)
        if isinstance(value, (Value, Function, Builtin, OpRef)):
            raise self.error(f"cannot put {describe(value)} into a string", tree)
        return format_value(value)
