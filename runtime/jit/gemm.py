"""`gemm` stages: batched C = epilogue(A @ B) with a register-tiled, cache-blocked kernel.

The classic BLIS structure: for each column panel (nc) and depth block (kc), B is
packed into nr-wide slivers; for each row block (mc), A is packed into mr-tall
slivers; an mr x nr micro-kernel keeps its tile of C in vector registers and runs
over the whole depth block with FMAs. The shape (`host.Tile`) follows the host: its
vector width and register count, its cache sizes; a product that the tile's narrow variant
pads less runs on that (`pick_tile`). Partial sums over depth blocks accumulate
in C; the last block applies the epilogue (bias, activation, residual) while storing.
Operands are read through `MatrixOperand`s, so transposed, broadcast-batched and
implicit (im2col) matrices pack the same way. Work splits across threads by column
or row slivers of each batch entry.

Zeros cost nothing where masks make them: each A sliver's micro-kernels run from its first
nonzero depth step to its last (none for a sliver of zeros, such as the rows a masked loss
leaves out; half the steps for a causal attention's probabilities), and a weight gradient (A
contiguous along its rows, B along its columns) packs only the depth steps (tokens) with a
nonzero in both A's column and B's row. As in reference BLAS, a skipped zero is not multiplied
by an infinity or NaN opposite it; every other sum keeps its bits and depth order.
"""
from __future__ import annotations

import functools
import math
from typing import Protocol, Sequence

import attrs
import llvmlite.ir as ir

from backend.pef.stages import GemmStage
from ir.dtypes import BLOCK as BLOCK_SIZE
from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit import expr as ex
from runtime.jit.codegen import F32, I64, i64
from runtime.jit.gemv import emit_gemv, gemv_extent, is_gemv, libc, store_sum
from runtime.jit.host import UNROLL, Tile
from runtime.jit.layout import Access, Expression, coalesce
from runtime.jit.module import KernelModule

#: upper bounds of the packed A block and B panel (reached only when a block spans all of K)
PACK_A_BYTES, PACK_B_BYTES = 1 << 20, 4 << 20
#: products with fewer multiply-adds per batch entry use the plain loop nest
SMALL = 1 << 15


class MatrixOperand(Protocol):
    """A (batched) matrix the packing loops read element by element."""

    def batch_strides(self) -> tuple[int, ...]: ...

    def with_batch_strides(self, strides: Sequence[int]) -> MatrixOperand: ...

    def base(self, b: ir.IRBuilder, batch: Sequence[ir.Value]) -> ir.Value: ...

    def load(self, b: ir.IRBuilder, ptrs: Sequence[ir.Value], base: ir.Value,
             row: ir.Value, col: ir.Value) -> ir.Value: ...


@attrs.frozen
class Strided:
    """A matrix in memory: `access.strides` = batch strides + (row stride, column stride)."""

    access: Access

    def batch_strides(self) -> tuple[int, ...]:
        return self.access.strides[:-2]

    def with_batch_strides(self, strides: Sequence[int]) -> Strided:
        return Strided(self.access.with_strides(tuple(strides) + self.access.strides[-2:]))

    def base(self, b, batch):
        return cg.affine(b, self.access.offset, list(zip(batch, self.access.strides)))

    def index(self, b, base, row, col):
        """The buffer element at (row, col) of the matrix starting at `base`."""
        rs, cs = self.access.strides[-2:]
        return b.add(base, cg.affine(b, 0, [(row, rs), (col, cs)]))

    def load(self, b, ptrs, base, row, col):
        return cg.load(b, ptrs[self.access.arg], self.index(b, base, row, col), self.access.dtype)


@attrs.frozen
class Gemm:
    """out[batch, m, n] = epilogue(sum_k a[batch, m, k] * b[batch, k, n]), summed in f32.

    `epilogue` (None: the sum itself) is over batch + (m, n); its `acc` is the sum.
    """

    batch: tuple[int, ...]
    m: int
    n: int
    k: int
    a: MatrixOperand
    b: MatrixOperand
    out: Access
    epilogue: Expression | None = None


def simplify(stage: Gemm) -> Gemm:
    """Coalesce the batch axes of every operand."""
    rank = len(stage.batch)
    epilogue_strides = stage.epilogue.strides if stage.epilogue is not None else []
    groups = [stage.a.batch_strides(), stage.b.batch_strides(), stage.out.strides[:rank],
              *(s[:rank] for s in epilogue_strides)]
    batch, strides, _ = coalesce(stage.batch, groups)
    a_s, b_s, out_s, *leaf_s = strides
    epilogue = stage.epilogue
    if epilogue is not None:
        epilogue = epilogue.with_strides([s + old[rank:] for s, old in zip(leaf_s, epilogue_strides)])
    return attrs.evolve(
        stage, batch=batch, a=stage.a.with_batch_strides(a_s), b=stage.b.with_batch_strides(b_s),
        out=stage.out.with_strides(out_s + stage.out.strides[rank:]), epilogue=epilogue)


def fold_batch(stage: Gemm) -> Gemm:
    """The last batch axis as more rows, while B is the same matrix along it and the other
    operands step down it as one more run of rows (a decode step of batch b: b rows reading B
    once, not b products reading it b times)."""
    while stage.batch and isinstance(stage.a, Strided) and isinstance(stage.b, Strided) \
            and stage.b.batch_strides()[-1] == 0:
        rank = len(stage.batch)
        groups = [stage.a.access.strides, stage.out.strides,
                  *(stage.epilogue.strides if stage.epilogue is not None else [])]
        if not all(stage.m == 1 or g[rank - 1] == stage.m * g[rank] for g in groups):
            break
        def fold(g: tuple[int, ...], rank: int = rank, m: int = stage.m) -> tuple[int, ...]:
            return (*g[:rank - 1], g[rank - 1] if m == 1 else g[rank], *g[rank + 1:])
        epilogue = stage.epilogue.map_strides(fold) if stage.epilogue is not None else None
        stage = attrs.evolve(stage, batch=stage.batch[:-1], m=stage.batch[-1] * stage.m,
                             a=Strided(stage.a.access.with_strides(fold(stage.a.access.strides))),
                             b=stage.b.with_batch_strides(stage.b.batch_strides()[:-1]),
                             out=stage.out.with_strides(fold(stage.out.strides)), epilogue=epilogue)
    return stage


def split_rows(stage: Gemm) -> bool:
    """Whether threads share the work by row slivers (else by column slivers): each thread packs
    all of the operand the other way, so the split is along the longer side of C (rows when square:
    8-row slivers divide a square C more evenly than 48-column ones)."""
    return stage.m >= stage.n


def pick_tile(stage: Gemm, tile: Tile) -> Tile:
    """`tile`, or its narrow variant (`Tile.narrow`) where that pads C (rows to `mr`, columns to
    `nr`) by more than 1/32 less: a 48-batch of 128 x 64 attention products ran 25-33% faster on
    12 x 32 than on 8 x 48, 512 x 128 ones 7%; products both tiles pad alike ran level."""
    narrow = tile.narrow()
    if narrow is not None and 32 * _padded_area(stage, narrow) < 31 * _padded_area(stage, tile):
        return narrow
    return tile


def _padded_area(stage: Gemm, tile: Tile) -> int:
    """C's area with its rows padded to the tile's `mr` and its columns to its `nr`."""
    return math.ceil(stage.m / tile.mr) * tile.mr * math.ceil(stage.n / tile.nr) * tile.nr


def parallel_extent(stage: Gemm, tile: Tile) -> int:
    blocks = math.ceil(stage.m / tile.mr) if split_rows(stage) else math.ceil(stage.n / tile.nr)
    return math.prod(stage.batch) * blocks


def depth_block(k: int, kc: int) -> int:
    """The depth of a block when `k` is split into the fewest blocks of at most `kc`, all about
    equal (a multiple of `kc`'s common factor with a quantized block, so quantized B still packs
    whole blocks): 3072 as 3 x 1024, not 1344 + 1344 + 384, whose short block pays a whole pass
    over C for little work (1024^2 x 1536 ran 5-8% faster, 2048^3 and 512 x 768 x 3072 2%)."""
    if k <= kc:
        return k
    blocks = math.ceil(k / kc)
    unit = math.gcd(kc, BLOCK_SIZE)
    return math.ceil(math.ceil(k / blocks) / unit) * unit


class _Emitter:
    """Emits one gemm stage's function body."""

    def __init__(self, stage: Gemm, tile: Tile, b: ir.IRBuilder, ptrs: list[ir.Value], out_may_alias: bool):
        self.s, self.tile, self.b, self.ptrs = stage, tile, b, ptrs
        self.vec = ir.VectorType(F32, tile.lanes)
        # partial sums live in C between depth blocks only when that is exact and safe
        reads = stage.epilogue.reads if stage.epilogue is not None else ()
        safe = stage.out.dtype == DType.f32 and not out_may_alias and all(r.arg != stage.out.arg for r in reads)
        self.kc = max(depth_block(stage.k, tile.kc) if safe else stage.k, 1)
        # a whole (deep) contraction per block: keep the packed panels within a few MB
        self.mc = max(tile.mr, min(tile.mc, PACK_A_BYTES // (4 * self.kc) // tile.mr * tile.mr))
        self.nc = max(tile.nr, min(tile.nc, PACK_B_BYTES // (4 * self.kc) // tile.nr * tile.nr))
        self.skips_depth = skips_zero_depth(stage)

    def run(self, lo: ir.Value, hi: ir.Value) -> ir.Value:
        """Emit the body; returns the status (`OUT_OF_MEMORY` if a packing buffer or the list of live
        depth steps could not be had)."""
        b, s = self.b, self.s
        malloc = libc(b.module, "aligned_alloc", cg.VOIDP, [I64, I64])
        free = libc(b.module, "free", ir.VoidType(), [cg.VOIDP])
        a_bytes = 4 * self.mc * self.kc
        b_bytes = 4 * self.kc * min(self.nc, math.ceil(s.n / self.tile.nr) * self.tile.nr)
        sizes = (a_bytes, b_bytes) + ((8 * self.kc,) if self.skips_depth else ())
        buffers = [b.call(malloc, [i64(64), i64(-(-size // 64) * 64)]) for size in sizes]
        null = ir.Constant(cg.VOIDP, None)
        failed = functools.reduce(b.or_, (b.icmp_unsigned("==", p, null) for p in buffers))
        with b.if_then(b.not_(failed)):
            self.apack, self.bpack = (b.bitcast(p, F32.as_pointer()) for p in buffers[:2])
            self.live_depth = b.bitcast(buffers[2], I64.as_pointer()) if self.skips_depth else None
            self._run(lo, hi)
        for p in buffers:
            b.call(free, [p])
        return b.select(failed, ir.Constant(cg.I32, cg.OUT_OF_MEMORY), ir.Constant(cg.I32, 0))

    def _run(self, lo: ir.Value, hi: ir.Value) -> None:
        b, s, t = self.b, self.s, self.tile
        with b.goto_entry_block():
            self.sums = b.alloca(F32, t.mr * t.nr, name="sums")
            self.spans = b.alloca(I64, 2 * (self.mc // t.mr), name="spans")
            self.live_count = b.alloca(I64, name="live_count") if self.skips_depth else None
        rows = split_rows(s)
        unit, dim = (t.mr, s.m) if rows else (t.nr, s.n)
        blocks = math.ceil(dim / unit)
        first = b.udiv(lo, i64(blocks))
        last = b.udiv(b.add(hi, i64(blocks - 1)), i64(blocks))
        with cg.loop(b, first, last, name="batch") as bi:
            start = b.mul(cg.imax(b, b.sub(lo, b.mul(bi, i64(blocks))), i64(0)), i64(unit))
            stop = cg.imin(b, b.mul(cg.imin(b, b.sub(hi, b.mul(bi, i64(blocks))), i64(blocks)), i64(unit)), i64(dim))
            batch = cg.unravel(b, bi, s.batch)
            span = (start, stop, i64(0), i64(s.n)) if rows else (i64(0), i64(s.m), start, stop)
            self.batch_gemm(batch, *span)

    def batch_gemm(self, batch, m0, m1, n0, n1) -> None:
        b, s, t = self.b, self.s, self.tile
        self.batch = batch
        self.a_base = s.a.base(b, batch)
        self.b_base = s.b.base(b, batch)
        if s.k == 0:
            self.empty_sum(m0, m1, n0, n1)
            return
        with cg.loop(b, n0, n1, self.nc, name="jc") as jc:
            nc = cg.imin(b, i64(self.nc), b.sub(n1, jc))
            with cg.loop(b, 0, s.k, self.kc, name="pc") as pc:
                kc = cg.imin(b, i64(self.kc), b.sub(i64(s.k), pc))
                is_first = b.icmp_signed("==", pc, i64(0))
                is_last = b.icmp_signed("==", b.add(pc, kc), i64(s.k))
                depth = self.find_live_depth(pc, kc, m0, m1, jc, nc) if self.skips_depth else kc
                self.pack_b(pc, depth, jc, nc)
                with cg.loop(b, m0, m1, self.mc, name="ic") as ic:
                    mc = cg.imin(b, i64(self.mc), b.sub(m1, ic))
                    self.pack_a(ic, mc, pc, depth)
                    with cg.loop(b, 0, nc, t.nr, name="jr") as jr:
                        with cg.loop(b, 0, mc, t.mr, name="ir") as ir_:
                            row0, col0 = b.add(ic, ir_), b.add(jc, jr)
                            self.prefetch_tile(row0, col0, is_last)
                            span = b.gep(self.spans, [b.mul(b.udiv(ir_, i64(t.mr)), i64(2))])
                            first, steps = (b.load(b.gep(span, [i64(j)])) for j in (0, 1))
                            ap = b.gep(self.apack, [b.add(b.mul(ir_, depth), b.mul(first, i64(t.mr)))])
                            bp = b.gep(self.bpack, [b.add(b.mul(jr, depth), b.mul(first, i64(t.nr)))])
                            self.micro(ap, bp, steps)
                            self.store_tile(row0, col0, cg.imin(b, i64(t.mr), b.sub(mc, ir_)),
                                            cg.imin(b, i64(t.nr), b.sub(nc, jr)), is_first, is_last)

    def empty_sum(self, m0, m1, n0, n1) -> None:
        """A contraction over nothing: every sum is zero."""
        b, t = self.b, self.tile
        for i in range(t.mr * t.nr):
            b.store(ir.Constant(F32, 0.0), b.gep(self.sums, [i64(i)]))
        true = ir.Constant(cg.I1, 1)
        with cg.loop(b, n0, n1, t.nr, name="zj") as j:
            with cg.loop(b, m0, m1, t.mr, name="zi") as i:
                self.store_tile(i, j, cg.imin(b, i64(t.mr), b.sub(m1, i)), cg.imin(b, i64(t.nr), b.sub(n1, j)),
                                true, true)

    def find_live_depth(self, pc, kc, m0, m1, jc, nc) -> ir.Value:
        """Lists in `live_depth` the depth steps p < kc with a nonzero (or NaN) both in their row of
        B over the panel's columns and in their column of A over rows m0..m1; returns how many
        there are (the packed depth)."""
        b, s = self.b, self.s
        count = self.live_count
        b.store(i64(0), count)
        with cg.loop(b, 0, kc, name="live") as p:
            step = b.add(pc, p)
            in_b = self._scan(i64(0), nc, 1,
                              lambda c: nonzero(b, s.b.load(b, self.ptrs, self.b_base, step, b.add(jc, c))))
            with b.if_then(b.icmp_signed("<", in_b, nc)):
                in_a = self._scan(m0, m1, 1, lambda r: nonzero(b, s.a.load(b, self.ptrs, self.a_base, r, step)))
                with b.if_then(b.icmp_signed("<", in_a, m1)):
                    found = b.load(count)
                    b.store(p, b.gep(self.live_depth, [found]))
                    b.store(b.add(found, i64(1)), count)
        return b.load(count)

    def depth(self, pc: ir.Value, p: ir.Value) -> ir.Value:
        """The depth index of packed step p of the block at pc."""
        if self.live_depth is None:
            return self.b.add(pc, p)
        return self.b.add(pc, self.b.load(self.b.gep(self.live_depth, [p])))

    def pack_b(self, pc, kc, jc, nc) -> None:
        """bpack[jr*kc + p*nr + c] = B[depth p, jc+jr+c] (zero past the last column)."""
        b, s, nr = self.b, self.s, self.tile.nr
        load = lambda p, c: s.b.load(b, self.ptrs, self.b_base, self.depth(pc, p), c)  # noqa: E731
        if isinstance(s.b, Strided) and s.b.access.strides[-1] == 1:
            self._pack_sweep(pc, kc, jc, nc, load)
            return
        with cg.loop(b, 0, nc, nr, name="pbj") as jr:
            dst = b.gep(self.bpack, [b.mul(jr, kc)])
            col0, remaining = b.add(jc, jr), b.sub(nc, jr)
            if not transposes(s.b, self.tile, self.kc):
                self._pack(dst, kc, nr, col0, remaining, s.n, load)
            else:
                with b.if_else(b.icmp_signed(">=", remaining, i64(nr))) as (then, otherwise):
                    with then:
                        self._pack_columns(dst, pc, kc, col0, load)
                    with otherwise:
                        self._pack(dst, kc, nr, col0, remaining, s.n, load)

    def _pack_columns(self, dst, pc, kc, col0, load) -> None:
        """A full B sliver from columns contiguous along the depth (a Linear weight [N, K]):
        `lanes` depth steps of `lanes` columns loaded as vectors, transposed in registers, stored
        as `lanes` rows of the sliver; the depth left over element by element."""
        b, t, access = self.b, self.tile, self.s.b.access
        lanes, (_, column_stride) = t.lanes, access.strides[-2:]
        whole = b.mul(b.udiv(kc, i64(lanes)), i64(lanes))
        with cg.loop(b, 0, whole, lanes, name="pbt") as p0:
            for group in range(t.nr // lanes):
                rows = []
                for w in range(lanes):
                    column = b.add(col0, i64(group * lanes + w))
                    index = b.add(self.b_base, b.add(b.add(pc, p0), b.mul(column, i64(column_stride))))
                    rows.append(_depth_run(b, self.ptrs[access.arg], index, access.dtype, lanes))
                for p, row in enumerate(transpose(b, rows)):
                    target = b.gep(dst, [b.add(b.mul(b.add(p0, i64(p)), i64(t.nr)), i64(group * lanes))])
                    b.store(row, b.bitcast(target, row.type.as_pointer()), align=4)
        self._pack(b.gep(dst, [b.mul(whole, i64(t.nr))]), b.sub(kc, whole), t.nr, col0, i64(t.nr), self.s.n,
                   lambda p, c: load(b.add(p, whole), c))

    def pack_a(self, ic, mc, pc, kc) -> None:
        """apack[ir*kc + p*mr + r] = A[ic+ir+r, depth p] (zero past the last row), and in `spans` each
        sliver's first depth step and number of steps from its first to its last with a nonzero
        (or NaN): zeros before and after (a causal attention's probabilities) cost nothing."""
        b, s, mr = self.b, self.s, self.tile.mr
        with cg.loop(b, 0, mc, mr, name="pai") as ir_:
            dst = b.gep(self.apack, [b.mul(ir_, kc)])
            row0 = b.add(ic, ir_)
            load = lambda p, r: s.a.load(b, self.ptrs, self.a_base, r, self.depth(pc, p))  # noqa: E731
            self._pack(dst, kc, mr, row0, b.sub(mc, ir_), s.m, load)
            span = b.gep(self.spans, [b.mul(b.udiv(ir_, i64(mr)), i64(2))])
            for j, value in enumerate(self._nonzero_span(dst, kc)):
                b.store(value, b.gep(span, [i64(j)]))

    def _nonzero_span(self, sliver: ir.Value, kc: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(first, count) of the depth steps of a packed A sliver from its first with a nonzero (or
        NaN) to its last; (kc, 0) for a sliver of zeros. Each step's mr values are one vector."""
        b, mr = self.b, self.tile.mr
        vector = ir.VectorType(F32, mr).as_pointer()

        def live(p: ir.Value) -> ir.Value:
            return nonzero(b, b.load(b.bitcast(b.gep(sliver, [b.mul(p, i64(mr))]), vector), align=4))
        first = self._scan(i64(0), kc, 1, live)
        last = self._scan(b.sub(kc, i64(1)), first, -1, live)
        return first, b.select(b.icmp_signed("==", first, kc), i64(0), b.add(b.sub(last, first), i64(1)))

    def _scan(self, start: ir.Value, stop: ir.Value, step: int, live) -> ir.Value:
        """The first i from `start` towards `stop` (by `step`, +1 or -1) where live(i) holds (an i1);
        `stop` (or `start`, if that is already at or past `stop`) where it nowhere does."""
        b = self.b
        i, _, head, body, done = cg.loop_head(b, start, "scan")
        b.cbranch(b.icmp_signed("<" if step > 0 else ">", i, stop), body, done)
        b.position_at_end(body)
        found = live(i)
        i.add_incoming(b.add(i, i64(step)), b.block)
        b.cbranch(found, done, head)
        b.position_at_end(done)
        return i

    def _pack_sweep(self, pc, kc, jc, nc, load) -> None:
        """The panel's `nc` columns from `jc` laid out as `pack_b` says, for a B contiguous along its
        columns: depth step by depth step, each one sweep along a row of B (hardware prefetchers
        follow it; a sliver at a time visits a new page every step: 6-15% slower on a cold
        [768, 3072] weight), each sliver's part of the row copied as `nr / lanes` vectors (LLVM
        left element-wise copies scalar: [768, 3072] packed at 8.5 GB/s). The edge sliver as
        `_pack` does."""
        b, t, operand = self.b, self.tile, self.s.b
        access = operand.access
        full = b.mul(b.udiv(nc, i64(t.nr)), i64(t.nr))
        with cg.loop(b, 0, kc, name="sweep") as p:
            depth = self.depth(pc, p)
            with cg.loop(b, 0, full, t.nr, name="sweepw") as jr:
                row = b.gep(self.bpack, [b.add(b.mul(jr, kc), b.mul(p, i64(t.nr)))])
                col0 = b.add(jc, jr)
                if access.dtype.is_blocked:  # a run of lanes may straddle two blocks
                    for c in range(t.nr):
                        b.store(load(p, b.add(col0, i64(c))), b.gep(row, [i64(c)]))
                else:
                    for v in range(0, t.nr, t.lanes):
                        index = operand.index(b, self.b_base, depth, b.add(col0, i64(v)))
                        run = _depth_run(b, self.ptrs[access.arg], index, access.dtype, t.lanes)
                        b.store(run, b.bitcast(b.gep(row, [i64(v)]), run.type.as_pointer()), align=4)
        with b.if_then(b.icmp_signed("<", full, nc)):
            self._pack(b.gep(self.bpack, [b.mul(full, kc)]), kc, t.nr, b.add(jc, full), b.sub(nc, full), self.s.n, load)

    def _pack(self, dst, kc, width: int, first, remaining, limit: int, load) -> None:
        """dst[p*width + w] = load(p, first + w) for p < kc, w < width; zero where w >= remaining.

        Full slivers load without bounds, a depth step's `width` elements written out (the
        vectorizer turns them into vector loads, shuffles and stores); the edge sliver clamps
        its index and selects zero.
        """
        b = self.b
        full = b.icmp_signed(">=", remaining, i64(width))
        with b.if_else(full) as (then, otherwise):
            with then:
                with cg.loop(b, 0, kc, name="pk") as p:
                    row = b.gep(dst, [b.mul(p, i64(width))])
                    for w in range(width):
                        b.store(load(p, b.add(first, i64(w))), b.gep(row, [i64(w)]))
            with otherwise:
                with cg.loop(b, 0, kc, name="pke") as p:
                    with cg.loop(b, 0, width, name="pkew") as w:
                        inside = b.icmp_signed("<", w, remaining)
                        index = cg.imin(b, b.add(first, w), i64(max(limit - 1, 0)))
                        value = b.select(inside, load(p, index), ir.Constant(F32, 0.0))
                        b.store(value, b.gep(dst, [b.add(b.mul(p, i64(width)), w)]))

    def prefetch_tile(self, row0: ir.Value, col0: ir.Value, is_last: ir.Value) -> None:
        """Ask for the cache lines of C's tile at (row0, col0), and on the last depth block those
        the epilogue reads there, while the micro-kernel runs (a wide matrix's rows are pages
        apart: without this, each tile waits on memory for its sums and epilogue operands)."""
        self._prefetch(self.s.out, row0, col0, write=True)
        epilogue = self.s.epilogue
        reads = [] if epilogue is None else [r for r in epilogue.reads if isinstance(r, Access) and any(r.strides[-2:])]
        if reads:
            with self.b.if_then(is_last):
                for access in reads:
                    self._prefetch(access, row0, col0, write=False)

    def _prefetch(self, access: Access, row0: ir.Value, col0: ir.Value, write: bool) -> None:
        """Prefetch every 64-byte line of `access` an mr x nr tile at (row0, col0) spans."""
        b, s, t = self.b, self.s, self.tile
        last_row, last_col = i64(s.m - 1), i64(s.n - 1)
        row_stride, column_stride = access.strides[-2:]
        for i in range(t.mr if row_stride else 1):
            row = cg.imin(b, b.add(row0, i64(i)), last_row)
            for j in sorted({*range(0, t.nr, 16), t.nr - 1}) if column_stride else [0]:
                address = access.address(b, [*self.batch, row, cg.imin(b, b.add(col0, i64(j)), last_col)])
                cg.prefetch(b, cg.element_ptr(b, self.ptrs[access.arg], address), write=write)

    def micro(self, ap: ir.Value, bp: ir.Value, kc: ir.Value) -> None:
        """sums = sum over p < kc of ap[p*mr + i] * bp[p*nr + j], in mr x nr/lanes vector registers."""
        b, t = self.b, self.tile
        zero = ir.Constant(self.vec, [0.0] * t.lanes)
        main = b.mul(b.udiv(kc, i64(UNROLL)), i64(UNROLL))
        accs = self._fma_loop(ap, bp, i64(0), main, UNROLL, [zero] * (t.mr * t.nr // t.lanes))
        accs = self._fma_loop(ap, bp, main, kc, 1, accs)
        for i, acc in enumerate(accs):
            b.store(acc, b.bitcast(b.gep(self.sums, [i64(i * t.lanes)]), self.vec.as_pointer()), align=4)

    def _fma_loop(self, ap, bp, start, stop, unroll: int, init: list[ir.Value]) -> list[ir.Value]:
        """Accumulators after depth steps [start, stop), `unroll` steps per iteration."""
        b, t, vec = self.b, self.tile, self.vec
        name = f"llvm.fma.v{t.lanes}f32"
        fma = b.module.globals.get(name) or ir.Function(b.module, ir.FunctionType(vec, [vec] * 3), name)
        p, pre, head, body, done = cg.loop_head(b, start, "mk")
        accs = []
        for value in init:
            acc = b.phi(vec)
            acc.add_incoming(value, pre)
            accs.append(acc)
        b.cbranch(b.icmp_signed("<", p, stop), body, done)
        b.position_at_end(body)
        shuffle_mask = ir.Constant(ir.VectorType(cg.I32, t.lanes), [0] * t.lanes)
        vectors = t.nr // t.lanes
        updated = list(accs)
        for u in range(unroll):
            q = b.add(p, i64(u))
            bs = [b.load(b.bitcast(b.gep(bp, [b.add(b.mul(q, i64(t.nr)), i64(v * t.lanes))]), vec.as_pointer()),
                         align=4) for v in range(vectors)]
            for i in range(t.mr):
                a = b.load(b.gep(ap, [b.add(b.mul(q, i64(t.mr)), i64(i))]))
                splat = b.shuffle_vector(b.insert_element(ir.Constant(vec, ir.Undefined), a, i64(0)),
                                         ir.Constant(vec, ir.Undefined), shuffle_mask)
                for v, bv in enumerate(bs):
                    updated[i * vectors + v] = b.call(fma, [splat, bv, updated[i * vectors + v]])
        p.add_incoming(b.add(p, i64(unroll)), b.block)
        for acc, new in zip(accs, updated):
            acc.add_incoming(new, b.block)
        b.branch(head)
        b.position_at_end(done)
        return accs

    def store_tile(self, row0, col0, mr, nr, is_first, is_last) -> None:
        """C[row0:, col0:] (+)= tile, applying the epilogue on the last depth block."""
        b = self.b
        with b.if_else(is_last) as (then, otherwise):
            with then:
                self._store(row0, col0, mr, nr, is_first, True)
            with otherwise:
                self._store(row0, col0, mr, nr, is_first, False)

    def _store(self, row0, col0, mr, nr, is_first: ir.Value, last: bool) -> None:
        b, s = self.b, self.s
        out = s.out
        with cg.loop(b, 0, mr, name="si") as i:
            with cg.loop(b, 0, nr, name="sj") as j:
                indices = [*self.batch, b.add(row0, i), b.add(col0, j)]
                address = out.address(b, indices)
                acc = b.load(b.gep(self.sums, [b.add(b.mul(i, i64(self.tile.nr)), j)]))
                if self.kc < s.k:
                    previous = cg.load(b, self.ptrs[out.arg], address, out.dtype)
                    acc = b.select(is_first, acc, b.fadd(acc, previous))
                if last and s.epilogue is not None:
                    acc = s.epilogue.emit(b, self.ptrs, indices, acc)
                elif last:
                    acc = ex.cast(b, acc, DType.f32, s.out.dtype)
                cg.store(b, acc, self.ptrs[out.arg], address, out.dtype)


def nonzero(b: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """Whether an f32 is nonzero or NaN (of a vector: any lane), as an i1."""
    if not isinstance(value.type, ir.VectorType):
        return b.fcmp_unordered("!=", value, ir.Constant(F32, 0.0))
    lanes = b.fcmp_unordered("!=", value, ir.Constant(value.type, [0.0] * value.type.count))
    bits = ir.IntType(value.type.count)
    return b.icmp_unsigned("!=", b.bitcast(lanes, bits), ir.Constant(bits, 0))


def skips_zero_depth(stage: Gemm) -> bool:
    """Whether the gemm packs only the depth steps with a nonzero in their column of A and row of B:
    a weight gradient (A = X^T or dY^T contiguous along its rows, B = dY or X along its columns,
    the depth their tokens), where the tokens a masked loss leaves out are zero; an indirect depth
    index (from a list of a depth block's steps) costs packing along those contiguous runs nothing."""
    if not (isinstance(stage.a, Strided) and isinstance(stage.b, Strided)):
        return False
    a, b = stage.a.access, stage.b.access
    return a.strides[-2] == 1 and b.strides[-1] == 1 and not (a.dtype.is_blocked or b.dtype.is_blocked)


def transposes(operand: MatrixOperand, tile: Tile, kc: int) -> bool:
    """Whether B's full slivers pack by in-register transposes: a strided matrix contiguous along
    the depth (unit row stride) and not along its columns, of f32, bf16 or f16, or of blocks along
    the depth (every column and depth block starting a block: a block-quantized Linear weight)."""
    if not isinstance(operand, Strided) or tile.nr % tile.lanes or tile.lanes > BLOCK_SIZE:
        return False
    access = operand.access
    contiguous = access.strides[-2] == 1 and access.strides[-1] != 1
    if access.dtype.is_blocked:
        aligned = (access.offset, *access.strides[:-2], access.strides[-1], kc)
        return contiguous and all(x % BLOCK_SIZE == 0 for x in aligned)
    return contiguous and access.dtype in (DType.f32, DType.bf16, DType.f16)


def _depth_run(b: ir.IRBuilder, base: ir.Value, index: ir.Value, dtype: DType, lanes: int) -> ir.Value:
    """Elements `index` to `index + lanes` of a buffer as an f32 vector (of blocks: a run within one)."""
    if dtype.is_blocked:
        return cg.load_blocked(b, base, index, dtype, lanes)
    vector = ir.VectorType(cg.storage_type(dtype), lanes)
    return cg.to_compute(b, b.load(b.bitcast(cg.element_ptr(b, base, index), vector.as_pointer()), align=1), dtype)


def transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The columns of a square matrix given as its rows (vectors of len(rows) lanes, a power of two):
    for each bit, two-row shuffles swap the off-diagonal blocks of that size."""
    count = len(rows)
    rows = list(rows)
    bit = 1
    while bit < count:
        low = ir.Constant(ir.VectorType(cg.I32, count), [j if not j & bit else count + (j ^ bit) for j in range(count)])
        high = ir.Constant(ir.VectorType(cg.I32, count), [j ^ bit if not j & bit else count + j for j in range(count)])
        for i in range(count):
            if not i & bit:
                rows[i], rows[i | bit] = (b.shuffle_vector(rows[i], rows[i | bit], low),
                                          b.shuffle_vector(rows[i], rows[i | bit], high))
        bit <<= 1
    return rows


def is_small(stage: Gemm) -> bool:
    """Small products skip packing and blocking: a plain loop nest (and much less code)."""
    return stage.m * stage.n * stage.k < SMALL


def emit_small(stage: Gemm, b: ir.IRBuilder, ptrs, lo, hi) -> None:
    """out[batch, i, j] = epilogue(sum_p a[i, p] * b[p, j]), parallel over batch * m rows."""
    with b.goto_entry_block():
        acc = b.alloca(F32)
    with cg.loop(b, lo, hi, name="row") as flat:
        *batch, i = cg.unravel(b, flat, (*stage.batch, stage.m))
        a_base, b_base = stage.a.base(b, batch), stage.b.base(b, batch)
        with cg.loop(b, 0, stage.n, name="col") as j:
            b.store(ir.Constant(F32, 0.0), acc)
            with cg.loop(b, 0, stage.k, name="dot") as p:
                product = b.fmul(stage.a.load(b, ptrs, a_base, i, p), stage.b.load(b, ptrs, b_base, p, j))
                b.store(b.fadd(b.load(acc), product, flags=("reassoc", "contract")), acc)
            store_sum(stage, b, ptrs, batch, i, j, b.load(acc))


def lower_gemm(km: KernelModule, name: str, stage: GemmStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent."""
    epilogue = km.expression(stage.epilogue) if stage.epilogue is not None else None
    gemm = Gemm(tuple(stage.batch), stage.m, stage.n, stage.k, Strided(km.access(stage.a)),
                Strided(km.access(stage.b)), km.whole(stage.out), epilogue)
    return emit_gemm(km, name, gemm)


def emit_gemm(km: KernelModule, name: str, stage: Gemm) -> int:
    """Emit a gemm as function `name` with the module's tile (or its narrow variant: `pick_tile`);
    returns its parallel extent."""
    stage = fold_batch(simplify(stage))
    if is_small(stage):
        km.function(name, lambda b, ptrs, lo, hi: emit_small(stage, b, ptrs, lo, hi))
        return math.prod(stage.batch) * stage.m
    if is_gemv(stage):  # a few rows: stream B once (runtime/jit/gemv.py)
        km.function(name, lambda b, ptrs, lo, hi: emit_gemv(stage, b, ptrs, lo, hi, km.tile.lanes))
        return gemv_extent(stage)

    tile = pick_tile(stage, km.tile)

    def body(b: ir.IRBuilder, ptrs, lo, hi):
        return _Emitter(stage, tile, b, ptrs, km.aliasing.may_alias(stage.out.arg)).run(lo, hi)

    km.function(name, body)
    return parallel_extent(stage, tile)

