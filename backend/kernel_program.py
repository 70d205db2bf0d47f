"""Kernel programs: the contract between the backend and the runtime.

A kernel is one top-level op of the optimized graph (often a `fused` op). Its
`KernelProgram` is self-contained plain data that the runtime lowers without
the compiler:

* `buffers`: every tensor the kernel touches. Role `input`/`output` buffers are
  graph tensors (their `name` is the tensor's symbol in the memory plan, e.g.
  `%x`, `@w`, `%12`); `temp` buffers are kernel-local. Each has a shape, a dtype
  (IR spelling: f32, bf16, f16, i32, i64, bool), the memory `tier` (arena name:
  `onchip`, `hbm`, `ddr`) and byte `offset` in that arena, and element
  `strides` (row-major unless stated).
* `stages`: run in order; each writes one buffer (`out`) completely, and reads
  only kernel inputs and buffers written by earlier stages. A stage addresses
  its operands through `Access`es: element `offset + sum(strides[j] * i[j])`
  of the buffer's flat storage for the loop index `i` of a stated index space,
  so transposes, broadcasts (stride 0), slices and reshapes are free.
* `schedule`: tile sizes per stage, over the stage's loop nest (`loop_nest`), and the
  PCUs/PMUs the mapping gave the kernel.
* `cost`: modeled flops and bytes read/written per memory tier.

Expression bodies (`Body`) are scalar-expression DAGs (`ir.scalar` serialized):
`nodes` in topological order, each naming earlier nodes by number; the last
node is the value. Leaves: `arg` (value k: the element `reads[k]` loads),
`index` (value k: the i64 affine function `indices[k]` of the loop index),
`acc` (an epilogue's input: the stage's own result), `const` (value). Inner
nodes: `cast` and the primitives of `ir.scalar.PRIMITIVES`.

Stage kinds (loop index spaces in brackets):

* `map`: out[i] = body(i) over the out buffer's shape.
* `reduce`: over the loop nest `shape`, combine body(i) across `axes` with
  `combine` (add, max, min, argmax: the first index of the maximum along a
  single axis, as i32) starting from `identity`; out is the kept axes in
  row-major order (keepdims or not: same layout).
* `gemm`: out[b, m, n] = sum_k a[b, m, k] * b[b, k, n], accumulated in f32; the operands
  may be different float types (a bf16 weight times f32 activations), the product has the wider one.
* `conv2d`: NCHW x [x_shape] and OIHW w [w_shape], stride/padding/dilation/groups
  as PyTorch; out is [N, O, OH, OW].
* `pool2d`: max (padding is -inf) or avg (padding counts as zero) windows of x.
* `gather`: out = take(table, indices, axis); an index outside the table is a
  run-time error.
* `scatter_add`: out (table-shaped) = zeros, then out[..., indices[j], ...] +=
  updates[..., j, ...] along `axis` (gather's gradient).
* `concat`: parts [shapes[p]] joined along `axis`.
* `literal`: out = `values` (flat, row-major).
* `pad`: out = `value` everywhere, then x[i] at out[low + i * (interior + 1)] (XLA's pad).
* `conv2d_input_grad`: conv2d's gradient for its input: g [N,O,OH,OW] and w [O,C/groups,kh,kw]
  give out [N,C,H,W] (each g element times the weights added back over its window).
* `conv2d_weight_grad`: conv2d's gradient for its weight: x [N,C,H,W] and g [N,O,OH,OW] give
  out [O,C/groups,kh,kw].
* `pool2d_grad`: a pooling's gradient for its input [N,C,H,W] from g [N,C,OH,OW]: `avg` spreads
  g/(kh*kw) over each window; `max` adds g at each window's first maximum of x (padding -inf).
* `dynamic_slice`: out[b, ..., j, ...] = x[b, ..., starts[b] + j, ...] along `axis` (>= 1) of x
  [x_shape], one start per row of axis 0; zero where starts[b] + j is outside the axis.
* `update_slice`: out = operand, then out[b, ..., starts[b] + j, ...] = update[b, ..., j, ...] along
  `axis` for the rows of update [update_shape] that land inside it (others are dropped). `in_place`:
  the memory plan gave out the operand's own range, so only the update's rows are written (a KV cache).

* `all_reduce`: out = the sum (`reduce` "sum") or mean ("mean") of x [out's shape] over the
  `world_size` replicas of `group`. Not native code: the runtime's executor runs it on the host
  through a communicator (MPI), in f32 and in rank order; it is the only stage of its kernel.

Loop nests (what a schedule's tile sizes): the result's axes, then contracted ones —
gemm (batch..., m, n, k); conv2d (n, o, oh, ow, c/groups, kh, kw); conv2d_input_grad
(n, c, h, w, o/groups, kh, kw); conv2d_weight_grad (o, c/groups, kh, kw, n, oh, ow);
reduce its `shape`; every other stage its output's shape.

`reduce`, `gemm`, `conv2d` and `pool2d` take an optional `epilogue`: a body over
the out shape whose `acc` leaf is the stage's raw result (in the dtype the stage
computes: its operands' or body's, i32 for argmax); the epilogue's value is what is stored.
"""
from __future__ import annotations

import math
import typing
from typing import Any, ClassVar, Union

import attrs
import msgpack

from backend.schema import SchemaError, decode, encode
from ir.dtypes import DType
from ir.scalar import COMPARISONS, PRIMITIVES

SCHEMA_VERSION = 1
DTYPES = tuple(d.value for d in DType)
ROLES = ("input", "output", "temp")
COMBINES = ("add", "max", "min", "argmax")
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


# --- field validators ------------------------------------------------------------------
def _nonneg(inst, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"'{attribute.name}' must be >= 0, got {value}")


def _positive(inst, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"'{attribute.name}' must be >= 1, got {value}")


def _nonneg_all(inst, attribute, value) -> None:
    if any(v < 0 for v in value):
        raise ValueError(f"'{attribute.name}' entries must be >= 0, got {list(value)}")


def _positive_all(inst, attribute, value) -> None:
    if any(v < 1 for v in value):
        raise ValueError(f"'{attribute.name}' entries must be >= 1, got {list(value)}")


def _nonneg_values(inst, attribute, value) -> None:
    if any(v < 0 for v in value.values()):
        raise ValueError(f"'{attribute.name}' values must be >= 0")


def _pair(inst, attribute, value) -> None:
    if len(value) != 2:
        raise ValueError(f"'{attribute.name}' needs 2 entries, got {list(value)}")


def _one_of(*choices: str):
    def check(inst, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"'{attribute.name}' must be one of {', '.join(choices)}, got {value!r}")
    return check


def _ints(*validators):
    return attrs.field(converter=tuple, validator=list(validators) or None)


# --- records ----------------------------------------------------------------------------
@attrs.frozen
class Buffer:
    """A tensor bound to memory: `offset` bytes into the arena `tier`."""

    name: str
    role: str = attrs.field(validator=_one_of(*ROLES))
    shape: tuple[int, ...] = _ints(_nonneg_all)
    dtype: str = attrs.field(validator=_one_of(*DTYPES))
    tier: str = ""
    offset: int = attrs.field(default=0, validator=_nonneg)
    strides: tuple[int, ...] = attrs.field(converter=tuple, validator=_nonneg_all,
                                           default=attrs.Factory(lambda s: row_major(s.shape), takes_self=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * DType(self.dtype).itemsize

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
    offset: int = attrs.field(validator=_nonneg)
    strides: tuple[int, ...] = _ints(_nonneg_all)


@attrs.frozen
class Affine:
    """The i64 value `offset + sum(coeffs[j] * i[j])` of the loop index `i`."""

    offset: int
    coeffs: tuple[int, ...] = _ints()


@attrs.frozen
class Node:
    """One expression node: an op, its dtype, earlier nodes as operands, a leaf value."""

    op: str = attrs.field(validator=_one_of(*ARITY))
    dtype: str = attrs.field(validator=_one_of(*DTYPES))
    args: tuple[int, ...] = attrs.field(converter=tuple, default=(), validator=_nonneg_all)
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


@attrs.frozen
class MapStage:
    kind: ClassVar[str] = "map"
    out: str
    body: Body


@attrs.frozen
class ReduceStage:
    kind: ClassVar[str] = "reduce"
    out: str
    shape: tuple[int, ...] = _ints(_nonneg_all)
    axes: tuple[int, ...] = _ints(_nonneg_all)
    combine: str = attrs.field(validator=_one_of(*COMBINES))
    identity: float
    body: Body
    epilogue: Body | None = None


@attrs.frozen
class GemmStage:
    kind: ClassVar[str] = "gemm"
    out: str
    batch: tuple[int, ...] = _ints(_nonneg_all)
    m: int = attrs.field(validator=_nonneg)
    n: int = attrs.field(validator=_nonneg)
    k: int = attrs.field(validator=_nonneg)
    a: Access
    b: Access
    epilogue: Body | None = None


@attrs.frozen
class Conv2dStage:
    kind: ClassVar[str] = "conv2d"
    out: str
    x: Access
    w: Access
    x_shape: tuple[int, ...] = _ints(_nonneg_all)
    w_shape: tuple[int, ...] = _ints(_nonneg_all)
    stride: tuple[int, ...] = _ints(_pair, _positive_all)
    padding: tuple[int, ...] = _ints(_pair, _nonneg_all)
    dilation: tuple[int, ...] = _ints(_pair, _positive_all)
    groups: int = attrs.field(validator=_positive)
    epilogue: Body | None = None


@attrs.frozen
class Pool2dStage:
    kind: ClassVar[str] = "pool2d"
    out: str
    x: Access
    x_shape: tuple[int, ...] = _ints(_nonneg_all)
    mode: str = attrs.field(validator=_one_of("max", "avg"))
    kernel: tuple[int, ...] = _ints(_pair, _positive_all)
    stride: tuple[int, ...] = _ints(_pair, _positive_all)
    padding: tuple[int, ...] = _ints(_pair, _nonneg_all)
    epilogue: Body | None = None


@attrs.frozen
class GatherStage:
    kind: ClassVar[str] = "gather"
    out: str
    table: Access
    table_shape: tuple[int, ...] = _ints(_nonneg_all)
    indices: Access
    indices_shape: tuple[int, ...] = _ints(_nonneg_all)
    axis: int = attrs.field(validator=_nonneg)


@attrs.frozen
class ScatterAddStage:
    kind: ClassVar[str] = "scatter_add"
    out: str
    updates: Access
    indices: Access
    indices_shape: tuple[int, ...] = _ints(_nonneg_all)
    axis: int = attrs.field(validator=_nonneg)


@attrs.frozen
class ConcatStage:
    kind: ClassVar[str] = "concat"
    out: str
    parts: tuple[Access, ...] = attrs.field(converter=tuple)
    shapes: tuple[tuple[int, ...], ...] = attrs.field(converter=tuple)
    axis: int = attrs.field(validator=_nonneg)


@attrs.frozen
class PadStage:
    kind: ClassVar[str] = "pad"
    out: str
    x: Access
    x_shape: tuple[int, ...] = _ints(_nonneg_all)
    low: tuple[int, ...] = _ints(_nonneg_all)
    high: tuple[int, ...] = _ints(_nonneg_all)
    interior: tuple[int, ...] = _ints(_nonneg_all)
    value: float


@attrs.frozen
class Conv2dInputGradStage:
    kind: ClassVar[str] = "conv2d_input_grad"
    out: str
    g: Access
    w: Access
    g_shape: tuple[int, ...] = _ints(_nonneg_all)
    w_shape: tuple[int, ...] = _ints(_nonneg_all)
    stride: tuple[int, ...] = _ints(_pair, _positive_all)
    padding: tuple[int, ...] = _ints(_pair, _nonneg_all)
    dilation: tuple[int, ...] = _ints(_pair, _positive_all)
    groups: int = attrs.field(validator=_positive)


@attrs.frozen
class Conv2dWeightGradStage:
    kind: ClassVar[str] = "conv2d_weight_grad"
    out: str
    x: Access
    g: Access
    x_shape: tuple[int, ...] = _ints(_nonneg_all)
    g_shape: tuple[int, ...] = _ints(_nonneg_all)
    stride: tuple[int, ...] = _ints(_pair, _positive_all)
    padding: tuple[int, ...] = _ints(_pair, _nonneg_all)
    dilation: tuple[int, ...] = _ints(_pair, _positive_all)
    groups: int = attrs.field(validator=_positive)


@attrs.frozen
class Pool2dGradStage:
    kind: ClassVar[str] = "pool2d_grad"
    out: str
    mode: str = attrs.field(validator=_one_of("max", "avg"))
    x: Access | None
    g: Access
    g_shape: tuple[int, ...] = _ints(_nonneg_all)
    kernel: tuple[int, ...] = _ints(_pair, _positive_all)
    stride: tuple[int, ...] = _ints(_pair, _positive_all)
    padding: tuple[int, ...] = _ints(_pair, _nonneg_all)


@attrs.frozen
class DynamicSliceStage:
    kind: ClassVar[str] = "dynamic_slice"
    out: str
    x: Access
    x_shape: tuple[int, ...] = _ints(_nonneg_all)
    starts: Access
    axis: int = attrs.field(validator=_positive)


@attrs.frozen
class UpdateSliceStage:
    kind: ClassVar[str] = "update_slice"
    out: str
    operand: Access
    update: Access
    update_shape: tuple[int, ...] = _ints(_nonneg_all)
    starts: Access
    axis: int = attrs.field(validator=_positive)
    in_place: bool = False


@attrs.frozen
class AllReduceStage:
    kind: ClassVar[str] = "all_reduce"
    out: str
    x: Access
    reduce: str = attrs.field(validator=_one_of("sum", "mean"))
    group: str
    world_size: int = attrs.field(validator=_positive)


@attrs.frozen
class LiteralStage:
    kind: ClassVar[str] = "literal"
    out: str
    values: tuple[int | float, ...] = attrs.field(converter=tuple)


Stage = Union[MapStage, ReduceStage, GemmStage, Conv2dStage, Pool2dStage, GatherStage,
              ScatterAddStage, ConcatStage, PadStage, Conv2dInputGradStage, Conv2dWeightGradStage,
              Pool2dGradStage, LiteralStage, DynamicSliceStage, UpdateSliceStage, AllReduceStage]
#: stage kinds the runtime runs on the host instead of as native code (collectives)
HOST_STAGES = frozenset({"all_reduce"})
STAGES: dict[str, type] = {cls.kind: cls for cls in typing.get_args(Stage)}


def loop_nest(program: KernelProgram, stage: Stage) -> tuple[int, ...]:
    """The extents of the loop nest a stage's tile sizes (see the module docstring)."""
    out = tuple(program.buffer(stage.out).shape)
    if isinstance(stage, ReduceStage):
        return tuple(stage.shape)
    if isinstance(stage, GemmStage):
        return tuple(stage.batch) + (stage.m, stage.n, stage.k)
    if isinstance(stage, Conv2dStage):
        return out + tuple(stage.w_shape[1:])
    if isinstance(stage, Conv2dInputGradStage):
        return out + (stage.w_shape[0] // stage.groups, *stage.w_shape[2:])
    if isinstance(stage, Conv2dWeightGradStage):
        return out + (stage.g_shape[0], *stage.g_shape[2:])
    return out


def stage_work(stage: Stage, buffers: dict[str, Buffer]) -> int:
    """Element operations a stage performs (at least one per iteration of its loops): what
    decides whether threads pay off, and what the PEF reader bounds."""
    out = buffers[stage.out].size
    if stage.kind == "gemm":
        return math.prod(stage.batch) * stage.m * stage.n * max(stage.k, 1)
    if stage.kind in ("conv2d", "conv2d_input_grad"):
        return out * math.prod(stage.w_shape[1:])
    if stage.kind == "conv2d_weight_grad":
        return out * math.prod(stage.g_shape) // max(stage.g_shape[1], 1)
    if stage.kind == "pool2d":
        return out * math.prod(stage.kernel)
    if stage.kind == "pool2d_grad":
        return out + math.prod(stage.g_shape) * math.prod(stage.kernel)
    if stage.kind == "update_slice":
        return math.prod(stage.update_shape) + (0 if stage.in_place else out)
    if stage.kind == "scatter_add":
        return out + math.prod(stage.indices_shape) * out // max(buffers[stage.out].shape[stage.axis], 1)
    if stage.kind == "reduce":
        return math.prod(stage.shape) * len(stage.body.nodes)
    if stage.kind == "map":
        return out * len(stage.body.nodes)
    return out


def program_work(program: KernelProgram) -> int:
    """Element operations one run of the kernel performs."""
    buffers = {b.name: b for b in program.buffers}
    return sum(stage_work(stage, buffers) for stage in program.stages)


@attrs.frozen
class Schedule:
    """Tile sizes per stage (over its `loop_nest`; empty: not chosen) and the mapped resources."""

    tiles: tuple[tuple[int, ...], ...] = attrs.field(converter=tuple, default=())
    pcus: int = attrs.field(default=0, validator=_nonneg)
    pmus: int = attrs.field(default=0, validator=_nonneg)


@attrs.frozen
class KernelCost:
    """Modeled work: flops and bytes read/written per memory tier."""

    flops: int = attrs.field(validator=_nonneg)
    bytes_read: dict[str, int] = attrs.field(factory=dict, validator=_nonneg_values)
    bytes_written: dict[str, int] = attrs.field(factory=dict, validator=_nonneg_values)


@attrs.frozen
class KernelProgram:
    """One kernel: its buffers, stages, schedule and cost."""

    name: str
    op: str
    phase: str | None = attrs.field(validator=attrs.validators.optional(_one_of("fwd", "bwd", "allreduce", "gradnorm", "opt")))
    loc: str
    buffers: tuple[Buffer, ...] = attrs.field(converter=tuple)
    stages: tuple[Stage, ...] = attrs.field(converter=tuple)
    schedule: Schedule = Schedule()
    cost: KernelCost = KernelCost(0)

    def buffer(self, name: str) -> Buffer:
        for buffer in self.buffers:
            if buffer.name == name:
                return buffer
        raise KeyError(name)

    def with_role(self, role: str) -> list[Buffer]:
        return [b for b in self.buffers if b.role == role]

    def to_obj(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_obj(cls, data: Any, path: str = "") -> KernelProgram:
        """Decode and validate; SchemaError (a ValueError) names the bad field."""
        program = decode(cls, data, path)
        try:
            validate(program)
        except ProgramError as err:
            raise SchemaError(path, str(err)) from None
        return program

    def to_msgpack(self) -> bytes:
        return msgpack.packb(self.to_obj(), use_bin_type=True)

    @classmethod
    def from_msgpack(cls, data: bytes) -> KernelProgram:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as err:  # noqa: BLE001 - msgpack raises many types for bad bytes
            raise SchemaError("", f"not a msgpack kernel program ({type(err).__name__})") from None
        return cls.from_obj(obj)


# --- semantic validation ------------------------------------------------------------------
#
# What the JIT relies on (runtime/jit/*), proved here for every kernel of a PEF before it is
# lowered; `backend.pef` adds the memory-plan half (each buffer's `span` lies inside its tensor's
# allocation, each allocation inside its arena, a param and an update that trade places have
# ranges of the same size, arenas and total work within the user's limits):
#
# 1. Every element a stage loads or stores is `offset + sum(strides[j] * i[j])` for an index `i`
#    of the index space the validator checked the access over, and that element is below the
#    buffer's `span` (offset, strides and extents are non-negative, so every partial sum is too,
#    and all of them fit in i64: spans are bounded by the arena limit).
# 2. An index space with a zero extent is never iterated, so its accesses need no bound; but a
#    stage that clamps a rejected position to 0 and loads anyway (a gather row out of the table,
#    a scatter row out of the output, a conv or pool window position in the padding) only does so
#    over a non-empty index space: such a stage with a non-empty output has non-empty operands.
# 3. Gather and scatter indices come from run-time data: the JIT checks each against the table's
#    extent and reports INDEX_ERROR (the clamped position 0 exists by rule 2).
# 4. Constants fit their dtype: an integer constant, literal, reduce identity or pad value of an
#    integer type is an integer in its range (a reduce identity may be -inf/+inf: the type's
#    minimum/maximum), so no value is truncated or fails to convert while the JIT emits it.
# 5. A stage's output is row-major and written whole; it reads only inputs and earlier outputs.
def validate(program: KernelProgram) -> None:
    """Check cross-field rules (names, shapes, dtypes, in-bounds accesses); ProgramError if broken."""
    _Validator(program).run()


class _Validator:
    def __init__(self, program: KernelProgram):
        self.program = program
        self.buffers: dict[str, Buffer] = {}
        self.written: set[str] = set()

    def fail(self, where: str, message: str) -> ProgramError:
        return ProgramError(f"kernel '{self.program.name}': {where}: {message}")

    def run(self) -> None:
        for i, buffer in enumerate(self.program.buffers):
            self.check_buffer(f"buffers[{i}]", buffer)
        for i, stage in enumerate(self.program.stages):
            self.check_stage(f"stages[{i}]", stage)
        unwritten = [b.name for b in self.program.buffers if b.role == "output" and b.name not in self.written]
        if unwritten:
            raise self.fail("stages", f"output buffer '{unwritten[0]}' is never written")
        tiles = self.program.schedule.tiles
        if tiles and len(tiles) != len(self.program.stages):
            raise self.fail("schedule.tiles", f"{len(tiles)} entries for {len(self.program.stages)} stages")
        for i, (tile, stage) in enumerate(zip(tiles, self.program.stages)):
            nest = loop_nest(self.program, stage)
            if tile and (len(tile) != len(nest) or any(t < 1 for t in tile)):
                raise self.fail(f"schedule.tiles[{i}]", f"tile {list(tile)} does not fit loop nest {list(nest)}")

    def check_buffer(self, where: str, buffer: Buffer) -> None:
        if buffer.name in self.buffers:
            raise self.fail(where, f"buffer name '{buffer.name}' is used twice")
        if len(buffer.strides) != len(buffer.shape):
            raise self.fail(where, f"{len(buffer.strides)} strides for rank {len(buffer.shape)}")
        if buffer.size > 2**40:
            raise self.fail(where, f"buffer '{buffer.name}' of {buffer.size} elements is too large")
        self.buffers[buffer.name] = buffer

    def readable(self, where: str, name: str) -> Buffer:
        buffer = self.buffers.get(name)
        if buffer is None:
            raise self.fail(where, f"unknown buffer '{name}'")
        if buffer.role != "input" and name not in self.written:
            raise self.fail(where, f"buffer '{name}' is read before a stage writes it")
        return buffer

    def access(self, where: str, access: Access, shape: tuple[int, ...], dtype: str | None = None,
               used: bool = False) -> Buffer:
        """An in-bounds access over index space `shape`; returns its buffer. `used`: the stage loads
        from it (a clamped position 0 at least) whenever it runs, so the space may not be empty."""
        if used and not math.prod(shape):
            raise self.fail(where, f"reads an empty {list(shape)} operand for a non-empty output")
        buffer = self.readable(f"{where}.buffer", access.buffer)
        if len(access.strides) != len(shape):
            raise self.fail(where, f"{len(access.strides)} strides for an index space of rank {len(shape)}")
        if dtype is not None and buffer.dtype != dtype:
            raise self.fail(where, f"reads {buffer.dtype} buffer '{buffer.name}', expected {dtype}")
        if math.prod(shape) and access.offset + sum((d - 1) * s for d, s in zip(shape, access.strides)) >= buffer.span:
            raise self.fail(where, f"reads past the end of buffer '{buffer.name}' ({buffer.span} elements)")
        return buffer

    def check_stage(self, where: str, stage: Stage) -> None:
        out = self.buffers.get(stage.out)
        if out is None:
            raise self.fail(f"{where}.out", f"unknown buffer '{stage.out}'")
        if out.role == "input" or stage.out in self.written:
            raise self.fail(f"{where}.out", f"buffer '{stage.out}' is an input or already written")
        if out.strides != row_major(out.shape):
            raise self.fail(f"{where}.out", f"stage outputs must be row-major, '{out.name}' is not")
        natural = getattr(self, f"stage_{stage.kind}")(where, stage, out)
        epilogue = getattr(stage, "epilogue", None)
        if epilogue is not None:
            self.body(f"{where}.epilogue", epilogue, out.shape, acc=natural)
            natural = epilogue.dtype
        if natural != out.dtype:
            raise self.fail(where, f"computes {natural} but buffer '{out.name}' is {out.dtype}")
        self.written.add(stage.out)

    def expect_shape(self, where: str, out: Buffer, shape: tuple[int, ...]) -> None:
        if tuple(out.shape) != tuple(shape):
            raise self.fail(where, f"output '{out.name}' is {list(out.shape)}, the stage gives {list(shape)}")

    def stage_map(self, where, stage: MapStage, out) -> str:
        self.body(f"{where}.body", stage.body, out.shape)
        return stage.body.dtype

    def stage_reduce(self, where, stage: ReduceStage, out) -> str:
        rank = len(stage.shape)
        if len(set(stage.axes)) != len(stage.axes) or any(a >= rank for a in stage.axes):
            raise self.fail(f"{where}.axes", f"bad axes {list(stage.axes)} for rank {rank}")
        if stage.combine == "argmax" and len(stage.axes) != 1:
            raise self.fail(f"{where}.axes", "argmax reduces exactly one axis")
        kept = math.prod(d for i, d in enumerate(stage.shape) if i not in stage.axes)
        if out.size != kept:
            raise self.fail(where, f"output '{out.name}' has {out.size} elements, the reduction gives {kept}")
        self.body(f"{where}.body", stage.body, stage.shape)
        if stage.body.dtype == "bool":
            raise self.fail(f"{where}.body", "cannot reduce bool values")
        if not DType(stage.body.dtype).is_float and not math.isinf(stage.identity):
            self.fits(f"{where}.identity", stage.identity, stage.body.dtype)
        return "i32" if stage.combine == "argmax" else stage.body.dtype

    def stage_gemm(self, where, stage: GemmStage, out) -> str:
        batch = tuple(stage.batch)
        a = self.access(f"{where}.a", stage.a, batch + (stage.m, stage.k))
        b = self.access(f"{where}.b", stage.b, batch + (stage.k, stage.n))
        if not (DType(a.dtype).is_float and DType(b.dtype).is_float):
            raise self.fail(where, f"gemm needs float operands, got {a.dtype} and {b.dtype}")
        self.expect_shape(where, out, batch + (stage.m, stage.n))
        return max(a.dtype, b.dtype, key=lambda name: DType(name).itemsize)

    def stage_conv2d(self, where, stage: Conv2dStage, out) -> str:
        if len(stage.x_shape) != 4 or len(stage.w_shape) != 4:
            raise self.fail(where, "x_shape and w_shape need 4 entries")
        n, c, h, w = stage.x_shape
        o, cg, kh, kw = stage.w_shape
        if c != cg * stage.groups or o % stage.groups:
            raise self.fail(where, f"channels {c} and {o} do not match groups={stage.groups}")
        x = self.access(f"{where}.x", stage.x, stage.x_shape, used=out.size > 0)
        self.access(f"{where}.w", stage.w, stage.w_shape, x.dtype, used=out.size > 0)
        size = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                zip((h, w), (kh, kw), stage.stride, stage.padding, stage.dilation)]
        if min(size) < 1:
            raise self.fail(where, "the kernel is larger than the padded input")
        self.expect_shape(where, out, (n, o, *size))
        return x.dtype

    def stage_pool2d(self, where, stage: Pool2dStage, out) -> str:
        if len(stage.x_shape) != 4:
            raise self.fail(where, "x_shape needs 4 entries")
        x = self.access(f"{where}.x", stage.x, stage.x_shape, used=out.size > 0)
        if any(2 * p > k for p, k in zip(stage.padding, stage.kernel)):
            raise self.fail(where, "padding must be at most half the kernel")
        size = [(s + 2 * p - k) // st + 1 for s, k, st, p in
                zip(stage.x_shape[2:], stage.kernel, stage.stride, stage.padding)]
        if min(size) < 1:
            raise self.fail(where, "the window is larger than the padded input")
        self.expect_shape(where, out, (*stage.x_shape[:2], *size))
        return x.dtype

    def stage_gather(self, where, stage: GatherStage, out) -> str:
        table = self.access(f"{where}.table", stage.table, stage.table_shape, used=out.size > 0)
        indices = self.access(f"{where}.indices", stage.indices, stage.indices_shape)
        if not DType(indices.dtype).is_int:
            raise self.fail(f"{where}.indices", f"indices must be integers, got {indices.dtype}")
        if stage.axis >= len(stage.table_shape):
            raise self.fail(f"{where}.axis", f"axis {stage.axis} out of range")
        t, ax = stage.table_shape, stage.axis
        self.expect_shape(where, out, (*t[:ax], *stage.indices_shape, *t[ax + 1:]))
        return table.dtype

    def stage_scatter_add(self, where, stage: ScatterAddStage, out) -> str:
        if stage.axis >= len(out.shape):
            raise self.fail(f"{where}.axis", f"axis {stage.axis} out of range")
        t, ax = out.shape, stage.axis
        space = (*t[:ax], *stage.indices_shape, *t[ax + 1:])
        if math.prod(space) and not out.size:
            raise self.fail(where, f"scatter_add adds into an empty {list(t)} output")
        updates = self.access(f"{where}.updates", stage.updates, space)
        indices = self.access(f"{where}.indices", stage.indices, stage.indices_shape)
        if not DType(indices.dtype).is_int:
            raise self.fail(f"{where}.indices", f"indices must be integers, got {indices.dtype}")
        return updates.dtype

    def stage_concat(self, where, stage: ConcatStage, out) -> str:
        if not stage.parts or len(stage.parts) != len(stage.shapes):
            raise self.fail(where, "concat needs one shape per part and at least one part")
        rank = len(out.shape)
        if stage.axis >= rank:
            raise self.fail(f"{where}.axis", f"axis {stage.axis} out of range")
        for i, (part, shape) in enumerate(zip(stage.parts, stage.shapes)):
            if len(shape) != rank or any(d != o for j, (d, o) in enumerate(zip(shape, out.shape)) if j != stage.axis):
                raise self.fail(f"{where}.shapes[{i}]", f"{list(shape)} does not fit output {list(out.shape)}")
            self.access(f"{where}.parts[{i}]", part, tuple(shape), out.dtype)
        if sum(s[stage.axis] for s in stage.shapes) != out.shape[stage.axis]:
            raise self.fail(where, "part sizes do not add up to the output along the axis")
        return out.dtype

    def stage_pad(self, where, stage: PadStage, out) -> str:
        rank = len(stage.x_shape)
        if not len(stage.low) == len(stage.high) == len(stage.interior) == rank:
            raise self.fail(where, f"low, high and interior need {rank} entries each")
        x = self.access(f"{where}.x", stage.x, stage.x_shape, out.dtype)
        if not DType(out.dtype).is_float:
            self.fits(f"{where}.value", stage.value, out.dtype)
        shape = [lo + hi + d + max(d - 1, 0) * it for d, lo, hi, it in
                 zip(stage.x_shape, stage.low, stage.high, stage.interior)]
        self.expect_shape(where, out, tuple(shape))
        return x.dtype

    def window_grad(self, where, image: tuple[int, ...], window, grad: tuple[int, ...], stage) -> None:
        """The forward window op over `image` [N,C,H,W] gives `grad`'s spatial size."""
        dilation = getattr(stage, "dilation", (1, 1))
        size = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                     zip(image[2:], window, stage.stride, stage.padding, dilation))
        if len(image) != 4 or len(grad) != 4 or min(size, default=0) < 1 or size != tuple(grad[2:]) \
                or image[0] != grad[0]:
            raise self.fail(where, f"gradient {list(grad)} does not match the window over {list(image)}")

    def stage_conv2d_input_grad(self, where, stage: Conv2dInputGradStage, out) -> str:
        if len(stage.w_shape) != 4 or len(out.shape) != 4 or len(stage.g_shape) != 4:
            raise self.fail(where, "g_shape, w_shape and the output need 4 entries")
        o, cg, kh, kw = stage.w_shape
        if stage.g_shape[1] != o or o % stage.groups or out.shape[1] != cg * stage.groups:
            raise self.fail(where, f"channels do not match groups={stage.groups}")
        self.window_grad(where, out.shape, (kh, kw), stage.g_shape, stage)
        g = self.access(f"{where}.g", stage.g, stage.g_shape, out.dtype, used=out.size > 0)
        self.access(f"{where}.w", stage.w, stage.w_shape, out.dtype, used=out.size > 0)
        return g.dtype

    def stage_conv2d_weight_grad(self, where, stage: Conv2dWeightGradStage, out) -> str:
        if len(stage.x_shape) != 4 or len(out.shape) != 4 or len(stage.g_shape) != 4:
            raise self.fail(where, "x_shape, g_shape and the output need 4 entries")
        o, cg, kh, kw = out.shape
        if stage.g_shape[1] != o or o % stage.groups or stage.x_shape[1] != cg * stage.groups:
            raise self.fail(where, f"channels do not match groups={stage.groups}")
        self.window_grad(where, stage.x_shape, (kh, kw), stage.g_shape, stage)
        x = self.access(f"{where}.x", stage.x, stage.x_shape, out.dtype, used=out.size > 0)
        self.access(f"{where}.g", stage.g, stage.g_shape, out.dtype, used=out.size > 0)
        return x.dtype

    def stage_pool2d_grad(self, where, stage: Pool2dGradStage, out) -> str:
        if len(out.shape) != 4 or tuple(out.shape[:2]) != tuple(stage.g_shape[:2]):
            raise self.fail(where, f"output {list(out.shape)} does not match gradient {list(stage.g_shape)}")
        if any(2 * p > k for p, k in zip(stage.padding, stage.kernel)):
            raise self.fail(where, "padding must be at most half the kernel")
        self.window_grad(where, out.shape, stage.kernel, stage.g_shape, stage)
        if math.prod(stage.g_shape) and not out.size:
            raise self.fail(where, f"adds a gradient into an empty {list(out.shape)} output")
        if (stage.x is None) != (stage.mode == "avg"):
            raise self.fail(f"{where}.x", "max pooling's gradient reads x; average pooling's does not")
        if stage.x is not None:
            self.access(f"{where}.x", stage.x, out.shape, out.dtype)
        return self.access(f"{where}.g", stage.g, stage.g_shape, out.dtype).dtype

    def row_starts(self, where: str, starts: Access, rows: int) -> None:
        """One integer start per row of axis 0."""
        buffer = self.access(f"{where}.starts", starts, (rows,))
        if not DType(buffer.dtype).is_int:
            raise self.fail(f"{where}.starts", f"starts must be integers, got {buffer.dtype}")

    def stage_dynamic_slice(self, where, stage: DynamicSliceStage, out) -> str:
        shape, axis = tuple(stage.x_shape), stage.axis
        if axis >= len(shape) or len(out.shape) != len(shape) or out.shape[axis] > shape[axis]:
            raise self.fail(where, f"output {list(out.shape)} is not a window of {list(shape)} along axis {axis}")
        self.expect_shape(where, out, shape[:axis] + (out.shape[axis],) + shape[axis + 1:])
        self.row_starts(where, stage.starts, shape[0])
        return self.access(f"{where}.x", stage.x, shape, out.dtype, used=out.size > 0).dtype

    def stage_update_slice(self, where, stage: UpdateSliceStage, out) -> str:
        shape, axis = tuple(out.shape), stage.axis
        update = tuple(stage.update_shape)
        if axis >= len(shape) or len(update) != len(shape) or update[axis] > shape[axis] or any(
                u != d for i, (u, d) in enumerate(zip(update, shape)) if i != axis):
            raise self.fail(where, f"update {list(update)} does not fit output {list(shape)} along axis {axis}")
        operand = self.access(f"{where}.operand", stage.operand, shape, out.dtype)
        self.access(f"{where}.update", stage.update, update, out.dtype)
        self.row_starts(where, stage.starts, shape[0])
        if stage.in_place and ((operand.tier, operand.offset) != (out.tier, out.offset)
                               or stage.operand.offset or tuple(stage.operand.strides) != out.strides):
            raise self.fail(f"{where}.in_place", f"operand '{operand.name}' does not share output "
                                                 f"'{out.name}'s memory and layout")
        return out.dtype

    def stage_all_reduce(self, where, stage: AllReduceStage, out) -> str:
        if len(self.program.stages) != 1:
            raise self.fail(where, "an all_reduce stage must be its kernel's only stage")
        if not DType(out.dtype).is_float:
            raise self.fail(where, f"all_reduce reduces float values, got {out.dtype}")
        self.access(f"{where}.x", stage.x, tuple(out.shape), out.dtype)
        return out.dtype

    def stage_literal(self, where, stage: LiteralStage, out) -> str:
        if len(stage.values) != out.size:
            raise self.fail(where, f"{len(stage.values)} values for {out.size} elements")
        wanted = float if DType(out.dtype).is_float else int
        if any(type(v) is not wanted for v in stage.values):
            raise self.fail(where, f"{out.dtype} values must all be {wanted.__name__}s")
        if wanted is int:
            self.fits(where, min(stage.values, default=0), out.dtype)
            self.fits(where, max(stage.values, default=0), out.dtype)
        return out.dtype

    def fits(self, where: str, value: int | float, dtype: str) -> None:
        """An integer-typed constant is an integer in its dtype's range."""
        low, high = int_range(dtype)
        if not (isinstance(value, int) or math.isfinite(value) and value == int(value)) or not low <= value <= high:
            raise self.fail(where, f"constant {value} does not fit {dtype}")

    def body(self, where: str, body: Body, shape: tuple[int, ...], acc: str | None = None) -> None:
        """Check an expression over loop index space `shape`."""
        if not body.nodes:
            raise self.fail(where, "empty body")
        dtypes = [self.access(f"{where}.reads[{i}]", r, tuple(shape)).dtype for i, r in enumerate(body.reads)]
        for i, affine in enumerate(body.indices):
            if len(affine.coeffs) != len(shape):
                raise self.fail(f"{where}.indices[{i}]", f"{len(affine.coeffs)} coefficients for rank {len(shape)}")
        for i, node in enumerate(body.nodes):
            self.node(f"{where}.nodes[{i}]", node, body, i, dtypes, acc)

    def node(self, where: str, node: Node, body: Body, i: int, dtypes: list[str], acc: str | None) -> None:
        if len(node.args) != ARITY[node.op] or any(a >= i for a in node.args):
            raise self.fail(where, f"'{node.op}' needs {ARITY[node.op]} operand(s) among earlier nodes")
        args = [body.nodes[a].dtype for a in node.args]
        expected = self.node_dtype(where, node, args, dtypes, len(body.indices), acc)
        if expected is not None and node.dtype != expected:
            raise self.fail(where, f"'{node.op}' gives {expected}, the node says {node.dtype}")

    def node_dtype(self, where, node: Node, args: list[str], dtypes, n_indices: int, acc) -> str | None:
        op = node.op
        if op in ("arg", "index"):
            count = len(dtypes) if op == "arg" else n_indices
            if not isinstance(node.value, int) or not 0 <= node.value < count:
                raise self.fail(where, f"'{op}' refers to {node.value!r}, out of {count}")
            return dtypes[node.value] if op == "arg" else "i64"
        if op == "acc":
            if acc is None:
                raise self.fail(where, "'acc' outside an epilogue")
            return acc
        if op == "const":
            wanted = float if DType(node.dtype).is_float else int
            if type(node.value) is not wanted:
                raise self.fail(where, f"a {node.dtype} constant needs a {wanted.__name__} value")
            if wanted is int:
                self.fits(where, node.value, node.dtype)
            return None
        if node.value is not None:
            raise self.fail(where, f"'{op}' takes no value")
        if op == "cast":
            return None
        if op == "select":
            if args[0] != "bool" or args[1] != args[2]:
                raise self.fail(where, f"select needs (bool, T, T), got {args}")
            return args[1]
        if len(set(args)) != 1:
            raise self.fail(where, f"'{op}' operands differ in dtype: {args}")
        if op in COMPARISONS:
            return "bool"
        if args[0] == "bool" or op in _FLOAT_ONLY and not DType(args[0]).is_float:
            raise self.fail(where, f"'{op}' does not take {args[0]} operands")
        return args[0]


_FLOAT_ONLY = frozenset({"exp", "log", "sqrt", "tanh", "sin", "cos", "erf", "div", "pow"})
assert set(ARITY) == set(PRIMITIVES) | {"arg", "index", "acc", "const", "cast"}, "ARITY must cover ir.scalar"
