"""Lowering: each top-level op of a decomposed graph becomes one kernel program.

A plain op is a kernel of its own (what -O0 gives); a `fused` op's region
becomes the stages of one kernel. The registry says how each op lowers:

* `view` (transpose, reshape, slice, broadcast_to): re-index the operand's
  reads; no stage, no memory;
* `scalar` (elementwise and broadcast ops): extend the expression tree;
* `generate` (iota, full, causal_mask): an expression of the loop index;
* `stage`: a stage of its own (its declaration's `lower`, `backend.pef.stages`),
  whose output is a temporary or a kernel output;
* any other operand-less op (a literal tensor) is evaluated here into a
  `literal` stage.

So a chain of elementwise/broadcast/injective ops is one loop with no
temporaries; a value is written to memory only when a stage needs it whole
(a gemm operand, say) or it leaves the kernel. Finally an elementwise stage
that is the only reader of a gemm/reduce/conv/pool temporary is folded into
that stage as its epilogue.

Buffers of graph tensors are named by their IR text names (`%x`, `@w`, `%12`);
tiers and offsets are bound later by the memory plan.
"""
from __future__ import annotations

import attrs
import numpy as np

from backend.expr import Lazy, body, contiguous, join
from backend.pef.program import KernelCost, KernelProgram, Schedule
from backend.pef.records import Access, Affine, Body, Buffer, Node
from backend.pef.stages import STAGE_OF_OP, LiteralStage, MapStage, Stage
from ir.dtypes import DType
from ir.errors import BackendError
from ir.graph import Graph, Op, Value
from ir.ops import lookup
from ir.printer import Printer
from ir.scalar import Expr, ScalarBuilder


def tensor_names(graph: Graph) -> dict[Value, str]:
    """Every value's IR text name (`%x`, `@w`, `%12`): stable across runs, as in IR dumps."""
    printer = Printer(graph, with_locs=False)
    printer.run()
    return printer.namer.names


def check_lowerable(graph: Graph) -> None:
    """BackendError for the first composite op (the `decompose` pass must run first)."""
    for op in graph.walk():
        if lookup(op.name).is_composite():
            raise BackendError(f"op '{op.name}' is composite: run the 'decompose' pass before the backend",
                               op.locs[0] if op.locs else None)


def lower_graph(graph: Graph, names: dict[Value, str] | None = None) -> list[KernelProgram]:
    """One kernel program per top-level op, in order (tiers and offsets not yet bound)."""
    check_lowerable(graph)
    names = names or tensor_names(graph)
    return [lower_op(op, i, names) for i, op in enumerate(graph.ops)]


def kernel_name(op: Op, index: int) -> str:
    label = op.attrs.get("label") if op.region is not None else None
    return f"k{index}_{label or op.name}"


def lower_op(op: Op, index: int, names: dict[Value, str]) -> KernelProgram:
    """The kernel program of one top-level op (a `fused` op's region included)."""
    if op.region is not None:
        args, ops, results = op.region.args, op.region.ops, op.region.results
    else:
        args, ops, results = list(op.operands), [op], list(op.results)
    kernel = _Kernel(kernel_name(op, index), op)
    kernel.bind_inputs(args, [names[v] for v in op.operands])
    kernel.bind_outputs(results, [names[v] for v in op.results])
    for inner in ops:
        kernel.lower(inner)
        for value in inner.results:
            if value in kernel.result_buffer:  # written once now, read back by later users
                kernel.materialize(value)
    kernel.finish(results, [names[v] for v in op.results])
    scheduled = fold_epilogues(kernel.stages, kernel.buffers)
    used = {name for s, _ in scheduled for name in stage_buffers(s)}
    buffers = [b for b in kernel.buffers.values() if b.role != "temp" or b.name in used]
    return KernelProgram(
        name=kernel.name, op=op.name, phase=op.phase.value if op.phase else None,
        loc=op.locs[0].stored if op.locs else "", buffers=tuple(buffers), stages=tuple(s for s, _ in scheduled),
        schedule=Schedule(tuple(t for _, t in scheduled)), cost=KernelCost(lookup(op.name).cost(op).flops))


class _Kernel:
    """The state of lowering one kernel: buffers, stages, and each value's lazy form."""

    def __init__(self, name: str, op: Op):
        self.name = name
        self.op = op
        self.buffers: dict[str, Buffer] = {}
        #: each stage with the tile its op's `tile` attribute gives (`()`: none)
        self.stages: list[tuple[Stage, tuple[int, ...]]] = []
        self.env: dict[Value, Lazy] = {}
        self.result_buffer: dict[Value, str] = {}
        self.written: set[str] = set()

    def error(self, message: str, op: Op) -> BackendError:
        loc = op.locs[0] if op.locs else (self.op.locs[0] if self.op.locs else None)
        return BackendError(f"kernel '{self.name}': op '{op.name}': {message}", loc)

    # --- buffers -------------------------------------------------------------------
    def bind_inputs(self, args: list[Value], symbols: list[str]) -> None:
        for arg, symbol in zip(args, symbols):
            self.buffers.setdefault(symbol, Buffer(symbol, "input", arg.type.shape, arg.type.dtype.value))
            self.env[arg] = Lazy.read(symbol, arg.type.shape, arg.type.dtype)

    def bind_outputs(self, results: list[Value], symbols: list[str]) -> None:
        for value, symbol in zip(results, symbols):
            self.buffers[symbol] = Buffer(symbol, "output", value.type.shape, value.type.dtype.value)
            self.result_buffer.setdefault(value, symbol)

    def target(self, value: Value) -> str:
        """Where a value that must be in memory goes: its output buffer, or a new temporary."""
        symbol = self.result_buffer.get(value)
        if symbol is not None and symbol not in self.written:
            return symbol
        symbol = f"t{sum(b.role == 'temp' for b in self.buffers.values())}"
        self.buffers[symbol] = Buffer(symbol, "temp", value.type.shape, value.type.dtype.value)
        return symbol

    def emit(self, stage: Stage, value: Value) -> None:
        self.stages.append((stage, tuple(value.producer.attrs.get("tile") or ()) if value.producer else ()))
        self.written.add(stage.out)
        self.env[value] = Lazy.read(stage.out, value.type.shape, value.type.dtype)

    def materialize(self, value: Value) -> Access:
        """The value as a whole row-major buffer, writing it with a map stage if needed."""
        lazy = self.env[value]
        access = lazy.bare_access()
        whole = access is not None and access.offset == 0 and access.strides == contiguous(lazy.shape) \
            and self.buffers[access.buffer].shape == lazy.shape
        if not whole:
            self.emit(MapStage(self.target(value), body(lazy)), value)
        return self.env[value].bare_access()

    def body_of(self, value: Value) -> Body:
        """The value as an expression body over its own shape (a reduce stage's input)."""
        return body(self.env[value])

    def operand_access(self, value: Value, widened: bool = False) -> Access:
        """A strided read of the whole value (materializing expressions first); `widened`: a
        widening cast of a read stays a read of the narrow buffer (for stages whose loads
        convert to f32: gemm)."""
        lazy = self.env[value]
        access = lazy.widened_access() if widened else lazy.bare_access()
        return access if access is not None else self.materialize(value)

    # --- ops -----------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        opdef = lookup(op.name)
        if op.region is not None:
            raise self.error("a region inside a kernel is not supported", op)
        if opdef.view is not None:
            self.lower_view(op, opdef)
        elif opdef.scalar is not None:
            self.lower_scalar(op, opdef)
        elif opdef.generate is not None:
            self.lower_generate(op, opdef)
        elif opdef.stage is not None:
            declaration = STAGE_OF_OP.get(op.name)
            if declaration is None:
                raise self.error("no stage kind declares this op", op)
            self.emit(declaration.lower(self, op, **opdef.stage(op)), op.result)
        elif not op.operands:
            self.lower_literal(op, opdef)
        else:
            raise self.error("the op declares no lowering (view, scalar, generate or stage)", op)

    def lower_view(self, op: Op, opdef) -> None:
        (x,) = op.operands
        shape = op.result.type.shape

        def view(offset, strides):
            return opdef.view(op.attrs, x.type.shape, offset, strides)
        lazy = self.env[x].map_leaves(shape, view)
        if lazy is None:
            self.materialize(x)
            lazy = self.env[x].map_leaves(shape, view)
        self.env[op.result] = attrs.evolve(lazy, dtype=op.result.type.dtype)

    def lower_scalar(self, op: Op, opdef) -> None:
        result = op.result.type
        exprs, leaves = join([self.env[v].broadcast(result.shape) for v in op.operands])
        expr = opdef.scalar(ScalarBuilder(), op.attrs, *exprs)
        self.env[op.result] = Lazy(result.shape, result.dtype, expr, leaves)

    def lower_generate(self, op: Op, opdef) -> None:
        result = op.result.type
        leaves: list[Affine] = []

        def index(axis: int) -> Expr:
            coeffs = tuple(int(i == axis and d != 1) for i, d in enumerate(result.shape))
            leaves.append(Affine(0, coeffs))
            return Expr("arg", (), DType.i64, len(leaves) - 1)
        expr = opdef.generate(ScalarBuilder(), op.attrs, index)
        self.env[op.result] = Lazy(result.shape, result.dtype, expr, tuple(leaves))

    def lower_literal(self, op: Op, opdef) -> None:
        (value,) = opdef.evaluate(op, [], None)
        kind = float if op.result.type.dtype.is_float else int
        values = tuple(kind(v) for v in np.asarray(value).astype(np.float64 if kind is float else np.int64).ravel())
        self.emit(LiteralStage(self.target(op.result), values), op.result)

    # --- results ---------------------------------------------------------------------
    def finish(self, results: list[Value], symbols: list[str]) -> None:
        """Write every kernel output not yet written (copying a value already in memory)."""
        for value, symbol in zip(results, symbols):
            if symbol not in self.written:
                self.stages.append((MapStage(symbol, body(self.env[value])), ()))
                self.written.add(symbol)


# --- epilogue folding -------------------------------------------------------------------
def stage_buffers(stage: Stage) -> set[str]:
    return {a.buffer for a in stage.reads()} | {stage.out}


def fold_epilogues(scheduled: list[tuple[Stage, tuple]], buffers: dict[str, Buffer]) -> list[tuple[Stage, tuple]]:
    """Fold a map stage into the gemm/reduce/conv/pool stage whose temporary it alone reads
    (stages come with their tiles; a folded stage keeps the producer's)."""
    stages = [s for s, _ in scheduled]
    tiles = [t for _, t in scheduled]
    for i, stage in enumerate(stages):
        if stage is None or getattr(stage, "epilogue", False) is not None or buffers[stage.out].role != "temp":
            continue
        readers = [j for j, s in enumerate(stages) if s is not None and stage.out in {a.buffer for a in s.reads()}]
        if len(readers) != 1 or not isinstance(stages[readers[0]], MapStage):
            continue
        user = stages[readers[0]]
        temp = buffers[stage.out]
        whole = Access(temp.name, 0, contiguous(temp.shape))
        reads_temp = [r for r in user.body.reads if r.buffer == temp.name]
        if buffers[user.out].shape != temp.shape or any(r != whole for r in reads_temp):
            continue
        stages[readers[0]] = attrs.evolve(stage, out=user.out, epilogue=_with_acc(user.body, whole))
        tiles[readers[0]] = tiles[i]
        stages[i] = None
    return [(s, t) for s, t in zip(stages, tiles) if s is not None]


def _with_acc(b: Body, acc: Access) -> Body:
    """`b` with its reads of `acc` turned into `acc` nodes."""
    reads = [r for r in b.reads if r != acc]
    number = {i: reads.index(r) for i, r in enumerate(b.reads) if r != acc}
    nodes = []
    for node in b.nodes:
        if node.op == "arg":
            node = Node("acc", node.dtype) if b.reads[node.value] == acc else attrs.evolve(node, value=number[node.value])
        nodes.append(node)
    return Body(tuple(reads), b.indices, tuple(nodes))

