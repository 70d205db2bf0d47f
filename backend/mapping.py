"""Resource mapping: what each kernel needs of the chip, and what it gets in its section.

* Budget: the PCUs and PMUs a program may use: `n_chips` x `num_tiles` tiles.
* Needs: a kernel's minimum PCUs (one chain of PCUs per stage, one PCU
  pipeline stage per expression node) and its PMUs (one scratchpad per operand
  stream at least; more when a double-buffered tile of it is larger than a PMU).
* Tiles: per stage, over its loop nest, from the `tile` op attribute when the
  `tile` pass set one, else `lanes` x `lanes` blocks of the two inner axes.
* Balancing: in a section, kernels run as one pipeline, so the spare PCUs go to
  kernels in proportion to their flops (each stage then takes about as long),
  capped by how many PCUs a kernel's loop can keep busy.
"""
from __future__ import annotations

import math

import attrs

from backend.kernel_program import (
    Body, ConcatStage, Conv2dStage, GatherStage, GemmStage, KernelProgram, LiteralStage, MapStage, Pool2dStage,
    ReduceStage, ScatterAddStage, Stage)
from backend.lowering import stage_accesses
from backend.targets import Target
from ir.dtypes import DType
from ir.errors import BackendError, ConfigError


@attrs.frozen
class Budget:
    """The resources a program may use."""

    chips: int
    tiles: int
    pcus: int
    pmus: int

    def describe(self, target: Target) -> str:
        return f"{self.pcus} PCUs and {self.pmus} PMUs ({target.name}, {self.chips} chip(s) x {self.tiles} tile(s))"


def budget(target: Target, n_chips: int = 1, num_tiles: int | None = None) -> Budget:
    """The budget of `n_chips` chips using `num_tiles` tiles each (all tiles by default)."""
    if not 1 <= n_chips <= target.chips_per_node:
        raise ConfigError(f"--n-chips {n_chips}: target '{target.name}' has 1 to {target.chips_per_node} chips per node")
    tiles = target.tiles if num_tiles is None else num_tiles
    if not 1 <= tiles <= target.tiles:
        raise ConfigError(f"--num-tiles {tiles}: target '{target.name}' has 1 to {target.tiles} tiles per chip")
    units = n_chips * tiles
    return Budget(n_chips, tiles, units * target.pcus_per_tile, units * target.pmus_per_tile)


@attrs.frozen
class Needs:
    """A kernel's minimum resources and its flops."""

    pcus: int
    pmus: int
    flops: int
    #: PCUs beyond which the kernel's loops have no more parallel work
    useful_pcus: int


def default_tile(shape: tuple[int, ...], lanes: int) -> tuple[int, ...]:
    """`lanes` x `lanes` blocks of the two inner axes, one element of the outer ones."""
    return tuple(1 if i < len(shape) - 2 else max(1, min(d, lanes)) for i, d in enumerate(shape))


def loop_shape(program: KernelProgram, stage: Stage) -> tuple[int, ...]:
    """The iteration space a stage's schedule tiles."""
    if isinstance(stage, ReduceStage):
        return tuple(stage.shape)
    if isinstance(stage, GemmStage):
        return tuple(stage.batch) + (stage.m, stage.n)
    return tuple(program.buffer(stage.out).shape)


def stage_tiles(program: KernelProgram, target: Target, tile: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], ...]:
    """One tile per stage: `tile` (an op attribute) where its rank fits, else the default."""
    tiles = []
    for stage in program.stages:
        shape = loop_shape(program, stage)
        if tile is not None and len(tile) == len(shape):
            tiles.append(tuple(max(1, min(t, d)) for t, d in zip(tile, shape)))
        else:
            tiles.append(default_tile(shape, target.pcu.lanes))
    return tuple(tiles)


def _nodes(body: Body | None) -> int:
    if body is None:
        return 0
    return sum(n.op not in ("arg", "index", "acc", "const") for n in body.nodes)


def _stage_pcus(stage: Stage, target: Target) -> int:
    """PCUs chained for one stage: its expression nodes spread over PCU pipeline stages."""
    nodes = _nodes(getattr(stage, "body", None)) + _nodes(getattr(stage, "epilogue", None))
    core = 0 if isinstance(stage, (MapStage, LiteralStage, GatherStage, ConcatStage, ScatterAddStage)) else 1
    return max(1, math.ceil((nodes + core) / target.pcu.stages))


def _working_set(program: KernelProgram, stage: Stage, tile: tuple[int, ...], target: Target) -> list[int]:
    """Bytes of one tile of each operand stream and of the output."""
    out = program.buffer(stage.out)
    tile_elems = math.prod(tile)
    streams = []
    if isinstance(stage, GemmStage):
        k = max(1, min(stage.k, target.pcu.lanes))
        item = DType(program.buffer(stage.a.buffer).dtype).itemsize
        tm, tn = (tile[-2], tile[-1]) if len(tile) >= 2 else (1, 1)
        streams += [tm * k * item, k * tn * item]
    elif isinstance(stage, ReduceStage):
        reduced = math.prod(stage.shape[a] for a in stage.axes) if stage.axes else 1
        kept = math.prod(t for i, t in enumerate(tile) if i not in stage.axes)
        for access in stage.body.reads:
            streams.append(kept * min(reduced, target.pcu.lanes) * DType(program.buffer(access.buffer).dtype).itemsize)
    else:
        for access in stage_accesses(stage):
            streams.append(tile_elems * DType(program.buffer(access.buffer).dtype).itemsize)
    streams.append(tile_elems * DType(out.dtype).itemsize)
    return streams


def kernel_needs(program: KernelProgram, target: Target) -> Needs:
    """The minimum PCUs and PMUs of a kernel under its schedule's tiles."""
    pcus = sum(_stage_pcus(s, target) for s in program.stages)
    pmus = 0
    for stage, tile in zip(program.stages, program.schedule.tiles):
        pmus += sum(max(1, math.ceil(2 * nbytes / target.pmu.bytes)) for nbytes in _working_set(program, stage, tile, target))
    biggest = max((math.prod(loop_shape(program, s)) for s in program.stages), default=1)
    useful = max(pcus, pcus * math.ceil(biggest / (target.pcu.lanes * target.pcu.stages)))
    return Needs(pcus, max(pmus, 1), program.cost.flops, useful)


def check_fits(program: KernelProgram, needs: Needs, limit: Budget, target: Target) -> None:
    """BackendError naming the kernel if it cannot fit even alone."""
    if needs.pcus <= limit.pcus and needs.pmus <= limit.pmus:
        return
    where = f" ({program.loc})" if program.loc else ""
    raise BackendError(
        f"kernel '{program.name}'{where} needs {needs.pcus} PCUs and {needs.pmus} PMUs, but the program may use "
        f"{limit.describe(target)}: use more --n-chips or --num-tiles, a larger --target, or smaller tiles")


def balance(needs: list[Needs], pcus: int) -> list[int]:
    """PCUs per kernel of one section: minimums, then the spare in proportion to flops."""
    given = [n.pcus for n in needs]
    spare = pcus - sum(given)
    total = sum(n.flops for n in needs)
    if spare <= 0 or total == 0:
        return given
    shares = [spare * n.flops / total for n in needs]
    extra = [min(int(s), n.useful_pcus - g) for s, n, g in zip(shares, needs, given)]
    return [g + max(e, 0) for g, e in zip(given, extra)]
