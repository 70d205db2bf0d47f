"""Running a stage's parallel range on the host's cores.

A kernel function takes `[lo, hi)` of its parallel extent; ctypes releases the GIL
during the call, so splitting the range between the calling thread and pool
threads runs the pieces at once. Stages with little work run on one thread (a
hand-off costs tens of microseconds). `RDUFLOW_NUM_THREADS` (a positive integer) overrides the count.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ir.errors import ConfigError

#: below this many element operations a stage runs on the calling thread
MIN_PARALLEL_WORK = 1 << 17

KernelFn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def default_threads() -> int:
    """`RDUFLOW_NUM_THREADS` when set (a ConfigError unless a positive integer), else the usable cores (at most 8)."""
    env = os.environ.get("RDUFLOW_NUM_THREADS", "")
    if env.strip():
        if not env.strip().isdecimal() or int(env) < 1:
            raise ConfigError(f"RDUFLOW_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of `workers` threads (shared by every Parallel of that size)."""
    with _lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="rduflow")
        return _pools[workers]


class Parallel:
    """Splits kernel calls across `threads` threads (the caller plus a shared pool)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        self._pool = _pool(self.threads - 1) if self.threads > 1 else None

    def run(self, fn, args, extent: int, work: int, pieces: int = 1) -> int:
        """Call `fn(args, lo, hi)` over [0, extent); the first nonzero status, or 0.

        The range is cut into `pieces` per thread, which the threads take on demand, so
        a thread whose core is busy elsewhere does less (never more than one piece late)."""
        parts = min(self.threads, extent) if work >= MIN_PARALLEL_WORK else 1
        if parts <= 1 or self._pool is None:
            return fn(args, 0, extent)
        count = min(parts * pieces, extent)
        bounds = [extent * i // count for i in range(count + 1)]
        taken = itertools.count()  # next() is atomic under the GIL

        def worker() -> int:
            status = 0
            while (i := next(taken)) < count:
                status = fn(args, bounds[i], bounds[i + 1]) or status
            return status

        futures = [self._pool.submit(worker) for _ in range(parts - 1)]
        statuses = [worker()] + [f.result() for f in futures]
        return next((s for s in statuses if s), 0)
