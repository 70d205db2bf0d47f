"""Lowering RDL expressions: compile-time folding, and IR ops for tensor expressions.

`EXPRESSIONS` maps each expression rule of the grammar to its handler
`handler(ctx, node, scope) -> value`; `Context.eval` dispatches through it.

Operators on two compile-time values are computed at once (`n_embd // n_head`).
With a tensor on either side they become IR ops; a Python number meeting a
tensor becomes a rank-0 `full` of the tensor's dtype (the IR is strictly typed).
"""
from __future__ import annotations

import json
import math
import operator
import re
from typing import Any, Callable

import lark

from compiler.config import MAX_INT
from compiler.frontend.builtins import BUILTINS
from compiler.frontend.calls import arguments, call, call_function, lift, lookup, visible_names
from compiler.frontend.context import Context, Handler
from compiler.frontend.parser import parse_tree
from compiler.frontend.source import suggest
from compiler.frontend.values import Builtin, Function, OpRef, describe, format_value, is_int, is_number, kind
from ir.errors import Location
from ir.graph import Value
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

#: expression rule of the grammar -> its handler
EXPRESSIONS: dict[str, Handler] = {}


def expression(*rules: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of expression `rules`."""
    def register(handler: Handler) -> Handler:
        EXPRESSIONS.update(dict.fromkeys(rules, handler))
        return handler
    return register


#: attributes of a tensor: `x.shape`, `x.T`, ...
TENSOR_ATTRIBUTES = {
    "shape": lambda ctx, node, x: x.type.shape,
    "dtype": lambda ctx, node, x: x.type.dtype,
    "rank": lambda ctx, node, x: x.type.rank,
    "size": lambda ctx, node, x: x.type.size,
    "T": lambda ctx, node, x: BUILTINS["transpose"].fn(ctx, node, x),
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


# --- atoms ----------------------------------------------------------------------
@expression("int")
def _int(ctx: Context, node, scope):
    digits = str(node.children[0]).lstrip("0")
    if len(digits) > 20:
        raise ctx.error(f"integer literal of {len(digits)} digits is too large (beyond 64 bits)", node)
    return checked_int(ctx, int(node.children[0]), node)


@expression("float")
def _float(ctx: Context, node, scope):
    return float(node.children[0])


@expression("true")
def _true(ctx: Context, node, scope):
    return True


@expression("false")
def _false(ctx: Context, node, scope):
    return False


@expression("none")
def _none(ctx: Context, node, scope):
    return None


@expression("tuple", "list")
def _tuple(ctx: Context, node, scope):
    return tuple(ctx.eval(c, scope) for c in node.children if c is not None)


@expression("string")
def _string(ctx: Context, node, scope):
    return interpolate(ctx, node.children[0], scope)


@expression("name")
def _name(ctx: Context, node, scope):
    return lookup(ctx, node.children[0], scope)


# --- names ----------------------------------------------------------------------
@expression("attr")
def _attr(ctx: Context, node, scope):
    path = dotted(node)
    if path is not None and not scope.get(str(path[0]))[0]:
        return param_path(ctx, path, scope)
    target, name = node.children
    return attribute(ctx, ctx.eval(target, scope), name)


def param_path(ctx: Context, path: list[lark.Token], scope) -> Any:
    """`a.b.c`: the longest prefix naming a param, then tensor attributes."""
    for n in range(len(path), 0, -1):
        value = ctx.param_named(".".join(map(str, path[:n])))
        if value is not None:
            for name in path[n:]:
                value = attribute(ctx, value, name)
            return value
    full = ".".join(map(str, path))
    raise ctx.error(f"undefined name '{full}'{suggest(full, visible_names(ctx, scope))}", path[0])


def attribute(ctx: Context, value: Any, token: lark.Token) -> Any:
    name = str(token)
    if isinstance(value, Value) and name in TENSOR_ATTRIBUTES:
        return TENSOR_ATTRIBUTES[name](ctx, token, value)
    known = f" (tensors have {', '.join(TENSOR_ATTRIBUTES)})" if isinstance(value, Value) else ""
    raise ctx.error(f"{describe(value)} has no attribute '{name}'{known}", token)


# --- calls ----------------------------------------------------------------------
@expression("call")
def _call(ctx: Context, node, scope):
    callee, args_node = node.children
    args, kwargs = arguments(ctx, args_node, scope)
    if callee.data == "name":
        return call(ctx, lookup(ctx, callee.children[0], scope, calling=True), args, kwargs, node)
    path = dotted(callee) if callee.data == "attr" else None
    if path is None:
        return call(ctx, ctx.eval(callee, scope), args, kwargs, node)
    target = lookup(ctx, path[-1], scope, calling=True)
    if not isinstance(target, Function):
        raise ctx.error(f"only functions take a scope: '{'.'.join(map(str, path))}(...)' calls "
                         f"{describe(target)}", callee)
    return call_function(ctx, target, args, kwargs, node, ".".join(map(str, path[:-1])))


# --- operators --------------------------------------------------------------------
@expression("binop")
def _binop(ctx: Context, node, scope):
    """`a op b`, or a left-to-right chain `a op b op c ...` (sums and products parse flat, so
    a long chain nests no deeper than one operator)."""
    first, *rest = node.children
    value = ctx.eval(first, scope)
    for op, operand in zip(rest[::2], rest[1::2]):
        value = binary(ctx, str(op), value, ctx.eval(operand, scope), op)
    return value


def binary(ctx: Context, op: str, a: Any, b: Any, where) -> Any:
    if not isinstance(a, Value) and not isinstance(b, Value):
        return fold(ctx, op, a, b, where)
    name = OPERATOR_OPS.get(op)
    if name is None:
        raise ctx.error(f"'{op}' works on compile-time numbers only, got {describe(a)} and {describe(b)}",
                         where)
    like = (a if isinstance(a, Value) else b).type.dtype
    a = a if isinstance(a, Value) else lift(ctx, a, like, where, f"'{op}'")
    b = b if isinstance(b, Value) else lift(ctx, b, like, where, f"'{op}'")
    if op != "@":
        check_elementwise(ctx, op, a, b, where)
    return ctx.op(name, [a, b], {}, where)


def check_elementwise(ctx: Context, op: str, a: Value, b: Value, where) -> None:
    if a.type.dtype != b.type.dtype:
        raise ctx.error(f"dtype mismatch in '{op}': {a.type} and {b.type}", where)
    try:
        broadcast_shape(a.type.shape, b.type.shape)
    except TypeRuleError:
        raise ctx.error(f"shape mismatch in '{op}': {a.type} and {b.type} do not broadcast", where) from None


def fold(ctx: Context, op: str, a: Any, b: Any, where) -> Any:
    """`a op b` on compile-time values."""
    if op in _COMPARE:
        try:
            return _COMPARE[op](a, b)
        except TypeError:
            raise ctx.error(f"cannot compare {kind(a)} and {kind(b)} with '{op}'", where) from None
    check_fold(ctx, op, a, b, where)
    try:
        result = _ARITHMETIC[op](a, b)
    except ZeroDivisionError:
        raise ctx.error("division by zero", where) from None
    except (OverflowError, ValueError) as err:
        raise ctx.error(f"'{op}': {err}", where) from None
    if isinstance(result, complex):
        raise ctx.error(f"'{op}' of {describe(a)} and {describe(b)} is not a real number", where)
    return checked_int(ctx, result, where) if is_int(result) else result


def check_fold(ctx: Context, op: str, a: Any, b: Any, where) -> None:
    sequence = isinstance(a, (str, tuple)) or isinstance(b, (str, tuple))
    ok = (is_number(a) and is_number(b) and op != "@") or (
        op == "+" and type(a) is type(b) and sequence) or (
        op == "*" and sequence and (is_int(a) or is_int(b)))
    if not ok:
        raise ctx.error(f"unsupported operand types for '{op}': {kind(a)} and {kind(b)}", where)
    if op == "*" and sequence:
        seq, count = (a, b) if is_int(b) else (b, a)
        if len(seq) * max(count, 0) > MAX_SEQUENCE:
            raise ctx.error(f"repeated sequence would be too long (over {MAX_SEQUENCE})", where)
    if op == "**" and is_int(a) and is_int(b) and abs(a) > 1 and b * math.log2(abs(a)) > 64:
        raise ctx.error(f"integer {a} ** {b} is too large", where)


def checked_int(ctx: Context, value: int, where) -> int:
    if abs(value) >= MAX_INT:
        raise ctx.error(f"integer {value} is too large (beyond 64 bits)", where)
    return value


@expression("unary")
def _unary(ctx: Context, node, scope):
    op, operand = node.children
    value = ctx.eval(operand, scope)
    if op == "not":
        return not boolean(ctx, value, "'not'", op)
    if isinstance(value, Value):
        return ctx.op("neg", [value], {}, op) if op == "-" else value
    if not is_number(value):
        raise ctx.error(f"unary '{op}' needs a number or tensor, got {describe(value)}", op)
    return -value if op == "-" else value


@expression("logic")
def _logic(ctx: Context, node, scope):
    left, op, right = node.children
    first = boolean(ctx, ctx.eval(left, scope), f"'{op}'", left)
    if first == (op == "or"):
        return first
    return boolean(ctx, ctx.eval(right, scope), f"'{op}'", right)


def boolean(ctx: Context, value: Any, what: str, node) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(f"{what} needs a compile-time boolean, got {describe(value)}", node)
    return value


# --- indexing ---------------------------------------------------------------------
@expression("index")
def _index(ctx: Context, node, scope):
    target, subscripts = node.children
    value = ctx.eval(target, scope)
    items = [subscript(ctx, s, scope) for s in subscripts.children if s is not None]
    if isinstance(value, Value):
        return index_tensor(ctx, value, items, node)
    if isinstance(value, (tuple, str)) and len(items) == 1 and items[0] is not Ellipsis:
        try:
            return value[items[0]]
        except (IndexError, ValueError, TypeError) as err:
            raise ctx.error(f"cannot index {describe(value)} with {items[0]}: {err}", node) from None
    raise ctx.error(f"cannot index {describe(value)} with {len(items)} subscript(s)", node)


def subscript(ctx: Context, node, scope) -> Any:
    if node.data == "ellipsis":
        return Ellipsis
    if node.data == "slice":
        parts = [None if c is None else ctx.eval(c, scope) for c in node.children]
        for part in parts:
            if part is not None and not is_int(part):
                raise ctx.error(f"slice bounds must be integers, got {describe(part)}", node)
        return slice(*parts)
    value = ctx.eval(node, scope)
    if not is_int(value) and not isinstance(value, Value):
        raise ctx.error(f"an index must be an integer, a slice or an integer tensor, got {describe(value)}",
                         node)
    return value


def index_tensor(ctx: Context, x: Value, items: list, node) -> Value:
    """Integers and slices become one `slice` (and a `reshape` dropping indexed axes);
    a lone integer tensor becomes a `gather` along axis 0."""
    if any(isinstance(i, Value) for i in items):
        if len(items) != 1:
            raise ctx.error("a tensor index must be the only subscript", node)
        return ctx.op("gather", [x, items[0]], {"axis": 0}, node)
    items = expand_ellipsis(ctx, x, items, node)
    starts, stops, steps, shape = [], [], [], []
    for axis, (item, dim) in enumerate(zip(items, x.type.shape)):
        if is_int(item):
            index = item + dim if item < 0 else item
            if not 0 <= index < dim:
                raise ctx.error(f"index {item} out of range for axis {axis} of {x.type}", node)
            starts.append(index), stops.append(index + 1), steps.append(1)
            continue
        if item.step is not None and item.step <= 0:
            raise ctx.error(f"slice steps must be positive, got {item.step}", node)
        lo, hi, step = item.indices(dim)
        starts.append(lo), stops.append(max(lo, hi)), steps.append(step)
        shape.append(len(range(lo, max(lo, hi), step)))
    if (starts, stops, steps) != ([0] * x.type.rank, list(x.type.shape), [1] * x.type.rank):
        attrs = {"starts": tuple(starts), "stops": tuple(stops)}
        if any(s != 1 for s in steps):
            attrs["steps"] = tuple(steps)
        x = ctx.op("slice", [x], attrs, node)
    return x if len(shape) == x.type.rank else ctx.op("reshape", [x], {"shape": tuple(shape)}, node)


def expand_ellipsis(ctx: Context, x: Value, items: list, node) -> list:
    if items.count(Ellipsis) > 1:
        raise ctx.error("at most one '...' in a subscript", node)
    count = len(items) - items.count(Ellipsis)
    if count > x.type.rank:
        raise ctx.error(f"too many indices ({count}) for {x.type}", node)
    fill = [slice(None)] * (x.type.rank - count)
    if Ellipsis not in items:
        return items + fill
    at = items.index(Ellipsis)
    return items[:at] + fill + items[at + 1:]


# --- strings ----------------------------------------------------------------------
def interpolate(ctx: Context, token: lark.Token, scope) -> str:
    """A string literal with `{expr}` replaced by compile-time values (`{{` is a brace)."""
    raw = str(token)[1:-1]
    out, pos = [], 0
    for match in _INTERPOLATION.finditer(raw):
        out.append(unescape(ctx, raw[pos:match.start()], token))
        pos = match.end()
        text = match.group(0)
        if text in ("{{", "}}"):
            out.append(text[0])
        elif match.group(1) is None:
            raise ctx.error(f"unmatched '{text}' in a string (write '{text * 2}' for a literal brace)", token)
        else:
            out.append(interpolated(ctx, token, match.start() + 1, match.group(1), scope))
    out.append(unescape(ctx, raw[pos:], token))
    return "".join(out)


def unescape(ctx: Context, text: str, token) -> str:
    try:
        return json.loads(f'"{text}"')
    except json.JSONDecodeError:
        raise ctx.error("bad escape sequence in a string", token) from None


def interpolated(ctx: Context, token: lark.Token, offset: int, text: str, scope) -> str:
    key = (token.line, token.column, offset)
    tree = ctx.embedded.get(key)
    if tree is None:
        col = token.column + 1 + offset
        tree = parse_tree(ctx.source, text, start="expr", origin=Location(ctx.source.filename, token.line, col))
        _shift(tree, token.line, col)
        ctx.embedded[key] = tree
    value = ctx.eval(tree, scope)
    if isinstance(value, (Value, Function, Builtin, OpRef)):
        raise ctx.error(f"cannot put {describe(value)} into a string", tree)
    return format_value(value)
