"""The op registry: one declaration per op.

An op is a subclass of `OpDef` decorated with `@register`. Its class body holds
everything about it: attributes, type rule (`infer`), numpy semantics (`ref`),
gradient (`vjp`), fusion kind, cost, and — for elementwise ops — its scalar body
(`scalar`) or — for composite ops — its expansion into simpler ops (`decompose`).
Passes, autodiff, the interpreter, the backend and the cost model ask the
registry; nothing else switches on op names.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np

from ir.dtypes import DType
from ir.types import TensorType

if TYPE_CHECKING:
    from ir.graph import Op


class FusionKind(enum.IntEnum):
    """TVM's op pattern kinds, ordered from most to least fusable."""

    elementwise = 0
    broadcast = 1
    injective = 2
    reduction = 3
    output_fusable = 4
    opaque = 8


class TypeRuleError(Exception):
    """Raised by a type rule or attribute check; callers add the op and location."""


REQUIRED = object()


def _normalize_literal(value):
    if isinstance(value, (list, tuple)):
        return tuple(_normalize_literal(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@attrs.frozen
class Attr:
    """An attribute's declaration: kind, default, allowed values."""

    kind: str  # int | float | bool | str | ints | dtype | literal
    default: Any = REQUIRED
    choices: tuple | None = None
    optional: bool = False  # None is allowed

    def check(self, name: str, value: Any) -> Any:
        """The value normalized to its canonical Python form, or TypeRuleError."""
        if value is None and self.optional:
            return None
        normalized = _CHECKERS[self.kind](value)
        if normalized is _BAD:
            raise TypeRuleError(f"attribute '{name}' expects {self.kind}, got {value!r}")
        if self.choices is not None and normalized not in self.choices:
            options = ", ".join(map(str, self.choices))
            raise TypeRuleError(f"attribute '{name}' must be one of {options}, got {value!r}")
        return normalized


_BAD = object()


def _as_int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else _BAD


def _as_float(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _BAD


def _as_ints(v):
    if not isinstance(v, (list, tuple)) or any(_as_int(x) is _BAD for x in v):
        return _BAD
    return tuple(v)


def _as_dtype(v):
    if isinstance(v, DType):
        return v
    try:
        return DType.parse(v) if isinstance(v, str) else _BAD
    except ValueError:
        return _BAD


def _leaves(v):
    if isinstance(v, tuple):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def _as_literal(v):
    v = _normalize_literal(v)
    return v if all(isinstance(x, (int, float, bool)) for x in _leaves(v)) else _BAD


_CHECKERS = {
    "int": _as_int,
    "float": _as_float,
    "bool": lambda v: v if isinstance(v, bool) else _BAD,
    "str": lambda v: v if isinstance(v, str) else _BAD,
    "ints": _as_ints,
    "dtype": _as_dtype,
    "literal": _as_literal,
}


@attrs.frozen
class Cost:
    """Modeled work of one op: floating-point operations and bytes moved."""

    flops: int
    bytes_read: int
    bytes_written: int


#: one tensor dimension as a function of loop axes: ((axis, coefficient), ...); see `LoopNest`
Dim = tuple[tuple[int, float], ...]


@attrs.frozen
class LoopNest:
    """An op's loop nest, for the `tile` pass: axis extents and how each tensor follows them.

    Axes are in the order of the op's `tile` attribute: the result's axes first, then the
    `reduced` (contracted) ones. `operands` (one per operand) and `result` give each tensor
    dimension as (axis, coefficient) pairs: a tile spanning `t[a]` steps of each axis touches
    `1 + sum(coefficient * (t[a] - 1))` entries of that dimension (a convolution input row
    spans `stride * (oh - 1) + dilation * (kh - 1) + 1`); `()` is a dimension of size 1.
    """

    extents: tuple[int, ...]
    reduced: int
    operands: tuple[tuple[Dim, ...], ...]
    result: tuple[Dim, ...]


class OpDef:
    """Base of every op declaration. Subclasses set the class attributes below."""

    name: ClassVar[str]
    kind: ClassVar[FusionKind]
    attrs: ClassVar[dict[str, Attr]] = {}
    #: number of operands; a tuple gives the allowed counts; None means any number
    arity: ClassVar[int | tuple[int, ...] | None] = 1
    flops_per_element: ClassVar[int] = 1
    #: whether gradients flow through the op's float operands
    differentiable: ClassVar[bool] = True
    #: whether the op owns a region (a sub-graph its `evaluate` runs); others may not have one
    owns_region: ClassVar[bool] = False
    #: the operand whose memory the result may take over (None: none): the op rewrites only
    #: part of it and leaves the rest as the operand has it (a KV-cache write); the memory plan
    #: gives both one range when the operand dies there, and the kernel then writes only that part
    inplace_operand: ClassVar[int | None] = None

    # --- hooks subclasses provide -------------------------------------------------
    @classmethod
    def infer(cls, types: list[TensorType], attrs: dict) -> list[TensorType]:
        """The type rule: result types from operand types, or TypeRuleError."""
        raise NotImplementedError

    @classmethod
    def ref(cls, attrs: dict, *args: np.ndarray):
        """numpy reference semantics: one array, or a tuple for several results."""
        raise NotImplementedError

    #: vjp(b, op, grads) -> one gradient Value (or None) per operand
    vjp = None
    #: scalar(e, attrs, *xs) -> Expr, for elementwise/broadcast ops
    scalar = None
    #: decompose(b, op) -> result Values built from simpler ops, for composite ops
    decompose = None
    # --- backend lowering hooks (stage kinds: see backend/pef/stages/) ------------
    #: view(attrs, shape, offset, strides) -> (offset, strides) | None, for injective ops
    #: re-indexing one operand: given the operand's element offset and strides (per axis of
    #: `shape`) into flat storage, those of the result; None if not expressible as strides
    view = None
    #: generate(e, attrs, index) -> Expr, for operand-less ops computed from the result's
    #: loop index; index(axis) is that index along `axis` as an i64 Expr
    generate = None
    #: stage(op) -> {**parameters}, for ops lowered to a stage of their own: the stage
    #: declaration that lists the op among its `ops` builds it from these parameters
    stage = None
    #: canonicalize(b, op) -> a simpler equivalent of the op's results (existing Values or
    #: ones built with b), or None; the canonicalize pass applies it (an identity reshape is
    #: its operand, a reshape of a reshape is one reshape, ...)
    canonicalize = None
    #: sum_with(b, op, other) -> a simpler Value equal to the sum of `op`'s result and the Value
    #: `other` (both of the sum's type), or None; `add` canonicalizes by it
    sum_with = None
    #: loop_nest(op) -> LoopNest, for ops the `tile` pass tiles (matmul, conv): the loop axes
    #: its `tile` attribute sizes and how operands and result follow them
    loop_nest = None
    #: group(op) -> (name, world size), for collectives: the replica group the op communicates
    #: over (the verifier checks that a graph gives each group one size)
    group = None

    @classmethod
    def splat(cls, op: Op) -> float | None:
        """The value of every element, when the op is known to make a splat without running it."""
        return None

    @classmethod
    def widens(cls, op: Op) -> bool:
        """Whether the op only converts its operand to a wider type holding the same values
        (bf16 -> f32): a stage reading the operand converts as it loads, so the op can be
        folded into that read (a 16-bit weight feeding a matmul)."""
        return False

    @classmethod
    def index_bounds(cls, op: Op) -> dict[int, int]:
        """Operands holding indices (table rows, class labels) -> the exclusive bound of valid values."""
        return {}

    # --- derived behaviour ----------------------------------------------------------
    @classmethod
    def check_attrs(cls, given: dict) -> dict:
        """Defaults filled in, values normalized; unknown or missing ones raise."""
        unknown = sorted(set(given) - set(cls.attrs))
        if unknown:
            expected = ", ".join(cls.attrs) or "none"
            raise TypeRuleError(f"unknown attribute '{unknown[0]}' (expected: {expected})")
        checked = {}
        for name, spec in cls.attrs.items():
            if name in given:
                checked[name] = spec.check(name, given[name])
            elif spec.default is REQUIRED:
                raise TypeRuleError(f"missing attribute '{name}'")
            else:
                checked[name] = spec.default
        return checked

    @classmethod
    def check_arity(cls, count: int) -> None:
        allowed = cls.arity
        if allowed is None:
            return
        elif isinstance(allowed, tuple):
            ok, expected = count in allowed, " or ".join(map(str, allowed))
        else:
            ok, expected = count == allowed, str(allowed)
        if not ok:
            raise TypeRuleError(f"expects {expected} operand(s), got {count}")

    @classmethod
    def infer_op(cls, op: Op) -> list[TensorType]:
        return cls.infer([v.type for v in op.operands], op.attrs)

    @classmethod
    def evaluate(cls, op: Op, args: list[np.ndarray], interpret) -> list[np.ndarray]:
        """Run the op on arrays (`interpret` runs regions, for ops that own one)."""
        out = cls.ref(op.attrs, *args)
        outs = out if isinstance(out, tuple) else (out,)
        return [np.asarray(o, dtype=r.type.dtype.np).reshape(r.type.dtype.storage_shape(r.type.shape))
                for o, r in zip(outs, op.results)]

    @classmethod
    def cost(cls, op: Op) -> Cost:
        read = sum(v.type.nbytes for v in op.operands)
        written = sum(v.type.nbytes for v in op.results)
        flops = cls.flops_per_element * sum(v.type.size for v in op.results)
        return Cost(flops, read, written)

    @classmethod
    def is_composite(cls) -> bool:
        return cls.decompose is not None


REGISTRY: dict[str, type[OpDef]] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator adding a declaration to the registry."""
    if cls.name in REGISTRY:
        raise ValueError(f"op '{cls.name}' declared twice")
    if not isinstance(getattr(cls, "kind", None), FusionKind):
        raise ValueError(f"op '{cls.name}' has no fusion kind")
    REGISTRY[cls.name] = cls
    return cls


def lookup(name: str) -> type[OpDef]:
    """The declaration of `name`; KeyError if none."""
    return REGISTRY[name]


def unbroadcast(b, grad, shape: tuple[int, ...]):
    """`grad` summed over the axes broadcasting added or stretched, so it has `shape`.

    The gradient of an operand that was broadcast to a larger result; `b` is a Builder.
    """
    shape = tuple(shape)
    have = grad.type.shape
    if have == shape:
        return grad
    lead = len(have) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and have[lead + i] != 1)
    if axes:
        grad = b.sum(grad, axes=axes)
    return grad if grad.type.shape == shape else b.reshape(grad, shape=shape)
