"""Compile-time values of RDL: what a name or expression can stand for besides a tensor.

A tensor is an IR `Value`. Everything else is known while lowering: numbers,
booleans, strings, `none`, tuples (RDL lists are tuples too), dtypes, functions,
builtins and ops.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import attrs
import lark

from ir.dtypes import DType
from ir.graph import Value


@attrs.frozen(eq=False)
class Function:
    """A user function: `def name(params) { body }`; defaults are expression nodes."""

    name: str
    params: tuple[tuple[str, lark.Tree | None], ...]
    body: lark.Tree
    node: lark.Tree


@attrs.frozen(eq=False)
class Builtin:
    """A helper implemented in Python: `fn(lowerer, node, *args, **kwargs)`."""

    name: str
    fn: Callable[..., Any]
    #: `fn`'s signature, read once: calls are checked against it before `fn` runs
    signature: inspect.Signature = attrs.field(init=False, repr=False)

    @signature.default
    def _signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)


@attrs.frozen
class OpRef:
    """A registered IR op, callable by name."""

    name: str


#: names every model sees: the dtypes and a few numbers
CONSTANTS: dict[str, Any] = {d.value: d for d in DType} | {"inf": math.inf, "pi": math.pi}


def is_number(value: Any) -> bool:
    """An int or float (booleans are not numbers in RDL)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kind(value: Any) -> str:
    """A one-word name of what `value` is, for messages."""
    for cls, name in ((Value, "tensor"), (bool, "bool"), (int, "int"), (float, "float"), (str, "string"),
                      (tuple, "tuple"), (DType, "dtype"), (Function, "function"), (Builtin, "builtin"),
                      (OpRef, "op")):
        if isinstance(value, cls):
            return name
    return "none" if value is None else type(value).__name__


def describe(value: Any) -> str:
    """`value` as a message shows it: `tensor f32[2,3]`, `int 3`, `function 'block'`."""
    if isinstance(value, Value):
        return f"tensor {value.type}"
    if isinstance(value, (Function, Builtin, OpRef)):
        return f"{kind(value)} '{value.name}'"
    if value is None:
        return "none"
    return f"{kind(value)} {format_value(value)}"


def format_value(value: Any) -> str:
    """The text of a compile-time value, as string interpolation writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return value.value
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if value is None:
        return "none"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value) if isinstance(value, (int, float, str)) else describe(value)
