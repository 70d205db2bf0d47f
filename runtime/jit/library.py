"""Kernel programs compiled (or fetched from the disk cache) and loaded as callable stages."""
from __future__ import annotations

import time
from typing import Sequence

import attrs

from backend import kernel_program as kp
from runtime.jit.cache import DiskCache
from runtime.jit.engine import NativeLibrary
from runtime.jit.kernel import StagePlan, code_key, lower_program
from runtime.jit.parallel import KernelFn


@attrs.frozen
class NativeStage:
    plan: StagePlan
    fn: object  # a ctypes function: fn(void **args, i64 lo, i64 hi) -> i32 status


@attrs.frozen
class NativeKernel:
    """A kernel program's native code: one callable per stage."""

    key: str
    stages: tuple[NativeStage, ...]


@attrs.define
class JitStats:
    compiled: int = 0
    cached: int = 0
    shared: int = 0
    compile_seconds: float = 0.0
    load_seconds: float = 0.0


class Jit:
    """Compiles kernel programs into one native library, through a disk cache."""

    def __init__(self, cache: DiskCache | None = None, use_cache: bool = True):
        self.cache = (cache or DiskCache()) if use_cache else None
        self.library = NativeLibrary()
        self.kernels: dict[str, NativeKernel] = {}
        self.stats = JitStats()

    def load(self, programs: Sequence[kp.KernelProgram]) -> list[NativeKernel]:
        """Native code for every program (identical programs share one unit)."""
        keys = [code_key(p) for p in programs]
        pending: dict[str, list[StagePlan]] = {}
        for key, program in zip(keys, programs):
            if key in self.kernels or key in pending:
                self.stats.shared += 1
                continue
            pending[key] = self._object(key, program)
        start = time.perf_counter()
        for key, plans in pending.items():
            self.kernels[key] = NativeKernel(key, tuple(
                NativeStage(p, KernelFn(self.library.address(p.symbol))) for p in plans))
        self.stats.load_seconds += time.perf_counter() - start
        return [self.kernels[k] for k in keys]

    def _object(self, key: str, program: kp.KernelProgram) -> list[StagePlan]:
        """Add the program's object code to the library (from the cache or compiled)."""
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is not None:
            self.stats.cached += 1
            obj, plans = entry
        else:
            start = time.perf_counter()
            module, plans = lower_program(program, key)
            obj = module.compile()
            self.stats.compile_seconds += time.perf_counter() - start
            self.stats.compiled += 1
            if self.cache is not None:
                self.cache.put(key, obj, plans)
        start = time.perf_counter()
        self.library.add_object(obj)
        self.stats.load_seconds += time.perf_counter() - start
        return plans
