"""The native thread team behind `Parallel`: every piece of every job runs exactly once, on
team threads that are spinning, parked or absent (after a fork), from one or several
calling threads, and a kernel's nonzero status comes back."""
from __future__ import annotations

import ctypes
import os
import threading
import time

import llvmlite.ir as ir
import numpy as np
import pytest

from runtime.jit.engine import NativeLibrary, compile_ir
from runtime.jit.parallel import KernelFn, Parallel
from runtime.jit.team import Team

I32, I64 = ir.IntType(32), ir.IntType(64)


@pytest.fixture(scope="module")
def count_kernel() -> KernelFn:
    """fn(args, lo, hi): counts[i] += 1 for i in [lo, hi) (args[0] = counts, int64), status 0;
    where args[1] is not null, it returns 7 for a range holding index args[1]'s value; where
    args[2] is not null, it first sleeps that many microseconds (a range starting at 0, a
    sixteenth of them)."""
    module = ir.Module("count")
    voidp = ir.IntType(8).as_pointer()
    fn = ir.Function(module, ir.FunctionType(I32, [voidp, I64, I64]), "count")
    b = ir.IRBuilder(fn.append_basic_block())
    args, lo, hi = fn.args
    slots = b.bitcast(args, I64.as_pointer().as_pointer())
    counts, failing = b.load(slots), b.load(b.gep(slots, [ir.Constant(I64, 1)]))
    nap = b.ptrtoint(b.load(b.gep(slots, [ir.Constant(I64, 2)])), I64)
    usleep = ir.Function(module, ir.FunctionType(I32, [I32]), "usleep")
    with b.if_then(b.icmp_unsigned("!=", nap, ir.Constant(I64, 0))):
        first = b.icmp_signed("==", lo, ir.Constant(I64, 0))
        b.call(usleep, [b.trunc(b.select(first, b.lshr(nap, ir.Constant(I64, 4)), nap), I32)])
    entry, body, done = b.block, fn.append_basic_block("body"), fn.append_basic_block("done")
    b.cbranch(b.icmp_signed("<", lo, hi), body, done)
    b.position_at_end(body)
    i = b.phi(I64)
    i.add_incoming(lo, entry)
    slot = b.gep(counts, [i])
    b.atomic_rmw("add", slot, ir.Constant(I64, 1), "monotonic")
    step = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(step, body)
    b.cbranch(b.icmp_signed("<", step, hi), body, done)
    b.position_at_end(done)
    has_failing = b.icmp_unsigned("!=", b.ptrtoint(failing, I64), ir.Constant(I64, 0))
    bad = b.load(b.select(has_failing, failing, b.alloca(I64)))
    hit = b.and_(has_failing, b.and_(b.icmp_signed("<=", lo, bad), b.icmp_signed("<", bad, hi)))
    b.ret(b.select(hit, ir.Constant(I32, 7), ir.Constant(I32, 0)))
    library = NativeLibrary()
    library.add_object(compile_ir(str(module)))
    count_kernel.library = library  # keep the code alive
    return KernelFn(library.address("count"))


def _args(counts: np.ndarray, failing: np.ndarray | None = None, nap_us: int | None = None):
    return (ctypes.c_void_p * 3)(counts.ctypes.data, failing.ctypes.data if failing is not None else None, nap_us)


@pytest.mark.parametrize("helpers", [1, 3])
def test_every_piece_of_every_job_runs_once(count_kernel, helpers):
    team = Team(helpers)
    for job, (extent, count) in enumerate([(1, 1), (2, 2), (7, 3), (100, 8), (1000, 1000), (3, 3)] * 20):
        counts = np.zeros(extent, np.int64)
        assert team.run(count_kernel, _args(counts), extent, count) == 0
        np.testing.assert_array_equal(counts, np.ones(extent, np.int64), err_msg=f"job {job}")


def test_jobs_after_the_team_parked(count_kernel):
    """Past its spin a team thread sleeps on a condition; the next job wakes it (or runs without it)."""
    team = Team(1)
    for _ in range(5):
        time.sleep(0.02)
        counts = np.zeros(64, np.int64)
        assert team.run(count_kernel, _args(counts), 64, 4) == 0
        np.testing.assert_array_equal(counts, np.ones(64, np.int64))


def test_a_caller_sleeps_through_long_pieces_of_others(count_kernel):
    """A piece of milliseconds on the team's thread outlasts the caller's spin: the caller
    sleeps until it is done."""
    team = Team(1)
    for _ in range(5):
        counts = np.zeros(2, np.int64)
        assert team.run(count_kernel, _args(counts), 2, 2) == 0  # the team thread is awake
        counts[:] = 0
        assert team.run(count_kernel, _args(counts, nap_us=3000), 2, 2) == 0
        np.testing.assert_array_equal(counts, np.ones(2, np.int64))


def test_a_nonzero_status_comes_back(count_kernel):
    team = Team(1)
    failing = np.array([37], np.int64)
    counts = np.zeros(100, np.int64)
    assert team.run(count_kernel, _args(counts, failing), 100, 10) == 7
    np.testing.assert_array_equal(counts, np.ones(100, np.int64))  # the other pieces still ran
    counts[:] = 0
    assert team.run(count_kernel, _args(counts), 100, 10) == 0  # and the next job starts clean


def test_callers_on_several_threads_share_a_team(count_kernel):
    parallel = Parallel(2)
    results, failures = {}, []

    def caller(index: int) -> None:
        for _ in range(50):
            counts = np.zeros(500, np.int64)
            status = parallel.run(count_kernel, _args(counts), 500, 1 << 20, pieces=4)
            if status or not (counts == 1).all():
                failures.append((index, status, counts.copy()))
        results[index] = True

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and not failures


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_jobs(count_kernel):
    """A child has none of its parent's team threads: it makes a team of its own."""
    parallel = Parallel(2)
    counts = np.zeros(256, np.int64)
    assert parallel.run(count_kernel, _args(counts), 256, 1 << 20) == 0
    pid = os.fork()
    if pid == 0:
        counts[:] = 0
        ok = parallel.run(count_kernel, _args(counts), 256, 1 << 20, pieces=4) == 0 and (counts == 1).all()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_small_work_runs_on_the_calling_thread(count_kernel):
    counts = np.zeros(10, np.int64)
    seen = []
    assert Parallel(2).run(lambda args, lo, hi: seen.append((lo, hi)) or 0, None, 10, 100) == 0
    assert seen == [(0, 10)]
    assert Parallel(2).run(count_kernel, _args(counts), 10, 100) == 0
    np.testing.assert_array_equal(counts, np.ones(10, np.int64))
