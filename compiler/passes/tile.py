"""tile: tile sizes per matmul/conv so the working set fits the PMUs and off-chip traffic is least.

An op is tiled when its declaration gives a `loop_nest` (see `ir.ops.base.LoopNest`):
matmul, batched matmul (attention scores and values included), conv2d and its
gradients — top-level or inside fused kernels. The chosen sizes go to the op's
`tile` attribute, over its loop axes (result axes first, then reduced ones); the
backend turns it into the kernel schedule.

The model, per tile `t` of the loop nest (the contraction innermost, its
accumulator tile staying on chip, no reuse between output tiles):

* working set: each operand's tile for one contraction step and the result's
  accumulator tile (4-byte floats), each double-buffered and rounded up to whole
  PMUs — the backend's count — within `pmus` PMUs (default: one chip tile's worth);
* traffic: the result written once; each operand read once per output tile over
  the whole contraction, so an operand is re-read once per tile of each result
  axis it does not follow (matmul: A re-read N/tn times, B M/tm times, a weight
  shared by the batch once per batch tile as well); partial edge tiles read only
  what they cover, and a convolution's input windows overlap by their halo;
* lower bound: every operand read once and the result written once.

Candidate sizes per axis are the powers of two below its extent and the extent
(at least the PCU's lanes on the innermost result and contraction axes);
all combinations are scored at once (numpy) and the fitting tile of least
traffic wins (then fewest PMUs, then the largest). `matmul=MxNxK` and
`conv2d=...` force sizes instead (for the trailing loop axes; leading ones take 1).
"""
from __future__ import annotations

import functools
import math

import attrs
import numpy as np

from backend.pef.targets import Target
from compiler.pass_manager.base import Pass, PassContext, option
from compiler.pass_manager.registry import register_pass
from compiler.pass_manager.target_option import resolve_target
from ir.errors import PassError
from ir.graph import Graph, Op
from ir.ops import lookup
from ir.ops.base import LoopNest

#: the most tile combinations scored per op (the smallest candidates go first past it)
MAX_CANDIDATES = 1 << 16
#: bytes of one accumulator element (gemm and conv accumulate in f32)
ACC_BYTES = 4


@attrs.frozen
class Problem:
    """A tiling problem: the loop nest and the element sizes of its tensors."""

    nest: LoopNest
    itemsizes: tuple[int, ...]
    result_bytes: int

    @classmethod
    def of(cls, op: Op) -> Problem:
        return cls(lookup(op.name).loop_nest(op), tuple(v.type.dtype.itemsize for v in op.operands),
                   op.results[0].type.nbytes)

    @functools.cache
    def lower_bound(self) -> int:
        """Compulsory bytes: each operand read once, the result written once."""
        full = np.array([self.nest.extents], dtype=np.float64)
        return int(sum(_footprint(dims, full)[0] * item for dims, item in zip(self.nest.operands, self.itemsizes))
                   + self.result_bytes)


@attrs.frozen
class Choice:
    """A tile and its modeled traffic (bytes) and PMUs."""

    tile: tuple[int, ...]
    traffic: int
    pmus: int


@register_pass
@attrs.frozen
class Tile(Pass):
    """Give each matmul/conv a tile that fits its PMUs with the least modeled off-chip traffic."""

    name = "tile"
    statistics = {
        "ops-tiled": "ops given a tile (matmul, batched matmul, conv and its gradients)",
        "tiles-forced": "ops whose tile a matmul/conv2d option forced",
        "tiles-over-budget": "ops whose smallest tile still needs more PMUs than allowed",
        "traffic-bytes": "modeled off-chip bytes of the tiled ops with the chosen tiles",
        "traffic-default-bytes": "the same with the backend's default tiles (lanes x lanes)",
        "traffic-lower-bound": "the same if every operand were read once and every result written once",
    }
    target: str = option("", "RDU target, a preset or a YAML file (default: the compile's --target)")
    pmus: int = option(0, "PMUs one kernel's tiles may use (0: the PMUs of one chip tile)")
    matmul: str = option("", "force every matmul's tile, e.g. 64x64x64 (m x n x k; batch axes take 1)")
    conv2d: str = option("", "force every conv2d's tile over its trailing axes (n x o x oh x ow x c x kh x kw)")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Sets the `tile` attribute in place."""
        target = resolve_target(self.target, ctx)
        budget = self.pmus or target.pmus_per_tile
        forced = {name: _parse_sizes(name, text) for name, text in (("matmul", self.matmul), ("conv2d", self.conv2d))
                  if text}
        for op in graph.walk():
            if lookup(op.name).loop_nest is None:
                continue
            problem = Problem.of(op)
            sizes = forced.get(op.name)
            if sizes is not None:
                choice = score(problem, _forced_tile(problem.nest.extents, sizes, op), target)
                ctx.count("tiles-forced")
            else:
                choice = best_tile(problem, target.pmu.bytes, budget, target.pcu.lanes)
                ctx.count("tiles-over-budget", int(choice.pmus > budget))
            op.attrs["tile"] = choice.tile
            ctx.count("ops-tiled")
            ctx.count("traffic-bytes", choice.traffic)
            ctx.count("traffic-default-bytes", score(problem, default_tile(problem.nest, target.pcu.lanes), target).traffic)
            ctx.count("traffic-lower-bound", problem.lower_bound())
        return graph


def _parse_sizes(name: str, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise PassError(f"option '{name}' expects sizes like 64x64x64, got '{text}'")
    return sizes


def _forced_tile(extents: tuple[int, ...], sizes: tuple[int, ...], op: Op) -> tuple[int, ...]:
    if len(sizes) > len(extents):
        raise PassError(f"'{op.name}' has {len(extents)} loop axes, but {len(sizes)} tile sizes were given")
    lead = (1,) * (len(extents) - len(sizes))
    return tuple(min(t, e) for t, e in zip(lead + sizes, extents))


def default_tile(nest: LoopNest, lanes: int) -> tuple[int, ...]:
    """The backend's tile without this pass: lanes x lanes of the two inner result axes, a lanes-deep
    first contraction axis, the other contraction axes whole, the other result axes one at a time."""
    free = len(nest.extents) - nest.reduced
    tile = []
    for i, extent in enumerate(nest.extents):
        if i < free:
            tile.append(min(extent, lanes) if i >= free - 2 else 1)
        else:
            tile.append(min(extent, lanes) if i == free else extent)
    return tuple(tile)


def score(problem: Problem, tile: tuple[int, ...], target: Target) -> Choice:
    """The modeled traffic and PMUs of one tile."""
    return _score(problem, tuple(tile), target.pmu.bytes)


@functools.lru_cache(maxsize=4096)
def _score(problem: Problem, tile: tuple[int, ...], pmu_bytes: int) -> Choice:
    traffic, pmus = _evaluate(problem, np.array([tile], dtype=np.float64), pmu_bytes)
    return Choice(tile, int(traffic[0]), int(pmus[0]))


@functools.lru_cache(maxsize=4096)
def best_tile(problem: Problem, pmu_bytes: int, budget: int, lanes: int) -> Choice:
    """The fitting tile of least traffic (then fewest PMUs, then the largest); the smallest-PMU one if none fits."""
    grid = _grid(problem.nest, lanes)
    traffic, pmus = _evaluate(problem, grid, pmu_bytes)
    volume = grid.prod(axis=1)
    fits = pmus <= budget
    if fits.any():
        order = np.lexsort((-volume, pmus, traffic, ~fits))
    else:
        order = np.lexsort((traffic, pmus))
    best = order[0]
    return Choice(tuple(int(t) for t in grid[best]), int(traffic[best]), int(pmus[best]))


def _candidates(extent: int, floor: int) -> list[int]:
    """Powers of two from `floor` (at most the extent) below the extent, and the extent."""
    extent = max(extent, 1)
    floor = min(floor, extent)
    return [1 << p for p in range(extent.bit_length()) if floor <= (1 << p) < extent] + [extent]


def _grid(nest: LoopNest, lanes: int) -> np.ndarray:
    """Every combination of candidate sizes, as rows; thinned (smallest first) past MAX_CANDIDATES.

    The innermost result axis and the first contraction axis, which the PCU's SIMD
    lanes run along, take at least `lanes` (or their extent).
    """
    free = len(nest.extents) - nest.reduced
    floors = [lanes if i in (free - 1, free) else 1 for i in range(len(nest.extents))]
    candidates = [_candidates(e, f) for e, f in zip(nest.extents, floors)]
    while math.prod(len(c) for c in candidates) > MAX_CANDIDATES:
        widest = max(range(len(candidates)), key=lambda i: len(candidates[i]))
        candidates[widest] = candidates[widest][1:]
    mesh = np.meshgrid(*[np.array(c, dtype=np.float64) for c in candidates], indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def _footprint(dims, tiles: np.ndarray) -> np.ndarray:
    """Elements of one tensor a tile touches, for each row of `tiles`."""
    out = np.ones(len(tiles))
    for dim in dims:
        out *= 1.0 + sum(coeff * (tiles[:, axis] - 1.0) for axis, coeff in dim)
    return out


def _evaluate(problem: Problem, tiles: np.ndarray, pmu_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(traffic bytes, PMUs) of each row of `tiles`."""
    nest = problem.nest
    extents = np.array(nest.extents, dtype=np.float64)
    free = len(extents) - nest.reduced
    counts = np.ceil(extents[:free] / tiles[:, :free])
    traffic = np.full(len(tiles), float(problem.result_bytes))
    pmus = _pmus(_footprint(nest.result, tiles) * ACC_BYTES, pmu_bytes)
    for dims, item in zip(nest.operands, problem.itemsizes):
        traffic += _reads(dims, counts, extents, free) * item
        pmus += _pmus(_footprint(dims, tiles) * item, pmu_bytes)
    return np.round(traffic), pmus


def _reads(dims, counts: np.ndarray, extents: np.ndarray, free: int) -> np.ndarray:
    """Elements of one operand read over all output tiles (each over the whole contraction).

    Once per tile of each result axis it does not follow; along a dimension it does
    follow, the tiles' spans summed (the last tile of an axis may be partial; windows
    overlap by their halo).
    """
    followed = {axis for dim in dims for axis, _ in dim if axis < free}
    total = np.prod([counts[:, a] for a in range(free) if a not in followed], axis=0) \
        if len(followed) < free else np.ones(len(counts))
    for dim in dims:
        tiles = np.prod([counts[:, a] for a, _ in dim if a < free], axis=0) if any(a < free for a, _ in dim) \
            else np.ones(len(counts))
        span = tiles * (1.0 + sum(c * (extents[a] - 1.0) for a, c in dim if a >= free))
        for a, c in dim:
            if a < free:
                span = span + c * (extents[a] - counts[:, a]) * tiles / counts[:, a]
        total = total * span
    return total


def _pmus(nbytes: np.ndarray, pmu_bytes: int) -> np.ndarray:
    """PMUs of one double-buffered stream (at least one)."""
    return np.maximum(1, np.ceil(2.0 * nbytes / pmu_bytes)).astype(np.int64)
