"""Executing a PEF's kernels on the host: arenas, bound kernels, the step loop.

Memory is one zero-filled numpy byte array per arena of the memory plan; every
tensor is a fixed byte range in its arena, so each kernel's argument array (the
base pointers of its buffers) is built once at load time. Params and optimizer
state stay resident: a param and the tensor holding its update swap places after
each step (two argument arrays per kernel, one per parity), so a training step
copies nothing; an update that cannot swap (it is also an input, a param, or
updates two params) is copied instead. A step runs each stretch of native kernels as one
`StageList` (one native call, no hand-off between stages); a collective kernel (a stage its
declaration marks `on_host`) has no native code: it runs here, on the host, through the communicator.
"""
from __future__ import annotations

import ctypes
import math
import time
from typing import Sequence

import attrs
import numpy as np

from backend.pef.file import PEF
from backend.pef.memory_plan import Allocation, temp_symbol
from backend.pef.program import KernelProgram
from backend.pef.records import Buffer
from ir.dtypes import DType
from ir.errors import ExecutionError, display_location
from runtime.jit.codegen import ERRORS
from runtime.jit.library import Jit, NativeKernel
from runtime.jit.module import Aliasing
from runtime.jit.parallel import Parallel
from runtime.jit.step import Stage, StageList


@attrs.define
class BoundKernel:
    """A kernel program with its native code and its argument arrays (per parity)."""

    index: int
    program: KernelProgram
    section: int
    native: NativeKernel | None  # None: a host stage (a collective)
    args: tuple[ctypes.Array, ctypes.Array]


def _tensor_of(program: KernelProgram, buffer: Buffer) -> str:
    return temp_symbol(program, buffer.name) if buffer.role == "temp" else buffer.name


def _overlap(a: Allocation, b: Allocation) -> bool:
    return a.arena == b.arena and a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes


def swap_pairs(pef: PEF) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Param tensor <-> update tensor pairs that trade places each step, and (param, update)
    pairs that must be copied instead. An update planned into its param's range is in place."""
    symbols = pef.symbols
    where = pef.memory.lookup()
    fixed = {s.tensor for s in (*symbols.inputs, *symbols.params)}
    tensor_of = {p.name: p.tensor for p in symbols.params}
    targets = [u.tensor for u in symbols.updates]
    swaps: dict[str, str] = {}
    copies: list[tuple[str, str]] = []
    for update in symbols.updates:
        param = tensor_of[update.param]
        if update.tensor == param or where[update.tensor] == attrs.evolve(where[param], tensor=update.tensor):
            continue
        if update.tensor in fixed or targets.count(update.tensor) > 1:
            copies.append((param, update.tensor))
        else:
            swaps[param], swaps[update.tensor] = update.tensor, param
    return swaps, copies


def shared_arenas(pef: PEF) -> dict[str, np.ndarray]:
    """Zero-filled arenas large enough for the main program and every entry point of `pef`."""
    sizes: dict[str, int] = {}
    for plan in (pef.memory, *(e.memory for e in pef.entries)):
        for arena in plan.arenas:
            sizes[arena.name] = max(sizes.get(arena.name, 0), arena.size)
    return {name: _arena(name, size) for name, size in sizes.items()}


def _arena(name: str, size: int) -> np.ndarray:
    """A zero-filled arena, or an ExecutionError saying the host cannot hold it."""
    try:
        return np.zeros(size, np.uint8)
    except MemoryError:
        raise ExecutionError(f"cannot allocate the {size}-byte memory arena '{name}' on this host") from None


def _on_host(program: KernelProgram) -> bool:
    return any(stage.on_host for stage in program.stages)


def _check_collectives(pef: PEF, communicator) -> None:
    """ExecutionError unless the communicator's group is the one every collective of `pef` was compiled for."""
    for program in pef.kernels:
        for stage in program.stages:
            if not stage.on_host:
                continue
            if communicator is None:
                raise ExecutionError(f"kernel '{program.name}' is a collective over {stage.world_size} replicas: "
                                     "the program needs a communicator (run the PEF under mpirun with "
                                     "--data-parallel)")
            if communicator.size != stage.world_size:
                raise ExecutionError(f"kernel '{program.name}' is a collective over {stage.world_size} replicas, "
                                     f"the communicator has {communicator.size} ranks")


class Executor:
    """A loaded PEF's memory and native kernels; `step()` runs every kernel once, in order.

    `arenas` (by name, at least as large as the plan's) lets entry points of one PEF share memory."""

    def __init__(self, pef: PEF, jit: Jit, parallel: Parallel, arenas: dict[str, np.ndarray] | None = None,
                 communicator=None):
        """`communicator` (`runtime.distributed.Communicator`) runs collectives; a PEF with one needs it."""
        self.pef = pef
        self.parallel = parallel
        self.communicator = communicator
        _check_collectives(pef, communicator)
        self.arenas = arenas if arenas is not None else {a.name: _arena(a.name, a.size) for a in pef.memory.arenas}
        self.where: dict[str, Allocation] = pef.memory.lookup()
        self.swaps, self.copies = swap_pairs(pef)
        self.parity = 0
        section_of = {k: s.index for s in pef.sections for k in s.kernels}
        native = [p for p in pef.kernels if not _on_host(p)]
        loaded = iter(jit.load(native, [self._aliasing(p) for p in native]))
        natives = [None if _on_host(p) else next(loaded) for p in pef.kernels]
        self.kernels = [BoundKernel(i, p, section_of[i], n, (self._args(p, 0), self._args(p, 1)))
                        for i, (p, n) in enumerate(zip(pef.kernels, natives))]
        self._runs: dict[tuple, list[BoundKernel | _Stretch]] = {}

    # --- memory -------------------------------------------------------------------------
    def location(self, tensor: str, parity: int | None = None) -> Allocation:
        """Where `tensor` lives now (params and their updates trade places each step)."""
        parity = self.parity if parity is None else parity
        if parity and tensor in self.swaps:
            tensor = self.swaps[tensor]
        return self.where[tensor]

    def address(self, tensor: str, parity: int | None = None) -> int:
        a = self.location(tensor, parity)
        return self.arenas[a.arena].ctypes.data + a.offset

    def view(self, tensor: str, shape: Sequence[int], dtype: DType) -> np.ndarray:
        """The tensor's current bytes as a writeable array (no copy)."""
        a = self.location(tensor)
        raw = self.arenas[a.arena][a.offset:a.offset + dtype.nbytes(math.prod(shape))]
        return raw.view(dtype.np).reshape(dtype.storage_shape(shape))

    def _aliasing(self, program: KernelProgram) -> Aliasing:
        """Which buffers of the kernel share memory: those at exactly the same bytes with one
        dtype and span share a pointer; `noalias` for a buffer overlapping no other but those."""
        where = [self.location(_tensor_of(program, b), 0) for b in program.buffers]
        places = [(a.arena, a.offset, a.nbytes, b.dtype, b.span) for a, b in zip(where, program.buffers)]
        pointer = [places.index(place) for place in places]
        noalias = [not any(pointer[j] != pointer[i] and _overlap(a, b) for j, b in enumerate(where))
                   for i, a in enumerate(where)]
        return Aliasing(pointer, noalias)

    def _args(self, program: KernelProgram, parity: int) -> ctypes.Array:
        pointers = [self.address(_tensor_of(program, b), parity) for b in program.buffers]
        return (ctypes.c_void_p * max(len(pointers), 1))(*pointers)

    # --- running ----------------------------------------------------------------------------
    def run_collective(self, program: KernelProgram) -> None:
        """A collective kernel through the communicator (its only stage: `AllReduceStage`)."""
        (stage,) = program.stages
        out = program.buffer(stage.out)
        source = program.buffer(stage.x.buffer)
        dtype = DType(out.dtype)
        flat = self.view(_tensor_of(program, source), (source.span,), DType(source.dtype))
        x = np.lib.stride_tricks.as_strided(flat[stage.x.offset:], out.shape,
                                            [s * dtype.itemsize for s in stage.x.strides], writeable=False)
        self.view(_tensor_of(program, out), out.shape, dtype)[...] = self.communicator.all_reduce(x, stage.reduce).astype(dtype.np)

    def step(self, timings: list[float] | None = None, phases: frozenset[str | None] | None = None) -> None:
        """Run every kernel once (only those of `phases`, if given); with `timings`, append
        each kernel's host seconds (0 for a kernel not run).

        Outputs are readable until `commit_updates()` makes the updates current."""
        seconds = [0.0] * len(self.kernels)
        for part in self._plan(phases):
            if isinstance(part, BoundKernel):
                start = time.perf_counter()
                self.run_collective(part.program)
                seconds[part.index] = time.perf_counter() - start
            else:
                part.run(seconds, timings is not None)
        if timings is not None:
            timings.extend(seconds)

    def _plan(self, phases: frozenset[str | None] | None) -> list[BoundKernel | _Stretch]:
        """The kernels of `phases` at the current parity: stretches of native kernels, and collectives."""
        key = (phases, self.parity)
        if key not in self._runs:
            chosen = [k for k in self.kernels if phases is None or k.program.phase in phases]
            plan: list[BoundKernel | _Stretch] = []
            for kernel in chosen:
                if kernel.native is None:
                    plan.append(kernel)
                elif plan and isinstance(plan[-1], _Stretch):
                    plan[-1].kernels.append(kernel)
                else:
                    plan.append(_Stretch([kernel]))
            for part in plan:
                if isinstance(part, _Stretch):
                    part.load(self.parallel, self.parity)
            self._runs[key] = plan
        return self._runs[key]

    def commit_updates(self) -> None:
        """Make each param's update its current value (swap places, or copy)."""
        for param, update in self.copies:
            a, b = self.location(param), self.location(update)
            self.arenas[a.arena][a.offset:a.offset + b.nbytes] = self.arenas[b.arena][b.offset:b.offset + b.nbytes]
        if self.swaps:
            self.parity ^= 1


def _failed(kernel: BoundKernel, status: int) -> ExecutionError:
    program = kernel.program
    where = f" at {display_location(program.loc)}" if program.loc else ""
    return ExecutionError(f"kernel '{program.name}' ('{program.op}'{where}): {ERRORS.get(status, f'error {status}')}")


@attrs.define
class _Stretch:
    """Consecutive native kernels of a step, run as one `StageList`."""

    kernels: list[BoundKernel]
    stages: StageList | None = None
    owners: list[BoundKernel] = attrs.field(factory=list)  # the kernel of each stage

    def load(self, parallel: Parallel, parity: int) -> None:
        stages = []
        for kernel in self.kernels:
            for stage in kernel.native.stages:
                plan = stage.plan
                stages.append(Stage(stage.fn, kernel.args[parity], plan.extent, plan.work, plan.pieces))
                self.owners.append(kernel)
        self.stages = StageList(stages, parallel)

    def run(self, seconds: list[float], timed: bool) -> None:
        """Every stage; with `timed`, each kernel's seconds from the end of the stage before its first."""
        start = time.monotonic_ns()
        status, failed = self.stages.run(timed)
        if status:
            raise _failed(self.owners[failed], status)
        if timed:
            for owner, end in zip(self.owners, self.stages.times):
                seconds[owner.index] += (int(end) - start) * 1e-9
                start = int(end)
