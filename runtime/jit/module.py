"""A module of kernel functions over one kernel program's buffers, compiled to object code.

Buffer `i` of the program is argument `i` of every stage function, typed by its
dtype; schema accesses (by buffer name) become typed `layout.Access`es (by argument).
"""
from __future__ import annotations

from typing import Sequence

import attrs
import llvmlite.ir as ir

from backend.pef.records import Access as SchemaAccess
from backend.pef.records import Affine, Body, Buffer
from ir.dtypes import DType
from runtime.jit import codegen as cg
from runtime.jit.engine import compile_ir
from runtime.jit.host import Tile, host_tile
from runtime.jit.layout import Access, Expression, Index


@attrs.frozen
class Aliasing:
    """How a kernel's buffers share memory. Buffer i is read and written through the pointer of
    buffer `pointer[i]`: itself, or the first at exactly its bytes with its dtype and span (so a
    stage writing over its operand sees one pointer, and vectorizes without run-time overlap
    checks); `noalias[i]`: its bytes overlap no buffer but those sharing its pointer."""

    pointer: tuple[int, ...] = attrs.field(converter=tuple)
    noalias: tuple[bool, ...] = attrs.field(converter=tuple)

    @classmethod
    def disjoint(cls, count: int) -> Aliasing:
        """Buffers that share no memory."""
        return cls(range(count), (True,) * count)

    def may_alias(self, i: int) -> bool:
        """Whether another buffer's accesses may touch buffer i's bytes."""
        return not self.noalias[i] or self.pointer.count(self.pointer[i]) > 1


class KernelModule:
    """LLVM functions sharing one kernel program's buffer list; its gemms use `tile` (default:
    the host's)."""

    def __init__(self, buffers: Sequence[Buffer], aliasing: Aliasing | None = None, checked: bool = False,
                 tile: Tile | None = None):
        """`aliasing` (default: none shared); `checked`: every load and store is bounds-checked
        against its buffer's span."""
        self.buffers = {b.name: (i, b) for i, b in enumerate(buffers)}
        self.spans = tuple(DType(b.dtype).nbytes(b.span) if DType(b.dtype).is_blocked else b.span
                           for b in buffers) if checked else None
        self.arg_dtypes = tuple(DType(b.dtype) for b in buffers)
        self.aliasing = aliasing or Aliasing.disjoint(len(buffers))
        self.tile = tile or host_tile()
        self.module = ir.Module(name="rduflow")

    def buffer(self, name: str) -> Buffer:
        return self.buffers[name][1]

    def access(self, access: SchemaAccess) -> Access:
        """A schema access as a typed access of a function argument."""
        index, buffer = self.buffers[access.buffer]
        return Access(index, DType(buffer.dtype), access.offset, tuple(access.strides))

    def whole(self, name: str) -> Access:
        """The whole (row-major) buffer `name` over its own shape."""
        index, buffer = self.buffers[name]
        return Access(index, DType(buffer.dtype), 0, tuple(buffer.strides))

    @staticmethod
    def index(affine: Affine) -> Index:
        return Index(DType.i64, affine.offset, tuple(affine.coeffs))

    def expression(self, body: Body) -> Expression:
        """A body with its reads bound to arguments."""
        return Expression(tuple(body.nodes), tuple(self.access(r) for r in body.reads),
                          tuple(self.index(a) for a in body.indices))

    def function(self, name: str, body: cg.Body) -> ir.Function:
        """An exported kernel function (see `codegen.kernel_function`)."""
        types = [cg.storage_type(d) for d in self.arg_dtypes]
        return cg.kernel_function(self.module, name, types, body, self.aliasing.noalias, self.spans,
                                  self.aliasing.pointer)

    def ir_text(self) -> str:
        """The module's LLVM IR, each function's vector width declared first (`codegen.limit_vector_width`)."""
        cg.limit_vector_width(self.module)
        return str(self.module)

    def compile(self, level: int = 3) -> bytes:
        return compile_ir(self.ir_text(), level)
