"""Kernel-program validation: what the JIT relies on, proved for every kernel of a PEF before it is lowered.

`backend.pef.file` adds the memory-plan half (each buffer's `span` lies inside its tensor's
allocation, each allocation inside its arena, a param and an update that trade places have
ranges of the same size, arenas and total work within the user's limits). The rules:

1. Every element a stage loads or stores is `offset + sum(strides[j] * i[j])` for an index `i`
   of the index space the checker checked the access over, and that element is below the
   buffer's `span` (offset, strides and extents are non-negative, so every partial sum is too,
   and all of them fit in i64: spans are bounded by the arena limit).
2. An index space with a zero extent is never iterated, so its accesses need no bound; but a
   stage that clamps a rejected position to 0 and loads anyway (a gather row out of the table,
   a scatter row out of the output, a conv or pool window position in the padding) only does so
   over a non-empty index space: such a stage with a non-empty output has non-empty operands.
3. Gather and scatter indices come from run-time data: the JIT checks each against the table's
   extent and reports INDEX_ERROR (the clamped position 0 exists by rule 2).
4. Constants fit their dtype: an integer constant, literal, reduce identity or pad value of an
   integer type is an integer in its range (a reduce identity may be -inf/+inf: the type's
   minimum/maximum), so no value is truncated or fails to convert while the JIT emits it.
5. A stage's output is row-major and written whole; it reads only inputs and earlier outputs.

The generic rules live here; each stage kind's own rules are its declaration's `check`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from backend.pef.records import ARITY, Access, Body, Buffer, Node, ProgramError, int_range, row_major
from ir.dtypes import DType
from ir.scalar import COMPARISONS

if TYPE_CHECKING:
    from backend.pef.stages import Stage


def validate(program) -> None:
    """Check a `KernelProgram`'s cross-field rules (names, shapes, dtypes, in-bounds accesses);
    ProgramError if one is broken."""
    Checker(program).run()


class Checker:
    """The generic rules, and the helpers a stage declaration's `check` calls."""

    def __init__(self, program):
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
            nest = self.program.loop_nest(stage)
            if tile and (len(tile) != len(nest) or any(t < 1 for t in tile)):
                raise self.fail(f"schedule.tiles[{i}]", f"tile {list(tile)} does not fit loop nest {list(nest)}")

    def check_buffer(self, where: str, buffer: Buffer) -> None:
        if buffer.name in self.buffers:
            raise self.fail(where, f"buffer name '{buffer.name}' is used twice")
        if len(buffer.strides) != len(buffer.shape):
            raise self.fail(where, f"{len(buffer.strides)} strides for rank {len(buffer.shape)}")
        if buffer.size > 2**40:
            raise self.fail(where, f"buffer '{buffer.name}' of {buffer.size} elements is too large")
        blocks = DType(buffer.dtype)
        if blocks.is_blocked and (not buffer.shape or buffer.shape[-1] % blocks.block):
            raise self.fail(where, f"a {buffer.dtype} buffer's last axis holds whole blocks of {blocks.block}, "
                                   f"'{buffer.name}' is {list(buffer.shape)}")
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
        if DType(out.dtype).is_blocked and not stage.writes_blocks:
            raise self.fail(f"{where}.out", f"a {stage.kind} stage cannot write {out.dtype} blocks ('{out.name}')")
        natural = stage.check(self, where, out)
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

    def window_grad(self, where, image: tuple[int, ...], window, grad: tuple[int, ...], stage) -> None:
        """The forward window op over `image` [N,C,H,W] gives `grad`'s spatial size."""
        dilation = getattr(stage, "dilation", (1, 1))
        size = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                     zip(image[2:], window, stage.stride, stage.padding, dilation))
        if len(image) != 4 or len(grad) != 4 or min(size, default=0) < 1 or size != tuple(grad[2:]) \
                or image[0] != grad[0]:
            raise self.fail(where, f"gradient {list(grad)} does not match the window over {list(image)}")


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
        if node.op != "arg" and DType(node.dtype).is_blocked or any(DType(a).is_blocked for a in args) and (
                node.op != "cast" or not DType(node.dtype).is_float):
            raise self.fail(where, "blocks are only read, and only cast to a float type")
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
