"""Running a stage's parallel range on the host's cores.

A kernel function takes `[lo, hi)` of its parallel extent; the range is cut into pieces
that the calling thread and a `Team` of native threads (runtime/jit/team.py) take on
demand, with hand-offs of microseconds (the team spins a little after each job, then
parks). Stages with little work run on the calling thread alone.
`RDUFLOW_NUM_THREADS` (a positive integer) overrides the count.
"""
from __future__ import annotations

import ctypes
import os
import threading

from ir.errors import ConfigError
from runtime.jit.team import Team

#: below this many element operations a stage runs on the calling thread
MIN_PARALLEL_WORK = 1 << 17

KernelFn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)

_teams: dict[int, Team] = {}
_lock = threading.Lock()
os.register_at_fork(after_in_child=_teams.clear)  # a child has none of the parent's threads


def default_threads() -> int:
    """`RDUFLOW_NUM_THREADS` when set (a ConfigError unless a positive integer), else the usable cores (at most 8)."""
    env = os.environ.get("RDUFLOW_NUM_THREADS", "")
    if env.strip():
        if not env.strip().isdecimal() or int(env) < 1:
            raise ConfigError(f"RDUFLOW_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _team(helpers: int) -> Team:
    """The process's team of `helpers` threads (shared by every Parallel of that size)."""
    with _lock:
        if helpers not in _teams:
            _teams[helpers] = Team(helpers)
        return _teams[helpers]


class Parallel:
    """Splits kernel calls across `threads` threads (the caller plus a shared team)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()

    def run(self, fn, args, extent: int, work: int, pieces: int = 1) -> int:
        """Call `fn(args, lo, hi)` over [0, extent); the first nonzero status, or 0.

        The range is cut into `pieces` per thread, which the threads take on demand, so
        a thread whose core is busy elsewhere does less (never more than one piece late)."""
        parts = min(self.threads, extent) if work >= MIN_PARALLEL_WORK else 1
        if parts <= 1:
            return fn(args, 0, extent)
        return _team(self.threads - 1).run(fn, args, extent, min(parts * pieces, extent))
