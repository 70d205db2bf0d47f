"""Matrix-vector products: `gemm` stages with a few rows (the projections of a decode step).

The blocked gemm packs B on every call and computes a register tile's rows at a time, so with one
row it moves B twice and wastes most of its arithmetic. With at most `ROWS` rows B is
streamed once instead, in the layout it has, each thread reading one contiguous region
of it (two cores reading alternate parts of the same rows get half the bandwidth):

* B with unit row stride (a transposed [N, K] weight: Linear layers, the LM head): each
  output column is a dot product of contiguous vectors, a vectorized reduction; threads
  share blocks of `BLOCK` columns, i.e. runs of whole rows of the stored matrix.
* B with unit column stride ([K, N], GPT-2's Conv1D weights): the columns are cut into
  `chunks` of at most `CHUNK` and, when a chunk of B has `SPLIT_ELEMENTS` or more and the
  chunks are few, the depth into `SLICES` slices of consecutive rows ("split K"). A unit of
  work is one (slice, chunk): it adds `DEPTH` rows of B at a time into one accumulator row
  per output row (`acc[j] += a[i, p] * B[p, j] + ...`, a contiguous loop the vectorizer
  turns into FMAs). Units are numbered slice-major, so a thread's share is a band of whole
  rows. With one slice a unit stores its sums; with several, units leave partial sums in a
  buffer of the run, and the unit finishing last adds them up in slice order, applies the
  epilogue and stores. Slices depend on the shape alone, so the sums are the same bits on
  any number of threads.

B in blocks (q8_0, q4_0, q4_1 stored [N, K], K contiguous: Llama's Linear weights) with a
contiguous f32 `a` takes a dot-product path of its own, a block at a time, on the host's vector
width. With 8 lanes (AVX2) the block's codes are loaded as 32-bit words and widened with in-lane
shifts and masks (on a Zen 3 core cheaper than byte-to-word conversions, which cross vector
lanes), so each f32 vector holds elements of the block in a fixed interleaved order; with 16
(AVX-512) each 16 codes are one byte-to-word extension, in order (on an AVX-512 Xeon core q8_0
went from 12.9 to 19.8 G weights/s). The rows of `a` are copied once, in the vectors' order,
onto the stack. Each weight is the value `ir.dtypes` defines, multiplied by its element of `a` into
a vector accumulator per row and vector of the block, added up in a fixed tree at the end of the
column. B's lines are asked for `AHEAD` bytes before they are read. Other blocked layouts read
element by element.

A split run finds its buffer in the stage's table of `RUNS` runs, keyed by the output
pointer (a spin lock guards it; a run holds its entry from its first unit to its last,
so concurrent runs of one kernel on different buffers stay apart). A buffer that cannot
be allocated makes every unit of the run return `OUT_OF_MEMORY`.

Sums are in f32 (`contract`/`reassoc` let LLVM fuse and reorder them within a unit);
partial sums of a split are added in slice order, without reassociation.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import attrs
import llvmlite.ir as ir

from ir.dtypes import BLOCK as QUANT_BLOCK
from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit import expr as ex
from runtime.jit.codegen import F32, I1, I32, I64, VOIDP, i64

#: the most rows a stage may have to take this path
ROWS = 4
#: output columns per unit of a dot-product (unit row stride) stage (32: a 192-column projection
#: is 6 units, which 2 or 3 threads share evenly, where 64 gave one thread twice the other's work;
#: a SmolLM2-shape decode ran 2-10% faster)
BLOCK = 32
#: the most output columns a unit of a unit-column-stride stage sums at once
CHUNK = 4096
#: depth steps per pass over the accumulators (rows of B read side by side; 8 measured a little
#: faster than 2 and 4, and software prefetching slower)
DEPTH = 8
#: depth slices of a split (they divide evenly among 2, 3, 4 or 6 threads, and keep the
#: partial sums the last unit adds up small)
SLICES = 12
#: the fewest elements of B (per column unit) worth splitting: below, one thread streams them
#: about as fast as two once handing work to a second thread is paid for (a thread converts
#: and sums 16-bit elements at about the rate it does f32 ones, so the count is of elements)
SPLIT_ELEMENTS = 1 << 19
#: with at least this many column units per stage the depth is not split
SPLIT_BELOW = 8
#: concurrent runs of one split stage its table tracks (a unit waits for a free entry)
RUNS = 16
_FAST = ("reassoc", "contract")
#: how many bytes ahead of what it reads a dot-product kernel asks for B's cache lines (on a host
#: whose memory is slow to answer, the loads in flight alone do not stream B at the memory's rate:
#: measured 2.6x faster for q8_0 blocks and 1.3x for f32 on such a host)
AHEAD = 2048
#: bytes per cache line
LINE = 64
#: elements per block of a block-quantized B
BLOCK_SIZE = QUANT_BLOCK
_ENTRY = ir.LiteralStructType([VOIDP, F32.as_pointer(), I64, I1])  # key, partial sums, units done, failed
_KEY, _PARTS, _DONE, _FAILED = range(4)


def strides(operand) -> tuple[int, int] | None:
    """(row, column) strides of a strided matrix operand, else None."""
    access = getattr(operand, "access", None)
    return tuple(access.strides[-2:]) if access is not None else None


def is_gemv(stage) -> bool:
    """Few rows, a depth to sum over, and B streamable along its rows or columns."""
    b = strides(stage.b)
    return 1 <= stage.m <= ROWS and stage.k > 0 and b is not None and 1 in b and strides(stage.a) is not None


@attrs.frozen
class Split:
    """How a stage's work is cut into units: batch entries x column units (x depth slices).

    `along_rows`: B has unit column stride (units are slices x chunks of `width` columns);
    else units are blocks of `BLOCK` dot products."""

    along_rows: bool
    entries: int
    chunks: int
    width: int
    slices: int = 1

    @property
    def units(self) -> int:
        return self.entries * self.chunks * self.slices

    def depth(self, k: int, b: ir.IRBuilder, s: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Rows [p0, p1) of depth slice `s`."""
        def bound(t: ir.Value) -> ir.Value:
            return b.udiv(b.mul(t, i64(k)), i64(self.slices))
        return bound(s), bound(b.add(s, i64(1)))


def split(stage) -> Split:
    """The units of a gemv stage (a function of its shape, dtype and layout only)."""
    entries = math.prod(stage.batch)
    rs, cs = strides(stage.b)
    if cs != 1 or (rs == 1 and stage.n == 1):
        return Split(False, entries, math.ceil(stage.n / BLOCK), BLOCK)
    width = math.ceil(stage.n / math.ceil(stage.n / CHUNK))
    chunks = math.ceil(stage.n / width)
    if entries * chunks >= SPLIT_BELOW:
        return Split(True, entries, chunks, width)
    return Split(True, entries, chunks, width, SLICES if stage.k * width >= SPLIT_ELEMENTS else 1)


def gemv_extent(stage) -> int:
    return split(stage).units


def emit_gemv(stage, b: ir.IRBuilder, ptrs, lo, hi, lanes: int) -> ir.Value:
    """Units [lo, hi) of the stage; returns the status. `lanes`: the host's f32 vector width."""
    plan = split(stage)
    if not plan.along_rows and reads_blocks(stage):
        _emit_block_dots(stage, plan, b, ptrs, lo, hi, 16 if lanes >= 16 else 8)
    elif not plan.along_rows:
        _emit_dots(stage, plan, b, ptrs, lo, hi)
    elif plan.slices == 1:
        _emit_whole(stage, plan, b, ptrs, lo, hi)
    else:
        return _emit_split(stage, plan, b, ptrs, lo, hi)
    return ir.Constant(I32, 0)


def _chunk(stage, plan: Split, b: ir.IRBuilder, chunk: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The first column and the width of a column chunk."""
    j0 = b.mul(chunk, i64(plan.width))
    return j0, cg.imin(b, i64(plan.width), b.sub(i64(stage.n), j0))


def _emit_whole(stage, plan: Split, b: ir.IRBuilder, ptrs, lo, hi) -> None:
    """Units (entry, chunk), each summing all of the depth in registers and on the stack."""
    with b.goto_entry_block():
        acc = b.alloca(F32, stage.m * plan.width, name="acc")
    with cg.loop(b, lo, hi, name="unit") as unit:
        entry, chunk = cg.unravel(b, unit, (plan.entries, plan.chunks))
        batch = cg.unravel(b, entry, stage.batch)
        j0, width = _chunk(stage, plan, b, chunk)
        bases = stage.a.base(b, batch), stage.b.base(b, batch)
        _accumulate(stage, plan, b, ptrs, acc, bases, (i64(0), i64(stage.k)), j0, width)
        _store_rows(stage, plan, b, ptrs, acc, batch, j0, width)


def _emit_split(stage, plan: Split, b: ir.IRBuilder, ptrs, lo, hi) -> ir.Value:
    """Units (entry, slice, chunk) into the run's partial sums; the last one reduces and stores.
    An empty range does nothing (it must not take a table entry it would never give back)."""
    with b.goto_entry_block():
        status = b.alloca(I32, name="status")
    b.store(ir.Constant(I32, 0), status)
    with b.if_then(b.icmp_signed("<", lo, hi)):
        _split_units(stage, plan, b, ptrs, lo, hi, status)
    return b.load(status)


def _split_units(stage, plan: Split, b: ir.IRBuilder, ptrs, lo, hi, status) -> None:
    """A nonempty range of split units: claim the run's entry, sum, count; the last reduces and frees."""
    table, lock = _run_table(b.module, b.function.name)
    claim, finish, release = _table_functions(b.module)
    part_floats = stage.m * plan.width
    nbytes = -(-plan.units * part_floats * 4 // 64) * 64
    slot = b.call(claim, [table, lock, b.bitcast(ptrs[stage.out.arg], VOIDP), i64(nbytes)])
    parts = b.load(_field(b, table, slot, _PARTS))
    failed = b.load(_field(b, table, slot, _FAILED))
    with b.if_then(b.not_(failed)):
        with cg.loop(b, lo, hi, name="unit") as unit:
            entry, depth, chunk = cg.unravel(b, unit, (plan.entries, plan.slices, plan.chunks))
            batch = cg.unravel(b, entry, stage.batch)
            j0, width = _chunk(stage, plan, b, chunk)
            bases = stage.a.base(b, batch), stage.b.base(b, batch)
            part = b.gep(parts, [b.mul(unit, i64(part_floats))])
            _accumulate(stage, plan, b, ptrs, part, bases, plan.depth(stage.k, b, depth), j0, width)
    last = b.call(finish, [table, slot, b.sub(hi, lo), i64(plan.units)])
    with b.if_then(last):
        with b.if_then(b.not_(failed)):
            _reduce(stage, plan, b, ptrs, parts)
        b.call(release, [table, lock, slot])
    b.store(b.select(failed, ir.Constant(I32, cg.OUT_OF_MEMORY), ir.Constant(I32, 0)), status)


def _reduce(stage, plan: Split, b: ir.IRBuilder, ptrs, parts) -> None:
    """Each (entry, chunk): partial sums of slices 1.. added to slice 0's in order, then stored."""
    part_floats = stage.m * plan.width
    with cg.loop(b, 0, plan.entries * plan.chunks, name="group") as group:
        entry, chunk = cg.unravel(b, group, (plan.entries, plan.chunks))
        batch = cg.unravel(b, entry, stage.batch)
        j0, width = _chunk(stage, plan, b, chunk)
        def part(s: ir.Value) -> ir.Value:
            """The partial sums of unit (entry, slice s, chunk)."""
            unit = b.add(b.mul(b.add(b.mul(entry, i64(plan.slices)), s), i64(plan.chunks)), chunk)
            return b.gep(parts, [b.mul(unit, i64(part_floats))])
        first = part(i64(0))
        with cg.loop(b, 1, plan.slices, name="slice") as s:
            other = part(s)
            for i in range(stage.m):
                with cg.loop(b, 0, width, name=f"r{i}") as j:
                    index = b.add(i64(i * plan.width), j)
                    slot = b.gep(first, [index])
                    b.store(b.fadd(b.load(slot), b.load(b.gep(other, [index]))), slot)
        _store_rows(stage, plan, b, ptrs, first, batch, j0, width)


def _accumulate(stage, plan: Split, b: ir.IRBuilder, ptrs, acc, bases, depth, j0, width) -> None:
    """acc[i * plan.width + j] = sum over p in [p0, p1) of a[i, p] * B[p, j0 + j], for j < width."""
    p0, p1 = depth
    zero = ir.Constant(F32, 0.0)
    for i in range(stage.m):
        with cg.loop(b, 0, width, name=f"z{i}") as j:
            b.store(zero, b.gep(acc, [b.add(i64(i * plan.width), j)]))
    rows_pass = _blocks_pass if column_blocks(stage, plan) else _rows_pass
    whole = b.add(p0, b.mul(b.udiv(b.sub(p1, p0), i64(DEPTH)), i64(DEPTH)))
    with cg.loop(b, p0, whole, DEPTH, name="p") as p:
        rows_pass(stage, plan, b, ptrs, acc, bases, j0, width, [b.add(p, i64(d)) for d in range(DEPTH)])
    with cg.loop(b, whole, p1, name="pr") as p:
        rows_pass(stage, plan, b, ptrs, acc, bases, j0, width, [p])


def _rows_pass(stage, plan: Split, b: ir.IRBuilder, ptrs, acc, bases, j0, width, depths: list) -> None:
    """acc[i, j] += sum over the given depths p of a[i, p] * B[p, j0 + j]: each row of B read once."""
    a_base, b_base = bases
    scales = [[stage.a.load(b, ptrs, a_base, i64(i), p) for p in depths] for i in range(stage.m)]
    with cg.loop(b, 0, width, name="j") as j:
        column = b.add(j0, j)
        values = [stage.b.load(b, ptrs, b_base, p, column) for p in depths]
        for i in range(stage.m):
            slot = b.gep(acc, [b.add(i64(i * plan.width), j)])
            total = b.load(slot)
            for scale, value in zip(scales[i], values):
                total = b.fadd(total, b.fmul(scale, value, flags=_FAST), flags=_FAST)
            b.store(total, slot)


def _store_rows(stage, plan: Split, b: ir.IRBuilder, ptrs, acc, batch, j0, width) -> None:
    """Each row's sums into out; sums `_blocks_pass` made lie in `_order` within each block of columns."""
    if column_blocks(stage, plan):
        order = _order(stage.b.access.dtype)
        for i in range(stage.m):
            with cg.loop(b, 0, b.udiv(width, i64(BLOCK_SIZE)), name=f"sb{i}") as jb:
                first = b.mul(jb, i64(BLOCK_SIZE))
                for lane, column in enumerate(order):
                    value = b.load(b.gep(acc, [b.add(i64(i * plan.width + lane), first)]))
                    store_sum(stage, b, ptrs, batch, i64(i), b.add(j0, b.add(first, i64(column))), value)
        return
    for i in range(stage.m):
        with cg.loop(b, 0, width, name=f"s{i}") as j:
            value = b.load(b.gep(acc, [b.add(i64(i * plan.width), j)]))
            store_sum(stage, b, ptrs, batch, i64(i), b.add(j0, j), value)


def column_blocks(stage, plan: Split) -> bool:
    """B in blocks along its contiguous columns (GPT-2's Conv1D weights [K, N]), every chunk of
    columns whole blocks: the rows pass widens a block of 32 columns at a time."""
    access = stage.b.access
    return (plan.along_rows and access.dtype.is_blocked and access.strides[-1] == 1
            and all(x % BLOCK_SIZE == 0 for x in (access.offset, *access.strides[:-1], stage.n, plan.width)))


def _blocks_pass(stage, plan: Split, b: ir.IRBuilder, ptrs, acc, bases, j0, width, depths: list) -> None:
    """`_rows_pass` a block of B's columns at a time: acc[i, block, lane] += a[i, p] * B[p, column]
    for the column of `_order`'s lane (the sums stay in that order until `_store_rows`)."""
    a_base, b_base = bases
    dtype, row = stage.b.access.dtype, stage.b.access.strides[-2]
    b_ptr = ptrs[stage.b.access.arg]
    scales = [[_splat(b, stage.a.load(b, ptrs, a_base, i64(i), p)) for p in depths] for i in range(stage.m)]
    with cg.loop(b, 0, b.udiv(width, i64(BLOCK_SIZE)), name="jb") as jb:
        column = b.add(j0, b.mul(jb, i64(BLOCK_SIZE)))
        slots = [[b.bitcast(b.gep(acc, [b.add(i64(i * plan.width + 8 * r), b.mul(jb, i64(BLOCK_SIZE)))]),
                            _VECTOR.as_pointer()) for r in range(4)] for i in range(stage.m)]
        totals = [[b.load(slot, align=4) for slot in row_slots] for row_slots in slots]
        for d, p in enumerate(depths):  # one block of weights at a time, into every row's sums
            start = b.udiv(b.add(b_base, b.add(b.mul(p, i64(row)), column)), i64(BLOCK_SIZE))
            block = b.gep(b_ptr, [b.mul(start, i64(dtype.itemsize))])
            cg.prefetch(b, b.gep(block, [i64(AHEAD)]))
            weights = _widen_block(b, block, dtype)
            for i in range(stage.m):
                totals[i] = [b.fadd(t, b.fmul(scales[i][d], w, flags=_FAST), flags=_FAST)
                             for t, w in zip(totals[i], weights)]
        for row_slots, values in zip(slots, totals):
            for slot, value in zip(row_slots, values):
                b.store(value, slot, align=4)


def _emit_dots(stage, plan: Split, b: ir.IRBuilder, ptrs, lo, hi) -> None:
    """Units (entry, block): each column of the block the dot products of the rows of a with a
    contiguous column of B (one column at a time streams fastest: measured against two to eight
    side by side), whose lines `AHEAD` bytes on are asked for first."""
    with b.goto_entry_block():
        acc = b.alloca(F32, ROWS, name="acc")
    slots = [b.gep(acc, [i64(i)]) for i in range(stage.m)]
    with _unit_columns(stage, plan, b, lo, hi) as (batch, a_base, b_base, column):
        for slot in slots:
            b.store(ir.Constant(F32, 0.0), slot)
        if not stage.b.access.dtype.is_blocked:
            _prefetch_column(stage, b, ptrs, b_base, column)
        with cg.loop(b, 0, stage.k, name="dot") as p:
            value = stage.b.load(b, ptrs, b_base, p, column)
            for i, slot in enumerate(slots):
                product = b.fmul(stage.a.load(b, ptrs, a_base, i64(i), p), value, flags=_FAST)
                b.store(b.fadd(b.load(slot), product, flags=_FAST), slot)
        for i, slot in enumerate(slots):
            store_sum(stage, b, ptrs, batch, i64(i), column, b.load(slot))


def _prefetch_column(stage, b: ir.IRBuilder, ptrs, b_base, column) -> None:
    """Ask for the cache lines `AHEAD` bytes past each line of B's (contiguous) column."""
    access = stage.b.access
    start = b.bitcast(b.gep(ptrs[access.arg], [b.add(b_base, b.mul(column, i64(access.strides[-1])))]), VOIDP)
    with cg.loop(b, 0, -(-stage.k * access.dtype.itemsize // LINE), name="ahead") as line:
        cg.prefetch(b, b.gep(start, [b.add(b.mul(line, i64(LINE)), i64(AHEAD))]))


@contextlib.contextmanager
def _unit_columns(stage, plan: Split, b: ir.IRBuilder, lo, hi) -> Iterator[tuple[ir.Value, ...]]:
    """The loops over units `lo..hi` (entry, block of columns) and the block's columns; yields
    (batch index, a's base, B's base, column) inside the column loop."""
    with cg.loop(b, lo, hi, name="unit") as unit:
        entry, block = cg.unravel(b, unit, (plan.entries, plan.chunks))
        batch = cg.unravel(b, entry, stage.batch)
        a_base, b_base = stage.a.base(b, batch), stage.b.base(b, batch)
        j0 = b.mul(block, i64(BLOCK))
        with cg.loop(b, j0, cg.imin(b, b.add(j0, i64(BLOCK)), i64(stage.n)), name="col") as column:
            yield batch, a_base, b_base, column


def reads_blocks(stage) -> bool:
    """B in whole blocks along its contiguous depth (every column starts a block), `a` contiguous f32
    and small enough to copy onto the stack."""
    access, a = stage.b.access, stage.a.access
    whole = all(x % BLOCK_SIZE == 0 for x in (access.offset, stage.k, *access.strides[:-2], access.strides[-1]))
    return (access.dtype.is_blocked and access.strides[-2] == 1 and whole and a.dtype == DType.f32
            and a.strides[-1] == 1 and stage.m * stage.k <= PERMUTED)


#: the most elements of `a` (rows x depth) a block-dot call copies into its stack in block order
PERMUTED = 1 << 15
_VECTOR = ir.VectorType(F32, 8)
_WORDS = ir.VectorType(I32, 8)


def _order(dtype: DType, lanes: int = 8) -> list[int]:
    """The element of a block each lane of `_widen_block`'s vectors holds, in order."""
    if lanes == 16:
        return list(range(BLOCK_SIZE))
    if dtype == DType.q8_0:  # byte 4i + r of the codes, r-th vector
        return [4 * i + r for r in range(4) for i in range(8)]
    return [4 * i + r + 16 * high for r in range(4) for high in (0, 1) for i in range(4)]


def _emit_block_dots(stage, plan: Split, b: ir.IRBuilder, ptrs, lo, hi, lanes: int) -> None:
    """Units (entry, block of columns) as `_emit_dots`, a block of B at a time, widened into
    `lanes`-wide vectors by `_widen_block`, whose lanes hold the block's elements in `_order`; the
    rows of `a` are first copied in that order onto the stack (once per call, or per unit if batch
    entries differ). A vector accumulator per row and vector of a block, added in a fixed tree at
    the end."""
    dtype = stage.b.access.dtype
    order = _order(dtype, lanes)
    vector = ir.VectorType(F32, lanes)
    k, a_row = stage.k, stage.a.access.strides[-2]
    with b.goto_entry_block():
        accs = [[b.alloca(vector, name=f"acc{i}") for i in range(BLOCK_SIZE // lanes)] for _ in range(stage.m)]
        copy = b.alloca(F32, stage.m * k, name="a.ordered")
    a_ptr, b_ptr = ptrs[stage.a.access.arg], ptrs[stage.b.access.arg]

    def reorder(a_base: ir.Value) -> None:
        """copy[i, block, lane] = a[i, block * 32 + order[lane]]."""
        with cg.loop(b, 0, k // BLOCK_SIZE, name="reorder") as kb:
            for i in range(stage.m):
                source = b.add(a_base, b.add(i64(i * a_row), b.mul(kb, i64(BLOCK_SIZE))))
                target = b.add(i64(i * k), b.mul(kb, i64(BLOCK_SIZE)))
                for lane, element in enumerate(order):
                    value = b.load(b.gep(a_ptr, [b.add(source, i64(element))]))
                    b.store(value, b.gep(copy, [b.add(target, i64(lane))]))

    shared = plan.entries == 1
    if shared:
        with b.if_then(b.icmp_signed("<", lo, hi)):
            reorder(stage.a.base(b, cg.unravel(b, i64(0), stage.batch)))
    with cg.loop(b, lo, hi, name="unit") as unit:
        entry, block = cg.unravel(b, unit, (plan.entries, plan.chunks))
        batch = cg.unravel(b, entry, stage.batch)
        b_base = stage.b.base(b, batch)
        if not shared:
            reorder(stage.a.base(b, batch))
        j0 = b.mul(block, i64(BLOCK))
        with cg.loop(b, j0, cg.imin(b, b.add(j0, i64(BLOCK)), i64(stage.n)), name="col") as column:
            for acc in (a for row in accs for a in row):
                b.store(ir.Constant(vector, None), acc)
            first = b.udiv(b.add(b_base, b.mul(column, i64(stage.b.access.strides[-1]))), i64(BLOCK_SIZE))
            with cg.loop(b, 0, k // BLOCK_SIZE, name="blk") as kb:
                block = b.gep(b_ptr, [b.mul(b.add(first, kb), i64(dtype.itemsize))])
                cg.prefetch(b, b.gep(block, [i64(AHEAD)]))
                weights = _widen_block(b, block, dtype, lanes)
                for i, row in enumerate(accs):
                    at = b.add(i64(i * k), b.mul(kb, i64(BLOCK_SIZE)))
                    for r, (part, acc) in enumerate(zip(weights, row)):
                        x = b.load(b.bitcast(b.gep(copy, [b.add(at, i64(lanes * r))]), vector.as_pointer()), align=4)
                        b.store(b.fadd(b.load(acc), b.fmul(x, part, flags=_FAST), flags=_FAST), acc)
            for i, row in enumerate(accs):
                sums = [b.load(acc) for acc in row]
                while len(sums) > 1:
                    sums = [b.fadd(x, y) for x, y in zip(sums[:len(sums) // 2], sums[len(sums) // 2:])]
                store_sum(stage, b, ptrs, batch, i64(i), column, _tree_sum(b, sums[0]))


def _widen_block(b: ir.IRBuilder, block: ir.Value, dtype: DType, lanes: int = 8) -> list[ir.Value]:
    """The block at byte pointer `block` as 32 / `lanes` f32 vectors in `_order`, each value as
    `cg.load_blocked` computes it (d * q for q8_0, d * (q - 8) for q4_0, d * q + m for q4_1: the
    products are exact, so the fused form rounds as the separate one).

    8 lanes: the codes loaded as 32-bit words and widened with in-lane shifts and masks. 16 lanes
    (AVX-512): elements 0-15 and 16-31, each run of codes one byte extension (and a mask or a
    shift for 4 bits), in order."""
    if lanes == 16:
        return [cg.load_blocked(b, block, i64(first), dtype, 16) for first in (0, 16)]

    def words(offset: int, count: int) -> ir.Value:
        vector = ir.VectorType(I32, count)
        return b.load(b.bitcast(b.gep(block, [i64(offset)]), vector.as_pointer()), align=1)

    def same(value: int) -> ir.Constant:
        return ir.Constant(_WORDS, [value] * 8)

    scale = cg.broadcast_half(b, block, 8)
    if dtype == DType.q8_0:  # byte r of each word, sign-extended by shifting it to the top and back
        raw = words(2, 8)
        codes = [b.ashr(b.shl(raw, same(24 - 8 * r)) if r < 3 else raw, same(24)) for r in range(4)]
        return [b.fmul(scale, b.sitofp(c, _VECTOR)) for c in codes]
    packed = words(2 if dtype == DType.q4_0 else 4, 4)
    both = b.shuffle_vector(packed, packed, ir.Constant(_WORDS, [0, 1, 2, 3, 0, 1, 2, 3]))
    codes = [b.and_(b.lshr(both, ir.Constant(_WORDS, [8 * r] * 4 + [8 * r + 4] * 4)), same(15)) for r in range(4)]
    values = [b.sitofp(c, _VECTOR) for c in codes]
    if dtype == DType.q4_0:
        eight = _splat(b, ir.Constant(F32, 8.0))
        return [b.fmul(scale, b.fsub(v, eight)) for v in values]
    low = cg.broadcast_half(b, b.gep(block, [i64(2)]), 8)
    return [b.fadd(b.fmul(scale, v, flags=("contract",)), low, flags=("contract",)) for v in values]


def _splat(b: ir.IRBuilder, scalar: ir.Value) -> ir.Value:
    one = b.insert_element(ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(_WORDS, None))


def _tree_sum(b: ir.IRBuilder, vector: ir.Value) -> ir.Value:
    """The lanes of a vector added in a fixed tree (halves, then quarters, ...)."""
    lanes = vector.type.count
    while lanes > 1:
        lanes //= 2
        halves = [b.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(I32, lanes), list(range(o, o + lanes))))
                  for o in (0, lanes)]
        vector = b.fadd(*halves)
    return b.extract_element(vector, ir.Constant(I32, 0))


def _run_table(module: ir.Module, function: str) -> tuple[ir.GlobalVariable, ir.GlobalVariable]:
    """The stage's table of split runs and its lock (zero: free)."""
    table = ir.GlobalVariable(module, _table_type(), f"{function}.runs")
    lock = ir.GlobalVariable(module, I32, f"{function}.lock")
    for g in (table, lock):
        g.linkage = "internal"
        g.initializer = ir.Constant(g.value_type, None)
    return table, lock


def _table_type() -> ir.ArrayType:
    return ir.ArrayType(_ENTRY, RUNS)


def _table_functions(module: ir.Module) -> tuple[ir.Function, ir.Function, ir.Function]:
    """The module's claim, finish and release helpers of run tables."""
    table, lock = _table_type().as_pointer(), I32.as_pointer()
    claim, new = cg.internal_function(module, "rduflow.gemv.claim", I64, [table, lock, VOIDP, I64])
    if new:
        _emit_claim(claim)
    finish, new = cg.internal_function(module, "rduflow.gemv.finish", I1, [table, I64, I64, I64])
    if new:
        _emit_finish(finish)
    release, new = cg.internal_function(module, "rduflow.gemv.release", ir.VoidType(), [table, lock, I64])
    if new:
        _emit_release(release)
    return claim, finish, release


def libc(module: ir.Module, name: str, ret: ir.Type, params: list[ir.Type]) -> ir.Function:
    """The C library function `name`, declared once per module."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, params), name)


@contextlib.contextmanager
def _repeat(b: ir.IRBuilder, name: str) -> Iterator[Callable[[ir.Value], None]]:
    """`do { body } while (cond)`: the body calls the yielded function with `cond` at its end."""
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(body)
    b.position_at_end(body)
    yield lambda cond: b.cbranch(cond, body, done)
    b.position_at_end(done)


def _field(b: ir.IRBuilder, table, slot, field: int) -> ir.Value:
    return b.gep(table, [i64(0), slot, ir.Constant(I32, field)])


def _lock(b: ir.IRBuilder, lock) -> None:
    """Spin until the lock is ours."""
    with _repeat(b, "spin") as again:
        pair = b.cmpxchg(lock, ir.Constant(I32, 0), ir.Constant(I32, 1), "acquire", "monotonic")
        again(b.not_(b.extract_value(pair, 1)))


def _unlock(b: ir.IRBuilder, lock) -> None:
    b.store_atomic(ir.Constant(I32, 0), lock, "release", 4)


def _emit_claim(fn: ir.Function) -> None:
    """slot = claim(table, lock, key, bytes): the entry of run `key`, taken (with a new buffer of
    `bytes`, units done 0) if the run has none; waits while every entry is taken."""
    table, lock, key, nbytes = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    found, free = b.alloca(I64), b.alloca(I64)
    with _repeat(b, "wait") as again:
        _lock(b, lock)
        b.store(i64(-1), found)
        b.store(i64(-1), free)
        with cg.loop(b, 0, RUNS, name="e") as e:
            held = b.load(_field(b, table, e, _KEY))
            with b.if_then(b.icmp_unsigned("==", held, key)):
                b.store(e, found)
            unused = b.and_(b.icmp_unsigned("==", held, ir.Constant(VOIDP, None)),
                            b.icmp_signed("<", b.load(free), i64(0)))
            with b.if_then(unused):
                b.store(e, free)
        take = b.and_(b.icmp_signed("<", b.load(found), i64(0)), b.icmp_signed(">=", b.load(free), i64(0)))
        with b.if_then(take):
            slot = b.load(free)
            parts = b.call(libc(b.module, "aligned_alloc", VOIDP, [I64, I64]), [i64(64), nbytes])
            b.store(key, _field(b, table, slot, _KEY))
            b.store(b.bitcast(parts, F32.as_pointer()), _field(b, table, slot, _PARTS))
            b.store(i64(0), _field(b, table, slot, _DONE))
            b.store(b.icmp_unsigned("==", parts, ir.Constant(VOIDP, None)), _field(b, table, slot, _FAILED))
            b.store(slot, found)
        _unlock(b, lock)
        again(b.icmp_signed("<", b.load(found), i64(0)))
    b.ret(b.load(found))


def _emit_finish(fn: ir.Function) -> None:
    """last = finish(table, slot, units, extent): count `units` done; true for the unit completing the run."""
    table, slot, units, extent = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    before = b.atomic_rmw("add", _field(b, table, slot, _DONE), units, "acq_rel")
    b.ret(b.icmp_signed("==", b.add(before, units), extent))


def _emit_release(fn: ir.Function) -> None:
    """release(table, lock, slot): free the run's buffer and its entry."""
    table, lock, slot = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    _lock(b, lock)
    parts = _field(b, table, slot, _PARTS)
    b.call(libc(b.module, "free", ir.VoidType(), [VOIDP]), [b.bitcast(b.load(parts), VOIDP)])
    b.store(ir.Constant(F32.as_pointer(), None), parts)
    b.store(ir.Constant(VOIDP, None), _field(b, table, slot, _KEY))
    _unlock(b, lock)
    b.ret_void()


def store_sum(stage, b, ptrs, batch, row, column, value) -> None:
    """Store the f32 sum `value` at out[batch, row, column], through the epilogue if any."""
    indices = [*batch, row, column]
    if stage.epilogue is not None:
        value = stage.epilogue.emit(b, ptrs, indices, value)
    else:
        value = ex.cast(b, value, DType.f32, stage.out.dtype)
    cg.store(b, value, ptrs[stage.out.arg], stage.out.address(b, indices), stage.out.dtype)
