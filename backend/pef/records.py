"""Kernel-program records: buffers, strided accesses, affine indices and expression bodies.

* `Buffer`: a tensor a kernel touches. Role `input`/`output` buffers are graph
  tensors (their `name` is the tensor's symbol in the memory plan, e.g. `%x`,
  `@w`, `%12`); `temp` buffers are kernel-local. Each has a shape, a dtype (IR
  spelling: f32, bf16, f16, i32, i64, bool, or a block type such as q8_0), the
  memory `tier` (arena name: `onchip`, `hbm`, `ddr`) and byte `offset` in that
  arena, and element `strides` (row-major unless stated).
* `Access`: element `offset + sum(strides[j] * i[j])` of a buffer's flat storage
  for the loop index `i` of a stated index space, so transposes, broadcasts
  (stride 0), slices and reshapes are free.
* `Body`: a scalar-expression DAG (`ir.scalar` serialized): `nodes` in
  topological order, each naming earlier nodes by number; the last node is the
  value. Leaves: `arg` (value k: the element `reads[k]` loads), `index` (value k:
  the i64 affine function `indices[k]` of the loop index), `acc` (an epilogue's
  input: the stage's own result), `const` (value). Inner nodes: `cast` and the
  primitives of `ir.scalar.PRIMITIVES`.

The field validators here (`ints`, `one_of`, ...) are shared with the stage
declarations (`backend.pef.stages`).
"""
from __future__ import annotations

import math

import attrs

from ir.dtypes import DType
from ir.scalar import COMPARISONS, PRIMITIVES

DTYPES = tuple(d.value for d in DType)
ROLES = ("input", "output", "temp")
#: operand count of every body node op
ARITY: dict[str, int] = {
    **{op: 1 for op in ("neg", "abs", "exp", "log", "sqrt", "tanh", "sin", "cos", "erf", "cast")},
    **{op: 2 for op in ("add", "sub", "mul", "div", "max", "min", "pow", *COMPARISONS)},
    "select": 3, "arg": 0, "index": 0, "acc": 0, "const": 0,
}


class ProgramError(ValueError):
    """A kernel program that breaks a rule of the schema; the message names the field."""


def int_range(dtype: str) -> tuple[int, int]:
    """The smallest and largest value of an integer (or bool) dtype."""
    if dtype == "bool":
        return 0, 1
    bits = DType(dtype).itemsize * 8
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a contiguous row-major tensor."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def canonical(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...]:
    """Strides with those of size-1 axes zeroed (they never move), so equal reads compare equal."""
    return tuple(0 if d == 1 else s for d, s in zip(shape, strides))


# --- field validators ------------------------------------------------------------------
def nonneg(inst, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"'{attribute.name}' must be >= 0, got {value}")


def positive(inst, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be >= 1, got {value}")


def nonneg_all(inst, attribute, value) -> None:
    if any(v < 0 for v in value):
        raise ValueError(f"'{attribute.name}' entries must be >= 0, got {list(value)}")


def positive_all(inst, attribute, value) -> None:
    if any(v < 1 for v in value):
        raise ValueError(f"'{attribute.name}' entries must be >= 1, got {list(value)}")


def nonneg_values(inst, attribute, value) -> None:
    if any(v < 0 for v in value.values()):
        raise ValueError(f"'{attribute.name}' values must be >= 0")


def pair(inst, attribute, value) -> None:
    if len(value) != 2:
        raise ValueError(f"'{attribute.name}' needs 2 entries, got {list(value)}")


def one_of(*choices: str):
    def check(inst, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(choices)}, got {value!r}")
    return check


def ints(*validators):
    return attrs.field(converter=tuple, validator=list(validators) or None)


# --- records ----------------------------------------------------------------------------
@attrs.frozen
class Buffer:
    """A tensor bound to memory: `offset` bytes into the arena `tier`."""

    name: str
    role: str = attrs.field(validator=one_of(*ROLES))
    shape: tuple[int, ...] = ints(nonneg_all)
    dtype: str = attrs.field(validator=one_of(*DTYPES))
    tier: str = ""
    offset: int = attrs.field(default=0, validator=nonneg)
    strides: tuple[int, ...] = attrs.field(converter=tuple, validator=nonneg_all,
                                           default=attrs.Factory(lambda s: row_major(s.shape), takes_self=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return DType(self.dtype).nbytes(self.size)

    @property
    def span(self) -> int:
        """Elements of storage the strided layout covers."""
        if self.size == 0:
            return 0
        return 1 + sum((d - 1) * s for d, s in zip(self.shape, self.strides))


@attrs.frozen
class Access:
    """Element `offset + sum(strides[j] * i[j])` of `buffer`'s flat storage."""

    buffer: str
    offset: int = attrs.field(validator=nonneg)
    strides: tuple[int, ...] = ints(nonneg_all)


@attrs.frozen
class Affine:
    """The i64 value `offset + sum(coeffs[j] * i[j])` of the loop index `i`."""

    offset: int
    coeffs: tuple[int, ...] = ints()


@attrs.frozen
class Node:
    """One expression node: an op, its dtype, earlier nodes as operands, a leaf value."""

    op: str = attrs.field(validator=one_of(*ARITY))
    dtype: str = attrs.field(validator=one_of(*DTYPES))
    args: tuple[int, ...] = attrs.field(converter=tuple, default=(), validator=nonneg_all)
    value: int | float | None = None


@attrs.frozen
class Body:
    """An elementwise expression over a loop nest: strided reads, affine indices, nodes."""

    reads: tuple[Access, ...] = attrs.field(converter=tuple)
    indices: tuple[Affine, ...] = attrs.field(converter=tuple)
    nodes: tuple[Node, ...] = attrs.field(converter=tuple)

    @property
    def dtype(self) -> str:
        return self.nodes[-1].dtype


assert set(ARITY) == set(PRIMITIVES) | {"arg", "index", "acc", "const", "cast"}, "ARITY must cover ir.scalar"
