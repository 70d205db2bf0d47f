"""Resource mapping: what each kernel needs of the chip, and what it gets in its section.

* Budget: the PCUs and PMUs a program may use: `n_chips` x `num_tiles` tiles.
* Needs: a kernel's minimum PCUs (one chain of PCUs per stage, one PCU
  pipeline stage per expression node) and its PMUs (one scratchpad per operand
  stream at least; more when a double-buffered tile of it is larger than a PMU).
* Tiles: per stage, over its loop nest (each stage declaration's `loop_nest`), from the op's
  `tile` attribute when the `tile` pass set one, else `lanes` x `lanes` blocks of the
  two inner result axes and a `lanes`-deep contraction.
* Balancing: in a section, kernels run as one pipeline, so the spare PCUs go to
  kernels in proportion to their flops (each stage then takes about as long),
  capped by how many PCUs a kernel's loop can keep busy.
"""
from __future__ import annotations

import math

import attrs

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Body
from backend.pef.stages import Stage, strided_elements
from backend.pef.targets import Target
from ir.dtypes import DType
from ir.errors import BackendError, ConfigError, display_location


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


def default_tile(extents: tuple[int, ...], reduced: tuple[int, ...], lanes: int) -> tuple[int, ...]:
    """The tile without a `tile` pass: `lanes` x `lanes` of the two inner result axes, the
    other result axes one at a time, the first contracted axis `lanes` deep, the others whole."""
    free = [i for i in range(len(extents)) if i not in reduced]
    tile = []
    for i, extent in enumerate(extents):
        if i in reduced:
            tile.append(min(extent, lanes) if i == reduced[0] else extent)
        else:
            tile.append(min(extent, lanes) if i in free[-2:] else 1)
    return tuple(max(t, 1) for t in tile)


def reduced_axes(program: KernelProgram, stage: Stage) -> tuple[int, ...]:
    """The contracted axes of a stage's loop nest."""
    return stage.contracted(len(program.loop_nest(stage)))


def schedule_tiles(program: KernelProgram, target: Target) -> tuple[tuple[int, ...], ...]:
    """Each stage's tile: the one its op was given (clipped to the extents), else the default."""
    tiles = []
    for i, stage in enumerate(program.stages):
        nest = program.loop_nest(stage)
        given = program.schedule.tiles[i] if i < len(program.schedule.tiles) else ()
        if len(given) == len(nest) and given:
            tiles.append(tuple(max(1, min(t, d)) for t, d in zip(given, nest)))
        else:
            tiles.append(default_tile(nest, reduced_axes(program, stage), target.pcu.lanes))
    return tuple(tiles)


def _nodes(body: Body | None) -> int:
    if body is None:
        return 0
    return sum(n.op not in ("arg", "index", "acc", "const") for n in body.nodes)


def _stage_pcus(stage: Stage, target: Target) -> int:
    """PCUs chained for one stage: its expression nodes spread over PCU pipeline stages."""
    nodes = _nodes(getattr(stage, "body", None)) + _nodes(getattr(stage, "epilogue", None))
    return max(1, math.ceil((nodes + stage.has_core) / target.pcu.stages))


def working_set(program: KernelProgram, stage: Stage, tile: tuple[int, ...]) -> list[int]:
    """Bytes of one tile of each operand stream and of the result (accumulated in f32 when contracted).

    Operand fields follow the loop nest; a body's reads follow it too, an epilogue's the result axes."""
    def nbytes(access: Access, elements: int) -> int:
        return DType(program.buffer(access.buffer).dtype).nbytes(elements)
    reduced = reduced_axes(program, stage)
    result_tile = tuple(t for i, t in enumerate(tile) if i not in reduced)
    streams = []
    for field in attrs.fields(type(stage)):
        value = getattr(stage, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, Access):
                streams.append(nbytes(item, stage.tile_elements(tile, item)))
            elif isinstance(item, Body):
                inner = result_tile if field.name == "epilogue" else tile
                streams += [nbytes(r, strided_elements(inner, r)) for r in item.reads]
    item = 4 if reduced else DType(program.buffer(stage.out).dtype).itemsize
    return streams + [math.prod(result_tile) * item]


def kernel_needs(program: KernelProgram, target: Target) -> Needs:
    """The minimum PCUs and PMUs of a kernel under its schedule's tiles: each stream's tile,
    double-buffered, in whole PMUs."""
    pcus = sum(_stage_pcus(s, target) for s in program.stages)
    pmus = 0
    for stage, tile in zip(program.stages, program.schedule.tiles):
        pmus += sum(max(1, math.ceil(2 * nbytes / target.pmu.bytes)) for nbytes in working_set(program, stage, tile))
    biggest = max((math.prod(program.loop_nest(s)) for s in program.stages), default=1)
    useful = max(pcus, pcus * math.ceil(biggest / (target.pcu.lanes * target.pcu.stages)))
    return Needs(pcus, max(pmus, 1), program.cost.flops, useful)


def check_fits(program: KernelProgram, needs: Needs, limit: Budget, target: Target) -> None:
    """BackendError naming the kernel if it cannot fit even alone."""
    if needs.pcus <= limit.pcus and needs.pmus <= limit.pmus:
        return
    where = f" ({display_location(program.loc)})" if program.loc else ""
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
