"""Matrix-vector products: `gemm` stages with a few rows (the projections of a decode step).

The blocked gemm packs B on every call and computes `MR` rows at a time, so with one
row it moves B twice and wastes most of its arithmetic. With at most `ROWS` rows B is
streamed once instead, in the layout it has, in blocks of `BLOCK` output columns (the
unit of work threads share):

* B with unit column stride ([K, N], GPT-2's Conv1D weights): the sums of a thread's
  consecutive columns (up to `CHUNK`) live in an on-stack accumulator, and each pass adds
  `DEPTH` rows of B to it — `acc[j] += a[i, p] * B[p, j] + ...` is a contiguous loop the
  vectorizer turns into FMAs, reading long runs of B's rows side by side;
* B with unit row stride (a transposed [N, K] weight: Linear layers, the LM head):
  each column is a dot product of contiguous vectors, a vectorized reduction.

Sums are in f32 (`contract`/`reassoc` let LLVM fuse and reorder them, as the plain
loop nest does); the epilogue applies as each sum is stored.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit import expr as ex
from runtime.jit.codegen import F32, i64

#: the most rows a stage may have to take this path
ROWS = 4
#: output columns per block (the unit of thread splitting)
BLOCK = 64
#: the most output columns summed at once along rows of B (one thread's consecutive blocks)
CHUNK = 2048
#: depth steps per pass over the accumulators (rows of B read side by side)
DEPTH = 4
_FAST = ("reassoc", "contract")


def strides(operand) -> tuple[int, int] | None:
    """(row, column) strides of a strided matrix operand, else None."""
    access = getattr(operand, "access", None)
    return tuple(access.strides[-2:]) if access is not None else None


def is_gemv(stage) -> bool:
    """Few rows, a depth to sum over, and B streamable along its rows or columns."""
    b = strides(stage.b)
    return 1 <= stage.m <= ROWS and stage.k > 0 and b is not None and 1 in b and strides(stage.a) is not None


def gemv_extent(stage) -> int:
    return math.prod(stage.batch) * math.ceil(stage.n / BLOCK)


def emit_gemv(stage, b: ir.IRBuilder, ptrs, lo, hi) -> None:
    """Blocks [lo, hi) of batch entries x column blocks: with unit column stride, runs of up
    to `CHUNK` consecutive columns of a batch entry at once (long contiguous reads of B's
    rows); otherwise one block at a time."""
    blocks = math.ceil(stage.n / BLOCK)
    along_rows = strides(stage.b)[1] == 1
    with b.goto_entry_block():
        acc = b.alloca(F32, ROWS * CHUNK if along_rows else ROWS, name="acc")
    step = CHUNK // BLOCK if along_rows else 1
    first = b.udiv(lo, i64(blocks))
    last = b.udiv(b.add(hi, i64(blocks - 1)), i64(blocks))
    with cg.loop(b, first, last, name="entry") as entry:
        batch = cg.unravel(b, entry, stage.batch)
        bases = stage.a.base(b, batch), stage.b.base(b, batch)
        begin = cg.imax(b, b.sub(lo, b.mul(entry, i64(blocks))), i64(0))
        end = cg.imin(b, b.sub(hi, b.mul(entry, i64(blocks))), i64(blocks))
        with cg.loop(b, begin, end, step, name="blk") as block:
            j0 = b.mul(block, i64(BLOCK))
            stop = cg.imin(b, b.mul(cg.imin(b, b.add(block, i64(step)), end), i64(BLOCK)), i64(stage.n))
            (_axpy if along_rows else _dots)(stage, b, ptrs, acc, batch, bases, j0, b.sub(stop, j0))


def _axpy(stage, b, ptrs, acc, batch, bases, j0, width) -> None:
    """acc[i, j] = sum_p a[i, p] * B[p, j0 + j], `DEPTH` contiguous rows of B per pass."""
    zero = ir.Constant(F32, 0.0)
    for i in range(stage.m):
        with cg.loop(b, 0, width, name=f"z{i}") as j:
            b.store(zero, b.gep(acc, [b.add(i64(i * CHUNK), j)]))
    whole = stage.k // DEPTH * DEPTH
    if whole:
        with cg.loop(b, 0, whole, DEPTH, name="p") as p:
            _rows_pass(stage, b, ptrs, acc, bases, j0, width, [b.add(p, i64(d)) for d in range(DEPTH)])
    if whole < stage.k:
        _rows_pass(stage, b, ptrs, acc, bases, j0, width, [i64(p) for p in range(whole, stage.k)])
    for i in range(stage.m):
        with cg.loop(b, 0, width, name=f"s{i}") as j:
            store_sum(stage, b, ptrs, batch, i64(i), b.add(j0, j), b.load(b.gep(acc, [b.add(i64(i * CHUNK), j)])))


def _rows_pass(stage, b, ptrs, acc, bases, j0, width, depths: list) -> None:
    """acc[i, j] += sum over the given depths p of a[i, p] * B[p, j0 + j]."""
    a_base, b_base = bases
    for i in range(stage.m):
        scales = [stage.a.load(b, ptrs, a_base, i64(i), p) for p in depths]
        with cg.loop(b, 0, width, name=f"j{i}") as j:
            slot = b.gep(acc, [b.add(i64(i * CHUNK), j)])
            column = b.add(j0, j)
            total = b.load(slot)
            for scale, p in zip(scales, depths):
                total = b.fadd(total, b.fmul(scale, stage.b.load(b, ptrs, b_base, p, column), flags=_FAST),
                               flags=_FAST)
            b.store(total, slot)


def _dots(stage, b, ptrs, acc, batch, bases, j0, width) -> None:
    """Each column j0 + j: the dot products of the rows of a with a contiguous column of B."""
    a_base, b_base = bases
    slots = [b.gep(acc, [i64(i)]) for i in range(stage.m)]
    with cg.loop(b, 0, width, name="col") as j:
        column = b.add(j0, j)
        for slot in slots:
            b.store(ir.Constant(F32, 0.0), slot)
        with cg.loop(b, 0, stage.k, name="dot") as p:
            value = stage.b.load(b, ptrs, b_base, p, column)
            for i, slot in enumerate(slots):
                product = b.fmul(stage.a.load(b, ptrs, a_base, i64(i), p), value, flags=_FAST)
                b.store(b.fadd(b.load(slot), product, flags=_FAST), slot)
        for i, slot in enumerate(slots):
            store_sum(stage, b, ptrs, batch, i64(i), column, b.load(slot))


def store_sum(stage, b, ptrs, batch, row, column, value) -> None:
    """Store the f32 sum `value` at out[batch, row, column], through the epilogue if any."""
    indices = [*batch, row, column]
    if stage.epilogue is not None:
        value = stage.epilogue.emit(b, ptrs, indices, value)
    else:
        value = ex.cast(b, value, DType.f32, stage.out.dtype)
    cg.store(b, value, ptrs[stage.out.arg], stage.out.address(b, indices), stage.out.dtype)
