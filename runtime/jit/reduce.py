"""`reduce` stages: combine a body over some axes of a loop nest (sum, max, min, argmax).

Axes are coalesced (reduced with reduced, kept with kept). When the innermost axis
is reduced, each output accumulates in a register over the reduced loops, which
the vectorizer turns into a vector reduction (float adds may reassociate; a float max or
min compares integer order keys); a float argmax there keeps `PARTIALS` interleaved
partial results instead, folded at the end (its compare chain does not vectorize, and one
chain waits on itself). When
the innermost axis is kept, outputs are processed in chunks of `CHUNK` along it:
a small accumulator array is updated across the reduced loops by a contiguous,
vectorizable inner loop. The epilogue, if any, is applied to each finished
accumulator before it is stored. The parallel axis is the outermost kept loop.
"""
from __future__ import annotations

import math
from typing import Sequence

import llvmlite.ir as ir

from backend.pef.records import row_major
from backend.pef.stages import ReduceStage
from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit.codegen import I32, I64, i64
from runtime.jit.layout import Access, Expression, coalesce
from runtime.jit.module import KernelModule

CHUNK = 256
REDUCED, KEPT = 1, 0
#: interleaved partial results of a float argmax along its innermost reduced axis (one chain of
#: NaN-aware compares waits on itself and does not vectorize)
PARTIALS = 8


def _out_strides(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """Strides, over the loop nest, of a row-major output over the kept axes."""
    kept = [d for i, d in enumerate(shape) if i not in axes]
    kept_strides = iter(row_major(kept))
    return tuple(0 if i in axes else next(kept_strides) for i in range(len(shape)))


def _epilogue_to_nest(strides: Sequence[int], out_shape: Sequence[int], shape: Sequence[int],
                      axes: Sequence[int]) -> tuple[int, ...]:
    """Strides over the output shape re-expressed over the loop nest (reduced axes: 0)."""
    out_axes = [i for i, d in enumerate(out_shape) if d != 1]
    nest_axes = [i for i, d in enumerate(shape) if i not in axes and d != 1]
    result = [0] * len(shape)
    for o, n in zip(out_axes, nest_axes):
        result[n] = strides[o]
    return tuple(result)


def _identity(dtype: DType, value: float) -> ir.Constant:
    if dtype.is_float:
        return ir.Constant(cg.F32, value)
    info_min, info_max = (-(2 ** (dtype.itemsize * 8 - 1)), 2 ** (dtype.itemsize * 8 - 1) - 1)
    if math.isinf(value):
        return ir.Constant(cg.compute_type(dtype), info_min if value < 0 else info_max)
    return ir.Constant(cg.compute_type(dtype), int(value))


def _combine(b: ir.IRBuilder, combine: str, dtype: DType, acc: ir.Value, value: ir.Value) -> ir.Value:
    if combine == "add":
        return b.fadd(acc, value, flags=("reassoc", "contract")) if dtype.is_float else b.add(acc, value)
    if dtype.is_float:
        return cg.intrinsic(b, "llvm.maximum" if combine == "max" else "llvm.minimum", acc, value)
    return cg.intrinsic(b, f"llvm.s{combine}", acc, value)


def _better(b: ir.IRBuilder, dtype: DType, value: ir.Value, best: ir.Value) -> ir.Value:
    """argmax's update test: larger, or the first nan (numpy's rule)."""
    if not dtype.is_float:
        return b.icmp_signed(">", value, best)
    first_nan = b.and_(b.fcmp_unordered("uno", value, value), b.fcmp_ordered("ord", best, best))
    return b.or_(b.fcmp_ordered(">", value, best), first_nan)


def _flip(b: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    """`bits` with all but the sign bit flipped when the sign is set (an involution): it maps the
    order of f32 values onto the signed order of their bits."""
    return b.xor(bits, b.lshr(b.ashr(bits, ir.Constant(I32, 31)), ir.Constant(I32, 1)))


def _order_key(b: ir.IRBuilder, value: ir.Value, combine: str) -> ir.Value:
    """An i32 whose signed order is llvm.maximum's and llvm.minimum's float order (-0 < +0), every
    nan made the one that wins: above +inf for max, below -inf for min."""
    nan = ir.Constant(I32, 0x7FC00000 if combine == "max" else -0x00400000)
    bits = b.select(b.fcmp_unordered("uno", value, value), nan, b.bitcast(value, I32))
    return _flip(b, bits)


def _pairwise(values: list, combine):
    """The values combined in adjacent pairs, level by level, down to one."""
    while len(values) > 1:
        values = [combine(*values[i:i + 2]) if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


class _Reduction:
    """Emits one reduce stage over a coalesced loop nest."""

    def __init__(self, shape, tags, out: Access, body: Expression, epilogue: Expression | None,
                 combine: str, identity: float, lanes: int = 0):
        """`lanes`: the f32 vector width for an argmax of a contiguous f32 row (0: scalar code only)."""
        self.shape, self.tags, self.out = shape, tags, out
        self.lanes = lanes
        self.body, self.epilogue = body, epilogue
        self.combine, self.identity = combine, identity
        self.dtype = DType(body.nodes[-1].dtype)
        self.kept = [a for a, t in enumerate(tags) if t == KEPT]
        self.reduced = [a for a, t in enumerate(tags) if t == REDUCED]
        self.chunked = bool(self.reduced) and tags[-1] == KEPT

    def parallel_extent(self) -> int:
        if self.chunked and len(self.kept) == 1:
            return math.ceil(self.shape[-1] / CHUNK)
        return self.shape[self.kept[0]] if self.kept else 1

    def emit(self, b: ir.IRBuilder, ptrs, lo, hi) -> None:
        self.b, self.ptrs = b, ptrs
        self.idx: list[ir.Value | None] = [None] * len(self.shape)
        outer = self.kept[:-1] if self.chunked else self.kept
        self._loops(outer, lo, hi, self._chunks if self.chunked else self._register)

    def _loops(self, axes: list[int], lo, hi, inner, first: bool = True) -> None:
        """Nested loops over `axes` (the first restricted to [lo, hi) when `first`)."""
        if not axes:
            inner(lo, hi, first)
            return
        axis = axes[0]
        start, stop = (lo, hi) if first else (0, self.shape[axis])
        with cg.loop(self.b, start, stop, name=f"r{axis}") as i:
            self.idx[axis] = i
            self._loops(axes[1:], lo, hi, inner, False)

    def _store(self, acc: ir.Value) -> None:
        b = self.b
        if self.combine == "argmax":
            acc = b.trunc(acc, I32)
        if self.epilogue is not None:
            acc = self.epilogue.emit(b, self.ptrs, self.idx, acc)
        self.out.store(b, acc, self.ptrs, self.idx)

    def _register(self, lo, hi, parallel_unused: bool) -> None:
        """One output: accumulate over every reduced axis in registers."""
        b = self.b
        with b.goto_entry_block():
            acc = b.alloca(cg.compute_type(self.dtype))
            best = b.alloca(I64)
        if parallel_unused and not self.kept:  # a full reduction: one thread does it
            with b.if_then(b.icmp_signed("<", lo, hi)):
                self._accumulate(acc, best)
        else:
            self._accumulate(acc, best)

    def _accumulate(self, acc, best) -> None:
        b = self.b
        b.store(_identity(self.dtype, self.identity), acc)
        b.store(i64(0), best)

        def step(*_):
            value = self.body.emit(b, self.ptrs, self.idx)
            self._update(acc, best, value, self.idx[self.reduced[-1]] if self.reduced else i64(0))

        argmax_row = len(self.reduced) == 1 and self.combine == "argmax"
        row = self._row() if argmax_row else None
        if self.reduced and self.combine in ("max", "min") and self.dtype.is_float:
            self._loops(self.reduced[:-1], i64(0), i64(0), lambda *_: self._extremum(acc), False)
        elif row is not None:
            self._first_best_vector(acc, best, row)
        elif argmax_row and self.dtype.is_float:
            self._first_best(acc, best)
        else:
            self._loops(self.reduced, i64(0), i64(0), step, False)
        self._store(b.load(best) if self.combine == "argmax" else b.load(acc))

    def _extremum(self, acc) -> None:
        """A float max or min over the innermost reduced axis into `acc`: a signed-integer max or min
        of order keys (`_order_key`), one chain the vectorizer turns into vector compares where
        llvm.maximum's chains did not vectorize behind a masked body (a causal softmax's row max,
        5x faster). The result is llvm.maximum's or llvm.minimum's, a canonical nan for any nan."""
        b, axis = self.b, self.reduced[-1]
        with b.goto_entry_block():
            key = b.alloca(I32, name="key")
        b.store(_order_key(b, b.load(acc), self.combine), key)
        with cg.loop(b, 0, self.shape[axis], name="extremum") as i:
            self.idx[axis] = i
            value = _order_key(b, self.body.emit(b, self.ptrs, self.idx), self.combine)
            b.store(cg.intrinsic(b, f"llvm.s{self.combine}", b.load(key), value), key)
        b.store(b.bitcast(_flip(b, b.load(key)), cg.F32), acc)

    def _first_best(self, acc, best) -> None:
        """argmax over the one reduced axis, in `PARTIALS` interleaved partial (value, position)
        pairs, each found by the chain's own rule and folded at the end by it, ties going to the
        earlier position: the first maximum or the first nan, as one chain finds them."""
        b, axis = self.b, self.reduced[0]
        with b.goto_entry_block():
            pairs = [(b.alloca(cg.F32, name=f"value{u}"), b.alloca(I64, name=f"at{u}")) for u in range(PARTIALS)]
        for value, at in pairs:
            b.store(_identity(self.dtype, self.identity), value)
            b.store(i64(0), at)

        def fold(pair, position):
            self.idx[axis] = position
            self._update(*pair, self.body.emit(b, self.ptrs, self.idx), position)

        self._interleave(axis, pairs, fold)
        self._fold_best([(b.load(value), b.load(at)) for value, at in pairs], acc, best)

    def _row(self) -> Access | None:
        """The read a float argmax's body is, when it is one contiguous f32 row along the reduced
        axis that positions fit i32 (what vector loads can take), else None."""
        (axis,) = self.reduced
        nodes, reads = self.body.nodes, self.body.reads
        if not self.lanes or len(nodes) != 1 or nodes[0].op != "arg" or self.shape[axis] >= 2 ** 31:
            return None
        read = reads[nodes[0].value]
        return read if read.dtype == DType.f32 and read.strides[axis] == 1 else None

    def _first_best_vector(self, acc, best, row: Access) -> None:
        """argmax along a contiguous f32 row in vector registers: lane j keeps the best of positions
        j, j + lanes, ... by the chain's rule (the interleaved partials of `_first_best`, one per
        lane); the positions past the last whole vector go to one more partial; all fold by it."""
        b, axis, lanes = self.b, self.reduced[0], self.lanes
        values_type, positions_type = ir.VectorType(cg.F32, lanes), ir.VectorType(I32, lanes)
        with b.goto_entry_block():
            values, positions, here = (b.alloca(t) for t in (values_type, positions_type, positions_type))
            tail = (b.alloca(cg.F32), b.alloca(I64))
        b.store(ir.Constant(values_type, [self.identity] * lanes), values)
        b.store(ir.Constant(positions_type, [0] * lanes), positions)
        b.store(ir.Constant(positions_type, list(range(lanes))), here)
        b.store(_identity(self.dtype, self.identity), tail[0])
        b.store(i64(0), tail[1])
        whole = self.shape[axis] // lanes * lanes
        with cg.loop(b, 0, whole, lanes, name="vector") as i:
            self.idx[axis] = i
            pointer = cg.element_ptr(b, self.ptrs[row.arg], row.address(b, self.idx))
            value = b.load(b.bitcast(pointer, values_type.as_pointer()), align=4)
            current = b.load(values)
            better = _better(b, self.dtype, value, current)
            b.store(b.select(better, value, current), values)
            at = b.load(here)
            b.store(b.select(better, at, b.load(positions)), positions)
            b.store(b.add(at, ir.Constant(positions_type, [lanes] * lanes)), here)
        with cg.loop(b, whole, self.shape[axis], name="vectortail") as i:
            self.idx[axis] = i
            self._update(*tail, self.body.emit(b, self.ptrs, self.idx), i)
        final_values, final_positions = b.load(values), b.load(positions)
        pairs = [(b.extract_element(final_values, i64(j)), b.zext(b.extract_element(final_positions, i64(j)), I64))
                 for j in range(lanes)]
        self._fold_best(pairs + [(b.load(tail[0]), b.load(tail[1]))], acc, best)

    def _fold_best(self, pairs: list, acc, best) -> None:
        """The best of partial (value, position) results by argmax's rule, stored in `acc` and `best`."""
        value, at = _pairwise(pairs, self._earlier_best)
        self.b.store(value, acc)
        self.b.store(at, best)

    def _interleave(self, axis: int, partials: list, fold) -> None:
        """`fold(partial, position)` over the positions of `axis`, each partial's in order: position
        i into partial i mod `PARTIALS`, those past the last whole group into the first."""
        b, extent = self.b, self.shape[axis]
        whole = extent // PARTIALS * PARTIALS
        with cg.loop(b, 0, whole, PARTIALS, name="part") as i:
            for u, partial in enumerate(partials):
                fold(partial, b.add(i, i64(u)))
        with cg.loop(b, whole, extent, name="parttail") as i:
            fold(partials[0], i)

    def _earlier_best(self, first, second) -> tuple[ir.Value, ir.Value]:
        """Of two (value, position) results, the better by argmax's rule, the earlier one on a tie."""
        b = self.b
        (v1, i1), (v2, i2) = first, second
        earlier = b.icmp_signed("<", i2, i1)
        tie = b.or_(b.fcmp_ordered("==", v1, v2), b.and_(b.fcmp_unordered("uno", v1, v1), b.fcmp_unordered("uno", v2, v2)))
        take = b.or_(_better(b, self.dtype, v2, v1), b.and_(tie, earlier))
        return b.select(take, v2, v1), b.select(take, i2, i1)

    def _update(self, acc, best, value, position) -> None:
        b = self.b
        current = b.load(acc)
        if self.combine == "argmax":
            better = _better(b, self.dtype, value, current)
            b.store(b.select(better, value, current), acc)
            b.store(b.select(better, position, b.load(best)), best)
        else:
            b.store(_combine(b, self.combine, self.dtype, current, value), acc)

    def _chunks(self, lo, hi, parallel: bool) -> None:
        """Outputs along the innermost (kept) axis in chunks of accumulators."""
        b = self.b
        inner = len(self.shape) - 1
        with b.goto_entry_block():
            accs = b.alloca(cg.compute_type(self.dtype), CHUNK)
            bests = b.alloca(I64, CHUNK)
        extent = self.shape[inner]
        start, stop = (b.mul(lo, i64(CHUNK)), cg.imin(b, b.mul(hi, i64(CHUNK)), i64(extent))) if parallel \
            else (i64(0), i64(extent))
        with cg.loop(b, start, stop, CHUNK, name="chunk") as c0:
            count = cg.imin(b, i64(CHUNK), b.sub(i64(extent), c0))
            with cg.loop(b, 0, count, name="init") as j:
                b.store(_identity(self.dtype, self.identity), b.gep(accs, [j]))
                b.store(i64(0), b.gep(bests, [j]))

            def step(*_):
                with cg.loop(b, 0, count, name="lane") as j:
                    self.idx[inner] = b.add(c0, j)
                    value = self.body.emit(b, self.ptrs, self.idx)
                    self._update(b.gep(accs, [j]), b.gep(bests, [j]), value, self.idx[self.reduced[-1]])

            self._loops(self.reduced, i64(0), i64(0), step, False)
            with cg.loop(b, 0, count, name="fin") as j:
                self.idx[inner] = b.add(c0, j)
                self._store(b.load(b.gep(bests if self.combine == "argmax" else accs, [j])))


def lower_reduce(km: KernelModule, name: str, stage: ReduceStage) -> int:
    """Emit the stage as function `name`; returns its parallel extent."""
    shape, axes = tuple(stage.shape), tuple(stage.axes)
    out = km.whole(stage.out)
    out = out.with_strides(_out_strides(shape, axes))
    body = km.expression(stage.body)
    epilogue = None
    if stage.epilogue is not None:
        out_shape = km.buffer(stage.out).shape
        epilogue = km.expression(stage.epilogue).map_strides(
            lambda s: _epilogue_to_nest(s, out_shape, shape, axes))
    tags = [REDUCED if i in axes else KEPT for i in range(len(shape))]
    epilogue_strides = epilogue.strides if epilogue is not None else []
    groups = [out.strides, *body.strides, *epilogue_strides]
    new_shape, strides, new_tags = coalesce(shape, groups, tags)
    if not new_shape:
        new_shape, strides, new_tags = (1,), [(0,)] * len(groups), (KEPT,)
    n_body = len(body.strides)
    out = out.with_strides(strides[0])
    body = body.with_strides(strides[1:1 + n_body])
    if epilogue is not None:
        epilogue = epilogue.with_strides(strides[1 + n_body:])
    lanes = km.tile.lanes if km.spans is None else 0  # a checked kernel bounds each element: no vector loads
    reduction = _Reduction(new_shape, new_tags, out, body, epilogue, stage.combine, stage.identity, lanes)

    km.function(name, reduction.emit)
    return reduction.parallel_extent()
