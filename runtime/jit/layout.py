"""How a loop nest touches memory: strided accesses, affine index leaves, axis coalescing."""
from __future__ import annotations

from typing import Sequence

import attrs
import llvmlite.ir as ir

from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit.expr import cast, emit_body


@attrs.frozen
class Access:
    """Element `offset + sum(i[d] * strides[d])` of kernel buffer `arg` over loop indices `i`."""

    arg: int
    dtype: DType
    offset: int
    strides: tuple[int, ...]

    def address(self, b: ir.IRBuilder, indices: Sequence[ir.Value]) -> ir.Value:
        return cg.affine(b, self.offset, list(zip(indices, self.strides)))

    def load(self, b: ir.IRBuilder, ptrs: Sequence[ir.Value], indices: Sequence[ir.Value]) -> ir.Value:
        return cg.load(b, ptrs[self.arg], self.address(b, indices), self.dtype)

    def store(self, b: ir.IRBuilder, value: ir.Value, ptrs: Sequence[ir.Value], indices: Sequence[ir.Value]) -> None:
        cg.store(b, value, ptrs[self.arg], self.address(b, indices), self.dtype)

    def with_strides(self, strides: Sequence[int]) -> Access:
        return attrs.evolve(self, strides=tuple(strides))


@attrs.frozen
class Index:
    """The integer `offset + sum(i[d] * strides[d])` of the loop indices, as `dtype` (iota, masks)."""

    dtype: DType
    offset: int
    strides: tuple[int, ...]

    def load(self, b: ir.IRBuilder, ptrs: Sequence[ir.Value], indices: Sequence[ir.Value]) -> ir.Value:
        value = cg.affine(b, self.offset, list(zip(indices, self.strides)))
        return cast(b, value, DType.i64, self.dtype)

    def with_strides(self, strides: Sequence[int]) -> Index:
        return attrs.evolve(self, strides=tuple(strides))



def coalesce(shape: Sequence[int], groups: Sequence[Sequence[int]],
             tags: Sequence[int] | None = None) -> tuple[tuple[int, ...], list[tuple[int, ...]], tuple[int, ...]]:
    """Merge adjacent axes that every stride list walks contiguously; drop size-1 axes.

    `groups` are per-access stride lists over `shape`; `tags` (e.g. reduced or kept)
    must match for two axes to merge. Returns the new shape, strides and tags.
    """
    tags = list(tags) if tags is not None else [0] * len(shape)
    keep = [d for d in range(len(shape)) if shape[d] != 1]
    new_shape: list[int] = []
    new_groups: list[list[int]] = [[] for _ in groups]
    new_tags: list[int] = []
    for d in keep:
        mergeable = new_shape and new_tags[-1] == tags[d] and all(
            g[-1] == s[d] * shape[d] for g, s in zip(new_groups, groups))
        if mergeable:
            new_shape[-1] *= shape[d]
            for g, s in zip(new_groups, groups):
                g[-1] = s[d]
        else:
            new_shape.append(shape[d])
            new_tags.append(tags[d])
            for g, s in zip(new_groups, groups):
                g.append(s[d])
    return tuple(new_shape), [tuple(g) for g in new_groups], tuple(new_tags)


@attrs.frozen
class Expression:
    """A body bound to typed accesses: nodes over strided reads and affine indices."""

    nodes: tuple
    reads: tuple[Access, ...]
    indices: tuple[Index, ...]

    @property
    def strides(self) -> list[tuple[int, ...]]:
        return [leaf.strides for leaf in (*self.reads, *self.indices)]

    def with_strides(self, strides: Sequence[Sequence[int]]) -> Expression:
        n = len(self.reads)
        return Expression(self.nodes, tuple(r.with_strides(s) for r, s in zip(self.reads, strides[:n])),
                          tuple(x.with_strides(s) for x, s in zip(self.indices, strides[n:])))

    def map_strides(self, fn) -> Expression:
        return self.with_strides([fn(s) for s in self.strides])

    def emit(self, b: ir.IRBuilder, ptrs: Sequence[ir.Value], indices: Sequence[ir.Value],
             acc: ir.Value | None = None) -> ir.Value:
        def leaf(node):
            if node.op == "arg":
                return self.reads[node.value].load(b, ptrs, indices)
            if node.op == "index":
                return self.indices[node.value].load(b, ptrs, indices)
            return acc
        return emit_body(b, self.nodes, leaf)
