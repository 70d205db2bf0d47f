"""Running many stages in one native call: a step's stages without a Python hand-off between them.

Calling each stage from Python costs a few microseconds, and handing its range to a second
thread tens of microseconds: a decode step of a 30-layer model has some 800 stages, which
would spend more time in hand-offs than in the kernels. A `StageList` holds the stages of a
run of kernels as a table (function, argument array, extent, pieces); the runner, one native
function, walks the table on every thread of the run at once. Each stage's range is cut into
pieces (as `Parallel.run` cuts it) that the threads claim with an atomic counter; a thread
that has no piece left waits (spinning, then yielding its core) until every piece of the
stage is done, then goes on to the next stage. No thread waits for another to arrive, only
for pieces claimed and running, so a thread whose core is busy elsewhere just takes fewer.
Stages compute the same bits whatever their pieces (each stage's code guarantees it), so
the results do not depend on the number of threads.

A stage returning a nonzero status stops the run after that stage; `run` returns the status and
the stage's index. With `times`, the thread finishing each stage's last piece records when
(CLOCK_MONOTONIC nanoseconds).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Sequence

import attrs
import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

from runtime.jit.codegen import I32, I64, VOIDP, i64
from runtime.jit.codegen import loop as counted_loop
from runtime.jit.engine import NativeLibrary, compile_ir
from runtime.jit.parallel import MIN_PARALLEL_WORK, KernelFn, Parallel

#: int64 fields per stage of the table: function, argument array, extent, pieces
FIELDS = 4
#: int64 slots of the run's state per stage (its claim and done counters, one cache line)
LINE = 8
#: pause instructions a waiting thread spins for before it yields its core
SPINS = 256
_NAME = "rduflow.step"
_STAGE_FN = ir.FunctionType(I32, [VOIDP, I64, I64])


@attrs.frozen
class Stage:
    """One stage to run: its native function, its argument array, extent, work and pieces per thread."""

    fn: object
    args: ctypes.Array
    extent: int
    work: int
    pieces: int


def pieces(stage: Stage, threads: int) -> int:
    """How many pieces the stage's range is cut into (as `Parallel.run` cuts it); at least one call."""
    parts = min(threads, stage.extent) if stage.work >= MIN_PARALLEL_WORK else 1
    return 1 if parts <= 1 else min(parts * stage.pieces, stage.extent)


class StageList:
    """A table of stages and the runner that runs them in order on `parallel`'s threads."""

    def __init__(self, stages: Sequence[Stage], parallel: Parallel):
        self.parallel = parallel
        self.stages = tuple(stages)
        self.table = np.array([[ctypes.cast(s.fn, ctypes.c_void_p).value, ctypes.addressof(s.args), s.extent,
                                pieces(s, parallel.threads)] for s in self.stages], np.int64).reshape(-1, FIELDS)
        self.state = np.zeros((len(self.stages) + 1) * LINE, np.int64)
        self.times = np.zeros(len(self.stages), np.int64)
        self._context = (ctypes.c_int64 * 4)(self.table.ctypes.data, len(self.stages), self.state.ctypes.data, 0)

    def run(self, timed: bool = False) -> tuple[int, int]:
        """Every stage once; (status, index of the stage that failed) or (0, -1). With `timed`,
        `times[i]` is when stage i finished."""
        self.state.fill(0)
        self._context[3] = self.times.ctypes.data if timed else 0
        self.parallel.run(runner(), self._context, self.parallel.threads, MIN_PARALLEL_WORK, 1)
        status = int(self.state[0])
        return (status, int(self.state[1])) if status else (0, -1)


def runner() -> KernelFn:
    """The native runner: runner(context, lo, hi) walks the table hi - lo times (one per thread's share
    of `Parallel.run`'s range; a thread given two walks the second with nothing left to claim)."""
    return _loaded()[0]


@functools.cache
def _loaded() -> tuple[KernelFn, NativeLibrary]:
    """The runner and the library holding its code (compiled once per process)."""
    library = NativeLibrary()
    library.add_object(compile_ir(str(_module())))
    return KernelFn(library.address(_NAME)), library


def _module() -> ir.Module:
    module = ir.Module(name="rduflow_step")
    module.triple = llvm.get_process_triple()
    fn = ir.Function(module, ir.FunctionType(I32, [VOIDP.as_pointer(), I64, I64]), _NAME)
    context, lo, hi = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fields = [b.load(b.gep(context, [i64(i)])) for i in range(4)]
    table, state, times = (b.bitcast(fields[i], I64.as_pointer()) for i in (0, 2, 3))
    count = b.ptrtoint(fields[1], I64)
    with counted_loop(b, lo, hi, name="role"):
        _walk(b, table, count, state, times)
    b.ret(ir.Constant(I32, 0))
    return module


def _walk(b: ir.IRBuilder, table, count, state, times) -> None:
    """Each stage in turn: claim and run pieces, wait for the stage to finish, stop after a failure."""
    status_slot = b.gep(state, [i64(0)])
    stop = b.append_basic_block("stop")
    with counted_loop(b, 0, count, name="stage") as s:
        record = [b.load(b.gep(table, [b.add(b.mul(s, i64(FIELDS)), i64(f))])) for f in range(FIELDS)]
        fn = b.inttoptr(record[0], _STAGE_FN.as_pointer())
        args, extent, parts = b.inttoptr(record[1], VOIDP), record[2], record[3]
        claim = b.gep(state, [b.mul(b.add(s, i64(1)), i64(LINE))])
        done = b.gep(claim, [i64(1)])
        _run_pieces(b, fn, args, extent, parts, claim, done, status_slot, state, s, times)
        _wait(b, done, parts)
        next_stage = b.append_basic_block("stage.next")
        b.cbranch(b.icmp_signed("!=", b.load_atomic(status_slot, "acquire", 8), i64(0)), stop, next_stage)
        b.position_at_end(next_stage)
    after = b.append_basic_block("walked")
    b.branch(after)
    b.position_at_end(stop)
    b.branch(after)
    b.position_at_end(after)


def _run_pieces(b: ir.IRBuilder, fn, args, extent, parts, claim, done, status_slot, state, s, times) -> None:
    """Claim pieces of the stage until none is left; run each, record a failure, count it done;
    the thread finishing the stage's last piece records the time (if `times`)."""
    head = b.append_basic_block("piece.head")
    body = b.append_basic_block("piece.body")
    out = b.append_basic_block("piece.out")
    b.branch(head)
    b.position_at_end(head)
    piece = b.atomic_rmw("add", claim, i64(1), "monotonic")
    b.cbranch(b.icmp_signed("<", piece, parts), body, out)
    b.position_at_end(body)
    start = b.udiv(b.mul(extent, piece), parts)
    end = b.udiv(b.mul(extent, b.add(piece, i64(1))), parts)
    status = b.call(fn, [args, start, end])
    with b.if_then(b.icmp_unsigned("!=", status, ir.Constant(I32, 0))):
        pair = b.cmpxchg(status_slot, i64(0), b.sext(status, I64), "acq_rel", "monotonic")
        with b.if_then(b.extract_value(pair, 1)):
            b.store(s, b.gep(state, [i64(1)]))
    before = b.atomic_rmw("add", done, i64(1), "acq_rel")
    last = b.icmp_signed("==", b.add(before, i64(1)), parts)
    with b.if_then(b.and_(last, b.icmp_unsigned("!=", b.ptrtoint(times, I64), i64(0)))):
        b.store(_now(b), b.gep(times, [s]))
    b.branch(head)
    b.position_at_end(out)


def _wait(b: ir.IRBuilder, done, parts) -> None:
    """Until `done` reaches `parts`: spin with pause, yielding the core every SPINS turns."""
    module = b.module
    pause = _pause(module)
    sched_yield = module.globals.get("sched_yield") or ir.Function(module, ir.FunctionType(I32, []), "sched_yield")
    head = b.append_basic_block("wait.head")
    body = b.append_basic_block("wait.body")
    out = b.append_basic_block("wait.out")
    pre = b.block
    b.branch(head)
    b.position_at_end(head)
    turns = b.phi(I64, "turns")
    turns.add_incoming(i64(0), pre)
    b.cbranch(b.icmp_signed(">=", b.load_atomic(done, "acquire", 8), parts), out, body)
    b.position_at_end(body)
    if pause is not None:
        b.call(pause, [])
    later = b.add(turns, i64(1))
    with b.if_then(b.icmp_unsigned("==", b.urem(later, i64(SPINS)), i64(0))):
        b.call(sched_yield, [])
    turns.add_incoming(later, b.block)
    b.branch(head)
    b.position_at_end(out)


def _pause(module: ir.Module) -> ir.Function | None:
    """x86's spin-wait hint (None elsewhere)."""
    if not module.triple.startswith(("x86_64", "i686", "i386")):
        return None
    return module.declare_intrinsic("llvm.x86.sse2.pause", (), ir.FunctionType(ir.VoidType(), []))


def _now(b: ir.IRBuilder) -> ir.Value:
    """CLOCK_MONOTONIC in nanoseconds."""
    timespec = ir.LiteralStructType([I64, I64])
    module = b.module
    clock = module.globals.get("clock_gettime") or ir.Function(
        module, ir.FunctionType(I32, [I32, timespec.as_pointer()]), "clock_gettime")
    with b.goto_entry_block():
        spec = b.alloca(timespec)
    b.call(clock, [ir.Constant(I32, 1), spec])
    seconds = b.load(b.gep(spec, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
    nanos = b.load(b.gep(spec, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
    return b.add(b.mul(seconds, i64(1_000_000_000)), nanos)
