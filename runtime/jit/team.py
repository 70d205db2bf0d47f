"""A team of native threads that split a kernel's range, with hand-offs in microseconds.

A job is a kernel function, its arguments and `[0, extent)` cut into `count` pieces.
The calling thread publishes it in a shared block of words; the team's threads, spinning
natively (the GIL released) for a little while after each job, see it at once, and every
thread (the caller too) takes pieces through one atomic ticket until none is left. The
caller then waits for the pieces taken by others. A thread that stays idle past the spin
parks on a pthread condition that a publishing caller signals, so an idle team costs no CPU;
a caller waiting long for others' pieces sleeps too (its core may be what they wait for).
The team's threads never return to Python: they never wait for the GIL.

The ticket holds the job's generation in its high 32 bits and the next piece in the low
ones: a thread still looking at an old job can never take a piece of a newer one. Since
the caller takes pieces too, a job finishes even when no team thread wakes for it.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir

from runtime.jit.codegen import I32, I64, VOIDP
from runtime.jit.engine import NativeLibrary, compile_ir

#: the shared block's words
TICKET, FN, ARGS, EXTENT, COUNT, FINISHED, STATUS, PARKED, WAITING, MUTEX, CONDITION, DONE, WORDS = range(13)
#: bytes set aside for a pthread mutex or condition (more than any libc's)
PTHREAD_BYTES = 128
#: polls of an idle team thread, or of the caller waiting for others' pieces, before it sleeps
#: (some tens of microseconds with the CPU's pause hint: between the stages of a step,
#: not across idle time)
SPIN = 1 << 12
KERNEL = ir.FunctionType(I32, [VOIDP, I64, I64])


def _word(b: ir.IRBuilder, block: ir.Value, index: int) -> ir.Value:
    return b.gep(block, [ir.Constant(I64, index)])


def _relax(b: ir.IRBuilder) -> None:
    """The CPU's spin-wait hint (x86 `pause`; nothing elsewhere)."""
    if llvm.get_process_triple().startswith(("x86_64", "i686", "i386")):
        name = "llvm.x86.sse2.pause"
        pause = b.module.globals.get(name) or ir.Function(b.module, ir.FunctionType(ir.VoidType(), []), name)
        b.call(pause, [])


def _function(module: ir.Module, name: str, ret: ir.Type, params: list[ir.Type]) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(module, ir.FunctionType(ret, params), name)
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _declare(module: ir.Module, name: str, params: int) -> ir.Function:
    """A libc/pthread function taking `params` pointers, returning int."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(I32, [VOIDP] * params), name)


def _pthread(b: ir.IRBuilder, block: ir.Value, name: str, *words: int) -> None:
    """pthread_`name` on the mutex/condition whose addresses are in `words` of the block."""
    fn = _declare(b.module, f"pthread_{name}", len(words))
    b.call(fn, [b.inttoptr(b.load(_word(b, block, w)), VOIDP) for w in words])


def _signal(b: ir.IRBuilder, block: ir.Value, condition: int) -> None:
    """Wake every thread sleeping on `condition`."""
    _pthread(b, block, "mutex_lock", MUTEX)
    _pthread(b, block, "cond_broadcast", condition)
    _pthread(b, block, "mutex_unlock", MUTEX)


def _sleep_until(b: ir.IRBuilder, block: ir.Value, counter: int, condition: int, ready) -> None:
    """Sleep on `condition` until `ready(b)`, counted in word `counter` meanwhile. The count and
    the check are sequentially consistent, as are the other side's change and its look at the
    count (then its `_signal`): no wake-up is lost."""
    fn = b.function
    _pthread(b, block, "mutex_lock", MUTEX)
    b.atomic_rmw("add", _word(b, block, counter), ir.Constant(I64, 1), "seq_cst")
    check, sleep, awake = (fn.append_basic_block(n) for n in ("check", "sleep", "awake"))
    b.branch(check)
    b.position_at_end(check)
    b.cbranch(ready(b), awake, sleep)
    b.position_at_end(sleep)
    _pthread(b, block, "cond_wait", condition, MUTEX)
    b.branch(check)
    b.position_at_end(awake)
    b.atomic_rmw("sub", _word(b, block, counter), ir.Constant(I64, 1), "seq_cst")
    _pthread(b, block, "mutex_unlock", MUTEX)


def _generation(b: ir.IRBuilder, block: ir.Value, ordering: str = "acquire") -> ir.Value:
    return b.lshr(b.load_atomic(_word(b, block, TICKET), ordering, 8), ir.Constant(I64, 32))


def _emit_publish(module: ir.Module) -> ir.Function:
    """publish(block, fn, args, extent, count) -> generation: a new job, open to every thread
    (parked team threads woken)."""
    fn, b = _function(module, "team_publish", I64, [I64.as_pointer(), I64, I64, I64, I64])
    block, *fields = fn.args
    generation = b.add(_generation(b, block, "monotonic"), ir.Constant(I64, 1))
    for index, value in zip((FN, ARGS, EXTENT, COUNT), fields):
        b.store(value, _word(b, block, index))
    b.store(ir.Constant(I64, 0), _word(b, block, FINISHED))
    b.store(ir.Constant(I64, 0), _word(b, block, STATUS))
    # sequentially consistent, as is a parking thread's count-then-check (`_sleep_until`)
    b.store_atomic(b.shl(generation, ir.Constant(I64, 32)), _word(b, block, TICKET), "seq_cst", 8)
    parked = b.load_atomic(_word(b, block, PARKED), "seq_cst", 8)
    with b.if_then(b.icmp_unsigned("!=", parked, ir.Constant(I64, 0))):
        _signal(b, block, CONDITION)
    b.ret(generation)
    return fn


def _emit_work(module: ir.Module) -> ir.Function:
    """work(block, generation): run pieces of that job until none is left."""
    fn, b = _function(module, "team_work", ir.VoidType(), [I64.as_pointer(), I64])
    block, generation = fn.args
    take, done = fn.append_basic_block("take"), fn.append_basic_block("done")
    b.branch(take)
    b.position_at_end(take)
    ticket = b.load_atomic(_word(b, block, TICKET), "acquire", 8)
    piece = b.and_(ticket, ir.Constant(I64, 0xFFFFFFFF))
    count = b.load(_word(b, block, COUNT))
    open_ = b.and_(b.icmp_unsigned("==", b.lshr(ticket, ir.Constant(I64, 32)), generation),
                   b.icmp_unsigned("<", piece, count))
    claim = fn.append_basic_block("claim")
    b.cbranch(open_, claim, done)
    b.position_at_end(claim)
    won = b.extract_value(b.cmpxchg(_word(b, block, TICKET), ticket, b.add(ticket, ir.Constant(I64, 1)),
                                    "acq_rel", "acquire"), 1)
    run = fn.append_basic_block("run")
    b.cbranch(won, run, take)
    b.position_at_end(run)
    extent = b.load(_word(b, block, EXTENT))
    lo = b.udiv(b.mul(extent, piece), count)
    hi = b.udiv(b.mul(extent, b.add(piece, ir.Constant(I64, 1))), count)
    kernel = b.inttoptr(b.load(_word(b, block, FN)), KERNEL.as_pointer())
    status = b.sext(b.call(kernel, [b.inttoptr(b.load(_word(b, block, ARGS)), VOIDP), lo, hi]), I64)
    with b.if_then(b.icmp_signed("!=", status, ir.Constant(I64, 0))):
        b.cmpxchg(_word(b, block, STATUS), ir.Constant(I64, 0), status, "monotonic", "monotonic")
    finished = b.add(b.atomic_rmw("add", _word(b, block, FINISHED), ir.Constant(I64, 1), "seq_cst"), ir.Constant(I64, 1))
    waiting = b.load_atomic(_word(b, block, WAITING), "seq_cst", 8)
    last = b.icmp_unsigned("==", finished, count)
    with b.if_then(b.and_(last, b.icmp_unsigned("!=", waiting, ir.Constant(I64, 0)))):
        _signal(b, block, DONE)
    b.branch(take)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _spin_until(b: ir.IRBuilder, fn: ir.Function, ready, limit: int) -> ir.Value:
    """Poll `ready(b)` with the pause hint, at most `limit` times; whether it became true."""
    entry = b.block
    head, wait, out = (fn.append_basic_block(n) for n in ("poll", "wait", "out"))
    b.branch(head)
    b.position_at_end(head)
    polls = b.phi(I64)
    polls.add_incoming(ir.Constant(I64, 0), entry)
    is_ready = ready(b)
    b.cbranch(is_ready, out, wait)
    b.position_at_end(wait)
    _relax(b)
    more = b.add(polls, ir.Constant(I64, 1))
    polls.add_incoming(more, wait)
    b.cbranch(b.icmp_unsigned("<", more, ir.Constant(I64, limit)), head, out)
    b.position_at_end(out)
    result = b.phi(ir.IntType(1))
    result.add_incoming(is_ready, head)
    result.add_incoming(ir.Constant(ir.IntType(1), 0), wait)
    return result


def _emit_serve(module: ir.Module, work: ir.Function) -> None:
    """serve(block): a team thread's life: wait for each new job (spinning `SPIN` polls, then
    parked on the block's condition) and work on it."""
    fn, b = _function(module, "team_serve", ir.VoidType(), [I64.as_pointer()])
    (block,) = fn.args
    first = _generation(b, block)
    entry, job = b.block, fn.append_basic_block("job")
    b.branch(job)
    b.position_at_end(job)
    seen = b.phi(I64)
    seen.add_incoming(first, entry)
    found = _spin_until(b, fn, lambda b: b.icmp_unsigned("!=", _generation(b, block), seen), SPIN)
    with b.if_then(b.not_(found)):
        _sleep_until(b, block, PARKED, CONDITION,
                     lambda b: b.icmp_unsigned("!=", _generation(b, block, "seq_cst"), seen))
    generation = _generation(b, block)
    b.call(work, [block, generation])
    seen.add_incoming(generation, b.block)
    b.branch(job)


def _emit_finish(module: ir.Module, work: ir.Function) -> None:
    """finish(block, generation) -> status: take pieces, then wait for those others took
    (spinning `SPIN` polls, then asleep on the block's DONE condition)."""
    fn, b = _function(module, "team_finish", I32, [I64.as_pointer(), I64])
    block, generation = fn.args
    b.call(work, [block, generation])

    def finished(b: ir.IRBuilder) -> ir.Value:
        return b.icmp_unsigned("==", b.load_atomic(_word(b, block, FINISHED), "seq_cst", 8),
                               b.load(_word(b, block, COUNT)))

    with b.if_then(b.not_(_spin_until(b, fn, finished, SPIN))):
        _sleep_until(b, block, WAITING, DONE, finished)
    b.ret(b.trunc(b.load(_word(b, block, STATUS)), I32))


@functools.cache
def _native() -> tuple:
    """(library, its run(block, fn, args, extent, count) -> status, its serve(block), libc),
    compiled once per process."""
    module = ir.Module("team")
    work = _emit_work(module)
    publish = _emit_publish(module)
    _emit_finish(module, work)
    _emit_serve(module, work)
    fn, b = _function(module, "team_run", I32, [I64.as_pointer(), I64, I64, I64, I64])
    b.ret(b.call(module.globals["team_finish"], [fn.args[0], b.call(publish, fn.args)]))
    library = NativeLibrary()
    library.add_object(compile_ir(str(module), level=2))
    block = ctypes.POINTER(ctypes.c_int64)
    run = ctypes.CFUNCTYPE(ctypes.c_int32, block, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
    serve = ctypes.CFUNCTYPE(None, block)
    libc = ctypes.CDLL(None)
    return library, run(library.address("team_run")), serve(library.address("team_serve")), libc


class Team:
    """The calling thread plus `helpers` threads living in native code; one job at a time."""

    def __init__(self, helpers: int):
        _, self._run, serve, libc = _native()
        self._block = (ctypes.c_int64 * WORDS)()
        self._sync = [ctypes.create_string_buffer(PTHREAD_BYTES) for _ in range(3)]
        mutex, *conditions = self._sync
        if libc.pthread_mutex_init(mutex, None) or any(libc.pthread_cond_init(c, None) for c in conditions):
            raise OSError("could not initialize the thread team's mutex and conditions")
        self._block[MUTEX], self._block[CONDITION], self._block[DONE] = (ctypes.addressof(x) for x in self._sync)
        self._lock = threading.Lock()  # one job at a time
        for i in range(helpers):
            thread = threading.Thread(target=serve, args=(self._block,), name=f"rduflow-{i}", daemon=True)
            thread.synchronization = self._sync  # alive while the thread is, whatever becomes of the team
            thread.start()

    def run(self, fn, args, extent: int, count: int) -> int:
        """Call `fn(args, lo, hi)` over `count` pieces of [0, extent); the first nonzero status, or 0."""
        with self._lock:
            return self._run(self._block, ctypes.cast(fn, ctypes.c_void_p), args, extent, count)
