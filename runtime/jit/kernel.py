"""Kernel programs to native-code units: stage lowering, code keys.

A kernel program lowers to one LLVM module with one exported function per stage.
The generated code depends only on the program's shapes, dtypes, strides and
bodies, not on buffer names or arena offsets (pointers are passed at run time), so
its `code_key` ignores those: identical layers of a model share one native unit.
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable

import attrs
import msgpack

from backend.pef import stages
from backend.pef.program import KernelProgram
from runtime.jit.concat import lower_concat, lower_literal
from runtime.jit.conv import lower_conv2d, lower_conv2d_input_grad, lower_conv2d_weight_grad
from runtime.jit.dynamic import lower_dynamic_slice, lower_update_slice
from runtime.jit.engine import host_signature
from runtime.jit.gather import lower_gather, lower_scatter_add
from runtime.jit.gemm import lower_gemm
from runtime.jit.host import Tile, host_tile
from runtime.jit.map import lower_map, lower_maps, runs
from runtime.jit.module import Aliasing, KernelModule
from runtime.jit.pad import lower_pad
from runtime.jit.pool import lower_pool2d, lower_pool2d_grad
from runtime.jit.reduce import lower_reduce

@attrs.frozen
class Lowering:
    """How the JIT runs one stage kind: `lower(km, function name, stage) -> parallel extent`;
    `packs`: every piece of its range packs its own operand panels (so it is cut into few pieces)."""

    lower: Callable[[KernelModule, str, Any], int]
    packs: bool = False


#: stage declaration -> its native lowering (stages the declaration marks `on_host` run in the executor)
LOWERINGS: dict[type[stages.StageKind], Lowering] = {
    stages.MapStage: Lowering(lower_map), stages.ReduceStage: Lowering(lower_reduce),
    stages.GemmStage: Lowering(lower_gemm, packs=True), stages.Conv2dStage: Lowering(lower_conv2d, packs=True),
    stages.Pool2dStage: Lowering(lower_pool2d), stages.GatherStage: Lowering(lower_gather),
    stages.ScatterAddStage: Lowering(lower_scatter_add), stages.ConcatStage: Lowering(lower_concat),
    stages.LiteralStage: Lowering(lower_literal), stages.PadStage: Lowering(lower_pad),
    stages.Conv2dInputGradStage: Lowering(lower_conv2d_input_grad, packs=True),
    stages.Conv2dWeightGradStage: Lowering(lower_conv2d_weight_grad, packs=True),
    stages.Pool2dGradStage: Lowering(lower_pool2d_grad), stages.DynamicSliceStage: Lowering(lower_dynamic_slice),
    stages.UpdateSliceStage: Lowering(lower_update_slice),
}
#: pieces per thread of stages that do not pack, handed out on demand (a busy core takes fewer)
PIECES = 4


@attrs.frozen
class StagePlan:
    """One compiled stage: its symbol, parallel extent, a rough count of work, and how many
    pieces per thread its range may be cut into (1 where each piece repeats costly setup)."""

    symbol: str
    extent: int
    work: int
    pieces: int = 1


@functools.cache
def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls))


def _plain(value: Any, numbers: dict[str, int], key: str = "") -> Any:
    """A record as nested lists, buffer names (the `buffer` and `out` fields) as numbers."""
    if attrs.has(type(value)):
        return [getattr(type(value), "kind", type(value).__name__),
                *(_plain(getattr(value, f), numbers, f) for f in _fields(type(value)))]
    if isinstance(value, tuple):
        return [_plain(v, numbers, key) for v in value]
    if key in ("buffer", "out") and isinstance(value, str):
        return numbers[value]
    return value


def _anonymous(program: KernelProgram) -> list:
    """The program's code-relevant content: buffer names replaced by numbers, no offsets."""
    numbers = {b.name: i for i, b in enumerate(program.buffers)}
    buffers = [[b.role, list(b.shape), b.dtype, list(b.strides)] for b in program.buffers]
    return [buffers, _plain(program.stages, numbers)]


def checked_mode() -> bool:
    """Whether kernels are compiled with a bounds check on every load and store (RDUFLOW_JIT_CHECKED=1)."""
    return os.environ.get("RDUFLOW_JIT_CHECKED", "").strip() not in ("", "0")


def code_key(program: KernelProgram, aliasing: Aliasing | None = None, checked: bool = False,
             tile: Tile | None = None) -> str:
    """A hash of everything the native code depends on (program content, aliasing, checks, gemm tile, host)."""
    shared = None if aliasing in (None, Aliasing.disjoint(len(program.buffers))) else attrs.astuple(aliasing)
    extra = ["checked"] if checked else []
    shape = list(attrs.astuple(tile or host_tile()))
    data = msgpack.packb([_anonymous(program), shared, host_signature(), *extra, shape], use_bin_type=True)
    return hashlib.sha256(data).hexdigest()[:32]


#: kernels doing at least this much work (element operations) compile at O3, else at O1 ...
QUICK_WORK = 1 << 14
#: ... and below this, at O0: they run in microseconds whatever the code
TINY_WORK = 1 << 10


def optimization_level(plans: list[StagePlan]) -> int:
    """The level a kernel is compiled at: O3 where run time matters, lower where compile time does."""
    work = sum(p.work for p in plans)
    return 3 if work >= QUICK_WORK else 1 if work >= TINY_WORK else 0


def lower_program(program: KernelProgram, key: str, aliasing: Aliasing | None = None,
                  checked: bool = False, tile: Tile | None = None) -> tuple[KernelModule, list[StagePlan]]:
    """The LLVM module of a kernel program and the plan of each stage.

    `aliasing` (default: no buffer shares memory) says which buffers do; `checked`
    bounds-checks every load and store; gemms use `tile` (default: the host's)."""
    km = KernelModule(program.buffers, aliasing, checked, tile)
    buffers = {b.name: b for b in program.buffers}
    plans = []
    for i, run in enumerate(runs(km, program.stages)):
        symbol = f"rdu_{key}_s{i}"
        lowering = LOWERINGS[type(run[0])]
        extent = lowering.lower(km, symbol, run[0]) if len(run) == 1 else lower_maps(km, symbol, run)
        plans.append(StagePlan(symbol, extent, sum(stage.work(buffers) for stage in run),
                               1 if lowering.packs else PIECES))
    return km, plans
