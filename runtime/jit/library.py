"""Kernel programs compiled (or fetched from the disk cache) and loaded as callable stages."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import attrs

from backend.pef.program import KernelProgram
from runtime.jit.cache import DiskCache
from runtime.jit.engine import NativeLibrary
from runtime.jit.host import Tile
from runtime.jit.kernel import StagePlan, checked_mode, code_key, lower_program, optimization_level
from runtime.jit.module import Aliasing
from runtime.jit.parallel import KernelFn, default_threads


@attrs.frozen
class NativeStage:
    plan: StagePlan
    fn: object  # a ctypes function: fn(void **args, i64 lo, i64 hi) -> i32 status


@attrs.frozen
class NativeKernel:
    """A kernel program's native code: one callable per stage (it keeps its library loaded)."""

    key: str
    stages: tuple[NativeStage, ...]
    library: NativeLibrary = attrs.field(eq=False, repr=False)


@attrs.define
class JitStats:
    """What loading cost: kernels compiled, found in the disk cache, or shared with an identical one."""

    compiled: int = 0
    cached: int = 0
    shared: int = 0


def compile_program(key: str, program: KernelProgram, aliasing: Aliasing | None = None,
                    checked: bool = False, tile: Tile | None = None) -> tuple[bytes, list[StagePlan]]:
    """Object code and stage plans of one kernel program (`checked`: with bounds checks; its
    gemms shaped by `tile`, default the host's)."""
    module, plans = lower_program(program, key, aliasing, checked, tile)
    return module.compile(optimization_level(plans)), plans


class Jit:
    """Compiles kernel programs into one native library, through a disk cache; gemms take
    `tile`'s shape (default: the host's; another shape still runs here, as tests force)."""

    def __init__(self, cache: DiskCache | None = None, use_cache: bool = True, threads: int | None = None,
                 checked: bool | None = None, tile: Tile | None = None):
        """`checked` (default: RDUFLOW_JIT_CHECKED): compile a bounds check into every load and store."""
        self.checked = checked_mode() if checked is None else checked
        self.cache = (cache or DiskCache()) if use_cache else None
        self.tile = tile
        self.threads = threads or default_threads()
        self.library = NativeLibrary()
        self.kernels: dict[str, NativeKernel] = {}
        self.stats = JitStats()

    def load(self, programs: Sequence[KernelProgram],
             aliasing: Sequence[Aliasing | None] | None = None) -> list[NativeKernel]:
        """Native code for every program (identical programs share one unit).

        `aliasing[k]` says which buffers of program k share memory (default: none do)."""
        flags = list(aliasing) if aliasing is not None else [None] * len(programs)
        keys = [code_key(p, f, self.checked, self.tile) for p, f in zip(programs, flags)]
        todo: dict[str, tuple[KernelProgram, Aliasing | None]] = {}
        for key, program, f in zip(keys, programs, flags):
            if key in self.kernels or key in todo:
                self.stats.shared += 1
            else:
                todo[key] = (program, f)
        entries = {key: self.cache.get(key) if self.cache is not None else None for key in todo}
        self._compile({k: v for k, v in todo.items() if entries[k] is None}, entries)
        for key in todo:
            obj, plans = entries[key]
            self.library.add_object(obj)
            self.kernels[key] = NativeKernel(key, tuple(
                NativeStage(p, KernelFn(self.library.address(p.symbol))) for p in plans), self.library)
        return [self.kernels[k] for k in keys]

    def _compile(self, programs: dict[str, tuple], entries: dict) -> None:
        """Compile programs on all threads (LLVM releases the GIL); store them in the cache."""
        self.stats.cached += len(entries) - len(programs)
        if not programs:
            return
        with ThreadPoolExecutor(min(self.threads, len(programs))) as pool:
            checked, tiles = [self.checked] * len(programs), [self.tile] * len(programs)
            results = pool.map(compile_program, programs.keys(), *zip(*programs.values()), checked, tiles)
            for key, (obj, plans) in zip(programs, results):
                entries[key] = (obj, plans)
                if self.cache is not None:
                    self.cache.put(key, obj, plans)
        if self.cache is not None:
            self.cache.prune()
        self.stats.compiled += len(programs)
