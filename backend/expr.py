"""Lazy tensors: values of a kernel that are expressions over strided reads, not yet in memory.

Inside a kernel, elementwise, broadcast and injective ops do not write memory:
each value is a `Lazy` — an `ir.scalar.Expr` whose `arg k` leaves stand for
`leaves[k]`, either a strided read (`Access`) or an affine function of the loop
index (`Affine`), both over the value's own shape. An injective op maps every
leaf's offset and strides (the op's `view` hook); an elementwise op joins its
operands' trees (the op's `scalar` hook). `body` turns a lazy value into the
node list of a kernel-program `Body`, sharing common subexpressions.
"""
from __future__ import annotations

from typing import Callable, Union

import attrs

from backend.pef.records import Access, Affine, Body, Node, canonical, row_major
from ir.dtypes import DType
from ir.scalar import Expr

Leaf = Union[Access, Affine]


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    return canonical(shape, row_major(shape))


@attrs.frozen(eq=False)
class Lazy:
    """A value as an expression over `leaves`, indexed by the loop index of `shape`."""

    shape: tuple[int, ...]
    dtype: DType
    expr: Expr
    leaves: tuple[Leaf, ...]

    @classmethod
    def read(cls, buffer: str, shape: tuple[int, ...], dtype: DType) -> Lazy:
        """The whole of a row-major buffer."""
        return cls(tuple(shape), dtype, Expr("arg", (), dtype, 0), (Access(buffer, 0, contiguous(shape)),))

    def bare_access(self) -> Access | None:
        """The single strided read this value is, if it is one."""
        leaf = self.leaves[self.expr.value] if self.expr.op == "arg" else None
        return leaf if isinstance(leaf, Access) else None

    def widened_access(self) -> Access | None:
        """The single strided read this value is, or a widening cast of one (bf16 read as f32:
        a stage whose loads convert to f32 reads the narrow buffer itself)."""
        expr = self.expr
        if expr.op == "cast" and expr.args[0].op == "arg" and expr.args[0].dtype.widens_to(expr.dtype):
            leaf = self.leaves[expr.args[0].value]
            return leaf if isinstance(leaf, Access) else None
        return self.bare_access()

    def map_leaves(self, shape: tuple[int, ...],
                   fn: Callable[[int, tuple[int, ...]], tuple[int, tuple[int, ...]] | None]) -> Lazy | None:
        """Every leaf re-indexed by `fn(offset, strides) -> (offset, strides)` for the new `shape`."""
        leaves = []
        for leaf in self.leaves:
            strides = leaf.strides if isinstance(leaf, Access) else leaf.coeffs
            mapped = fn(leaf.offset, strides)
            if mapped is None:
                return None
            offset, strides = mapped
            strides = canonical(shape, tuple(strides))
            if isinstance(leaf, Access):
                if offset < 0 or any(s < 0 for s in strides):
                    return None
                leaves.append(Access(leaf.buffer, offset, strides))
            else:
                leaves.append(Affine(offset, strides))
        return Lazy(tuple(shape), self.dtype, self.expr, tuple(leaves))

    def broadcast(self, shape: tuple[int, ...]) -> Lazy:
        """numpy broadcasting of this value to `shape`."""
        if self.shape == tuple(shape):
            return self
        pad = len(shape) - len(self.shape)
        return self.map_leaves(shape, lambda off, st: (off, (0,) * pad + tuple(st)))


def join(values: list[Lazy]) -> tuple[list[Expr], tuple[Leaf, ...]]:
    """The operands' trees renumbered over one shared leaf list."""
    exprs, leaves = [], []
    for value in values:
        exprs.append(_rebase(value.expr, len(leaves)))
        leaves.extend(value.leaves)
    return exprs, tuple(leaves)


def _postorder(root: Expr) -> list[Expr]:
    """Distinct nodes (by identity) of a DAG, operands before users, without recursion."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        expr, done = stack.pop()
        if done:
            order.append(expr)
            continue
        if id(expr) in seen:
            continue
        seen.add(id(expr))
        stack.append((expr, True))
        stack.extend((a, False) for a in reversed(expr.args) if id(a) not in seen)
    return order


def _rebase(root: Expr, delta: int) -> Expr:
    if delta == 0:
        return root
    new: dict[int, Expr] = {}
    for expr in _postorder(root):
        if expr.op == "arg":
            new[id(expr)] = attrs.evolve(expr, value=expr.value + delta)
        else:
            new[id(expr)] = attrs.evolve(expr, args=tuple(new[id(a)] for a in expr.args))
    return new[id(root)]


def body(value: Lazy) -> Body:
    """The `Body` computing `value`: reads and indices deduplicated, equal nodes shared."""
    reads: dict[Access, int] = {}
    indices: dict[Affine, int] = {}
    nodes: list[Node] = []
    numbers: dict[tuple, int] = {}
    node_of: dict[int, int] = {}

    def add(node: Node) -> int:
        key = (node.op, node.dtype, node.args, repr(node.value))
        if key not in numbers:
            numbers[key] = len(nodes)
            nodes.append(node)
        return numbers[key]

    for expr in _postorder(value.expr):
        if expr.op == "arg":
            leaf = value.leaves[expr.value]
            if isinstance(leaf, Access):
                node = Node("arg", expr.dtype.value, (), reads.setdefault(leaf, len(reads)))
            else:
                node = Node("index", DType.i64.value, (), indices.setdefault(leaf, len(indices)))
        else:
            node = Node(expr.op, expr.dtype.value, tuple(node_of[id(a)] for a in expr.args), expr.value)
        node_of[id(expr)] = add(node)
    return Body(tuple(reads), tuple(indices), tuple(nodes))
