"""plan-memory: an offset for every tensor in one arena per memory tier, reusing dead tensors' memory.

What is placed: graph inputs, params and the results of top-level ops (kernels);
values inside fused kernels are the backend's kernel temporaries. The plan is
written into the IR — `Value.mem`, printed as `mem(ddr:4096)` on each op and
declaration — and the backend takes it from there: this is the one planner (the
backend only adds kernel temporaries on chip, and refuses a graph without a plan
that fits its target; `with_memory_plan` gives a graph one before the backend).

Liveness over the schedule (top-level op order): a result is live from its op
to its last use; inputs from the start; params, outputs and param updates to
the end (params persist between runs). An update holds its range from the
start too — after a step the runtime swaps a param and its update — unless it
is written over its param in place. Sizes are rounded up to the backend's
64-byte alignment, so every bound below is exact in the same units. A tensor larger
than the target's largest tier, or tensors adding up beyond 64 bits (a huge batch
size), is a `PassError` naming the largest tensor and its op's source location.

Tiers:
* off-chip (the target's tiers, fastest first; HBM before DDR when it has
  room): inputs, params, outputs, updates, and every tensor not kept on chip;
* on-chip (`onchip`): a kernel result of at most `onchip-max-bytes` (default:
  one PMU) whose users all run in its producer's phase segment (sections
  never mix phases) — small activations and statistics that stay in PMUs
  between kernels; the on-chip arena is capped at a quarter of the chip's
  SRAM (the rest is for kernels' working sets), the largest tensors at the
  peak going off-chip first. `onchip-max-bytes=0` keeps everything off-chip
  (the -O0 pipeline: one op per section).

In-place reuse: an elementwise kernel (an op, or a fused op of elementwise ops
only) writes a result over an operand of the same shape and size that dies
there (a param only when the result is that param's update) and that none of
its later results reads; so does an op declaring `inplace_operand` (a KV-cache
write rewrites a few rows of its cache); results computed from others go first, so an
optimizer's kernel updates a param and its moments all in place.

Offsets: greedy by breadth (TFLite: tensors live at the fullest time first),
greedy by size with best fit and with first fit, greedy by size x lifetime,
and in-order first fit, in turn until one reaches the peak-live bound; the
smallest arena wins. Tensors live for the whole run (params) are stacked first.

Quality, as XLA's buffer assignment reports it: per tier the arena, the
peak-live lower bound (the most bytes live at one time), their ratio, and the
no-reuse total (every tensor its own range) — see `memory_report`.
"""
from __future__ import annotations

from typing import Callable, Iterable

import attrs
import numpy as np

from backend.memory import plan_problem
from backend.pef.memory_plan import ALIGN
from backend.pef.targets import ONCHIP, Target
from compiler.pass_manager.base import Pass, PassContext, option
from compiler.pass_manager.registry import register_pass
from compiler.pass_manager.target_option import resolve_target
from ir.errors import Location, PassError
from ir.graph import Graph, Op, Placement, Value
from ir.ops import FusionKind, lookup

#: the largest byte count or offset a plan may hold (the arrays below are int64)
MAX_BYTES = 2**63 - 1
HEURISTICS = ("greedy-breadth", "greedy-size", "greedy-size-first-fit", "greedy-area", "in-order")
#: the share of a chip's SRAM the on-chip arena may take
ONCHIP_SHARE = 4


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@attrs.define(eq=False)
class Buffer:
    """Values sharing one memory range over [start, end] (several when a result reuses an operand in place)."""

    values: list[Value]
    size: int
    start: int
    end: int
    tier: str = ""
    offset: int = 0
    #: a param's range: stacked first, in declaration order, so graphs sharing params
    #: (a model's training step and its generation entry points) place them alike
    pinned: bool = False


@attrs.frozen
class TierReport:
    """One arena of a plan: its size, the peak-live lower bound, and the no-reuse total."""

    tier: str
    arena: int
    lower_bound: int
    no_reuse: int
    tensors: int

    @property
    def ratio(self) -> float:
        return self.arena / self.lower_bound if self.lower_bound else 1.0


@register_pass
@attrs.frozen
class PlanMemory(Pass):
    """Place every tensor at an offset in one arena per memory tier, reusing the memory of dead tensors."""

    name = "plan-memory"
    statistics = {
        "tensors": "tensors placed",
        "onchip-tensors": "tensors placed on chip",
        "in-place": "results written over an operand that dies at their kernel",
        "onchip-arena-bytes": "size of the on-chip arena",
        "onchip-lower-bound": "peak bytes live on chip at once",
        "offchip-arena-bytes": "size of the off-chip arenas (all tiers)",
        "offchip-lower-bound": "peak bytes live off-chip at once (per tier, summed)",
        "no-reuse-bytes": "bytes if every tensor had a range of its own",
    }
    target: str = option("", "RDU target, a preset or a YAML file (default: the compile's --target)")
    onchip_max_bytes: int = option(-1, "largest tensor kept on chip (-1: one PMU; 0: every tensor off-chip)")
    heuristic: str = option("best", f"offset heuristic: best (the smallest of all), {', '.join(HEURISTICS)}")
    in_place: bool = option(True, "let an elementwise kernel write its result over a dying operand")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Sets `Value.mem` on inputs, params and top-level results."""
        buffers = self.plan(graph, resolve_target(self.target, ctx))
        self._count(ctx, graph, buffers)
        return graph

    def plan(self, graph: Graph, target: Target) -> list[Buffer]:
        """Plan `graph`'s tensors for `target` (setting `Value.mem`); the placed buffers."""
        if self.heuristic != "best" and self.heuristic not in HEURISTICS:
            raise PassError(f"option 'heuristic' must be best or one of {', '.join(HEURISTICS)}, "
                            f"got '{self.heuristic}'")
        limit = target.pmu.bytes if self.onchip_max_bytes < 0 else self.onchip_max_bytes
        if self.in_place:
            dependents_first(graph)
        live = Liveness(graph)
        buffers = live.buffers(self.in_place)
        _check_sizes(buffers, live, target)
        _assign_tiers(buffers, live, limit, target)
        heuristics = HEURISTICS if self.heuristic == "best" else (self.heuristic,)
        for tier_buffers in _by_tier(buffers).values():
            place(tier_buffers, heuristics)
        _spill_offchip(buffers, target, heuristics)
        for buffer in buffers:
            for value in buffer.values:
                value.mem = Placement(buffer.tier, buffer.offset)
        return buffers

    def _count(self, ctx: PassContext, graph: Graph, buffers: list[Buffer]) -> None:
        ctx.count("tensors", sum(len(b.values) for b in buffers))
        ctx.count("in-place", sum(len(b.values) - 1 for b in buffers))
        ctx.count("onchip-tensors", sum(len(b.values) for b in buffers if b.tier == ONCHIP))
        for report in tier_reports(buffers):
            side = "onchip" if report.tier == ONCHIP else "offchip"
            ctx.count(f"{side}-arena-bytes", report.arena)
            ctx.count(f"{side}-lower-bound", report.lower_bound)
            ctx.count("no-reuse-bytes", report.no_reuse)


def with_memory_plan(graph: Graph, target: Target, *, pack: bool = True) -> Graph:
    """`graph` with a memory plan the backend can use on `target`: its own if it has one that fits
    (see `backend.memory.plan_problem`), else this pass's with its defaults — everything off-chip
    when `pack` is False (one kernel per section, as at -O0, so nothing stays on chip between kernels)."""
    if plan_problem(graph, target) is not None:
        PlanMemory(onchip_max_bytes=-1 if pack else 0).plan(graph, target)
    return graph


# --- liveness ------------------------------------------------------------------------------
class Liveness:
    """Live ranges over top-level op positions, and which values persist or may go on chip."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.end_of_run = len(graph.ops)
        self.position = {id(op): i for i, op in enumerate(graph.ops)}
        self.last_use: dict[Value, int] = {}
        for i, op in enumerate(graph.ops):
            for value in op.operands:
                self.last_use[value] = i
        self.live_outs = graph.live_outs()
        self.params = {p.value for p in graph.params}
        self.update_of = {graph.updates[p.name]: p.value for p in graph.params if p.name in graph.updates}
        self.segment = _segments(graph.ops)
        self.users = graph.users()
        self._later: dict[int, list[set[Value]]] = {}

    def values(self) -> list[Value]:
        """Every value the plan places, in order: params, inputs, then op results."""
        return [*(p.value for p in self.graph.params), *self.graph.inputs,
                *(v for op in self.graph.ops for v in op.results)]

    def interval(self, value: Value) -> tuple[int, int]:
        """[first, last] op position of the value's range; an update holds its range all run long:
        unless it is written over its param, the runtime swaps the two between steps."""
        if value in self.update_of:
            return 0, self.end_of_run
        start = self.position[id(value.producer)] if value.producer is not None else 0
        if value in self.live_outs or value in self.params:
            return start, self.end_of_run
        return start, max(start, self.last_use.get(value, start))

    def describe(self, value: Value) -> str:
        """`the result of 'matmul'`, `param 'w'` or `input 'x'`."""
        if value.producer is not None:
            return f"the result of '{value.producer.name}'"
        return f"{'param' if value in self.params else 'input'} '{value.name}'"

    def location(self, value: Value) -> Location | None:
        """Where a value comes from: its op's source location, else that of its first user."""
        ops = [value.producer] if value.producer is not None else self.users.get(value, [])
        return next((op.locs[0] for op in ops if op.locs), None)

    def persistent(self, value: Value) -> bool:
        return value.producer is None or value in self.live_outs

    def users_in_segment(self, value: Value) -> bool:
        """Whether every user runs in the producer's phase segment."""
        home = self.segment[self.position[id(value.producer)]]
        return all(self.segment[self.position[id(op)]] == home for op in self.users.get(value, ()))

    def buffers(self, in_place: bool) -> list[Buffer]:
        """One buffer per value, results merged into an operand they may overwrite in place."""
        own: dict[Value, Buffer] = {}
        taken: set[Value] = set()
        out = []
        for value in self.values():
            start, end = self.interval(value)
            donor = next((v for v in self.donors(value) if v not in taken), None) if in_place else None
            if donor is not None:
                taken.add(donor)
                buffer = own[donor]
                buffer.values.append(value)
                buffer.end = max(buffer.end, end)
            else:
                buffer = Buffer([value], aligned(value.type.nbytes), start, end, pinned=value in self.params)
                out.append(buffer)
            own[value] = buffer
        return out

    def donors(self, value: Value) -> list[Value]:
        """Operands `value`'s kernel may overwrite with it: same shape and size, dying there, and
        read by none of the kernel's later results (an elementwise kernel writes them in order),
        or the operand an op declares it rewrites in part (`OpDef.inplace_operand`: a cache write)."""
        op = value.producer
        if op is None:
            return []
        here = self.position[id(op)]
        declared = lookup(op.name).inplace_operand if op.region is None else None
        if declared is not None:
            candidates, later = op.operands[declared:declared + 1], set()
        elif _elementwise_kernel(op):
            candidates, later = list(dict.fromkeys(op.operands)), self._read_later(op)[value.index]
        else:
            return []
        own = self.update_of.get(value)  # an update may only take its own param's range
        return [v for v in candidates
                if v.type.shape == value.type.shape and v.type.nbytes == value.type.nbytes
                and self.last_use.get(v) == here and v not in later and self._may_die(v, value)
                and (own is None or v is own)]

    def _read_later(self, op: Op) -> list[set[Value]]:
        if id(op) not in self._later:
            self._later[id(op)] = _read_later(op)
        return self._later[id(op)]

    def _may_die(self, operand: Value, result: Value) -> bool:
        if operand in self.live_outs:
            return False
        if operand in self.params:
            return self.update_of.get(result) is operand
        return True


def _read_later(op: Op) -> list[set[Value]]:
    """For each result of an elementwise kernel, the operands that results after it read."""
    if op.region is None:
        return [set(op.operands) if i < len(op.results) - 1 else set() for i in range(len(op.results))]
    reads: dict[Value, set[Value]] = {arg: {v} for arg, v in zip(op.region.args, op.operands)}
    for inner in op.region.ops:
        deps = set().union(*(reads.get(v, set()) for v in inner.operands))
        reads.update((r, deps) for r in inner.results)
    out, after = [], set()
    for value in reversed(op.region.results):
        out.append(set(after))
        after |= reads.get(value, set())
    return out[::-1]


def dependents_first(graph: Graph) -> None:
    """Order each elementwise fused op's results latest-defined first.

    The backend writes them in order, so a result computed from others (an optimizer's
    new param from its new moments) goes first and leaves the old values free to be
    overwritten by the results after it.
    """
    for op in graph.ops:
        if op.region is None or len(op.results) < 2 or not _elementwise_kernel(op):
            continue
        defined = {v: i for i, inner in enumerate(op.region.ops) for v in inner.results}
        order = sorted(range(len(op.results)), key=lambda k: -defined.get(op.region.results[k], -1))
        op.region.results = [op.region.results[k] for k in order]
        op.results = [op.results[k] for k in order]
        for i, value in enumerate(op.results):
            value.index = i


def _segments(ops: list[Op]) -> list[int]:
    """The index of each op's run of consecutive ops of one phase."""
    out, current, last = [], -1, object()
    for op in ops:
        current += op.phase is not last
        out.append(current)
        last = op.phase
    return out


def _elementwise_kernel(op: Op) -> bool:
    """A kernel computing each result element from the same element of its full-shape operands."""
    inner = op.region.ops if op.region is not None else [op]
    for o in inner:
        opdef = lookup(o.name)
        if o.region is not None or (o.operands and (opdef.scalar is None or opdef.kind > FusionKind.broadcast)):
            return False
        if not o.operands and opdef.generate is None:
            return False
    return True


# --- sizes -----------------------------------------------------------------------------------
def _check_sizes(buffers: list[Buffer], live: Liveness, target: Target) -> None:
    """A tensor larger than every memory tier of the target, or tensors whose bytes add up beyond
    64 bits (a huge batch size, say), is an error naming the largest tensor and where it comes from."""
    if not buffers:
        return
    tier = max(target.offchip, key=lambda t: t.capacity)
    big = max(buffers, key=lambda b: b.size)
    value = big.values[0]
    what = f"{live.describe(value)} ({value.type}) needs {value.type.nbytes} bytes"
    hint = "reduce the batch size or the model's sizes"
    if big.size > tier.capacity:
        raise PassError(f"{what}, more than the largest memory tier of target '{target.name}' "
                        f"('{tier.name}', {tier.capacity} bytes); {hint}", live.location(value))
    total = sum(b.size for b in buffers)
    if total > MAX_BYTES:
        raise PassError(f"the program's tensors need {total} bytes in all, beyond 64-bit offsets (the largest: "
                        f"{what}); {hint}", live.location(value))


# --- tiers -----------------------------------------------------------------------------------
def _assign_tiers(buffers: list[Buffer], live: Liveness, limit: int, target: Target) -> None:
    """On chip: small non-persistent buffers used within their segment, within the SRAM share."""
    for buffer in buffers:
        eligible = all(not live.persistent(v) and v.type.nbytes <= limit and live.users_in_segment(v)
                       for v in buffer.values)
        buffer.tier = ONCHIP if eligible else target.offchip[0].name
    cap = target.sram_bytes // ONCHIP_SHARE
    onchip = [b for b in buffers if b.tier == ONCHIP]
    while onchip and peak(onchip) > cap:
        at = _peak_time(onchip)
        victim = max((b for b in onchip if b.start <= at <= b.end), key=lambda b: (b.size, -b.start))
        victim.tier = target.offchip[0].name
        onchip.remove(victim)


def _by_tier(buffers: Iterable[Buffer]) -> dict[str, list[Buffer]]:
    tiers: dict[str, list[Buffer]] = {}
    for buffer in buffers:
        tiers.setdefault(buffer.tier, []).append(buffer)
    return tiers


def _spill_offchip(buffers: list[Buffer], target: Target, heuristics: tuple[str, ...]) -> None:
    """Move the largest buffers of a full tier to the next one (HBM to DDR, say) and re-place."""
    for tier, slower in zip(target.offchip, target.offchip[1:]):
        here = [b for b in buffers if b.tier == tier.name]
        moved = False
        while here and arena(here) > tier.capacity:
            victim = max(here, key=lambda b: (b.size, -b.start))
            victim.tier = slower.name
            here.remove(victim)
            place(here, heuristics)
            moved = True
        if moved:
            place([b for b in buffers if b.tier == slower.name], heuristics)
    last = target.offchip[-1]
    used = arena([b for b in buffers if b.tier == last.name])
    if used > last.capacity:
        raise PassError(f"the memory plan needs {used} bytes of '{last.name}', but target '{target.name}' "
                        f"has {last.capacity}")


# --- offsets ---------------------------------------------------------------------------------
def arena(buffers: Iterable[Buffer]) -> int:
    return max((b.offset + b.size for b in buffers), default=0)


def peak(buffers: list[Buffer]) -> int:
    """The most bytes live at one time: the lower bound of any arena."""
    return int(_live_bytes(buffers).max(initial=0))


def _peak_time(buffers: list[Buffer]) -> int:
    return int(np.argmax(_live_bytes(buffers)))


def _live_bytes(buffers: list[Buffer]) -> np.ndarray:
    horizon = max((b.end for b in buffers), default=0) + 2
    delta = np.zeros(horizon, dtype=np.int64)
    np.add.at(delta, [b.start for b in buffers], [b.size for b in buffers])
    np.add.at(delta, [b.end + 1 for b in buffers], [-b.size for b in buffers])
    return np.cumsum(delta)


def _by_breadth(buffers: list[Buffer]) -> Callable[[Buffer], tuple]:
    """Order of TFLite's greedy-by-breadth: buffers live at the fullest time first, larger first."""
    live = _live_bytes(buffers)
    fullest = {id(b): int(np.argmax(live[b.start:b.end + 1])) + b.start for b in buffers}
    return lambda b: (-int(live[fullest[id(b)]]), fullest[id(b)], -b.size, b.start)


#: heuristic -> (order key maker, best fit?)
_ORDERS: dict[str, tuple[Callable[[list[Buffer]], Callable[[Buffer], tuple]], bool]] = {
    "greedy-breadth": (_by_breadth, True),
    "greedy-size": (lambda _: lambda b: (-b.size, b.start), True),
    "greedy-size-first-fit": (lambda _: lambda b: (-b.size, b.start), False),
    "greedy-area": (lambda _: lambda b: (-b.size * (b.end - b.start + 1), b.start), True),
    "in-order": (lambda _: lambda b: (b.start, -b.size), False),
}


def place(buffers: list[Buffer], heuristics: Iterable[str]) -> None:
    """Set offsets: the smallest arena any heuristic finds (the first one on ties)."""
    if not buffers:
        return
    end = max(b.end for b in buffers)
    stacked = [b.pinned or (b.start == 0 and b.end == end) for b in buffers]
    whole = [b for b, w in zip(buffers, stacked) if w]
    rest = [b for b, w in zip(buffers, stacked) if not w]
    base = 0
    for buffer in sorted(whole, key=lambda b: (not b.pinned, 0 if b.pinned else -b.size)):
        buffer.offset, base = base, base + buffer.size
    best = None
    bound = base + peak(rest)
    for name in heuristics:
        make_key, best_fit = _ORDERS[name]
        key = make_key(rest)
        offsets = _fit_all(rest, sorted(range(len(rest)), key=lambda i: key(rest[i])), best_fit, base)
        size = max((o + b.size for o, b in zip(offsets, rest)), default=base)
        if best is None or size < best[0]:
            best = (size, offsets)
        if size <= bound:  # optimal: no arena is smaller than the peak
            break
    for buffer, offset in zip(rest, best[1]):
        buffer.offset = offset


def _fit_all(buffers: list[Buffer], order: list[int], best_fit: bool, base: int) -> list[int]:
    """Offsets (from `base`) of buffers placed one by one in `order`, each clear of those it overlaps in time."""
    count = len(buffers)
    starts, ends = np.empty(count, np.int64), np.empty(count, np.int64)
    offsets, sizes = np.empty(count, np.int64), np.empty(count, np.int64)
    out = [0] * count
    for k, i in enumerate(order):
        b = buffers[i]
        clash = np.nonzero((starts[:k] <= b.end) & (ends[:k] >= b.start))[0]
        offset = _gap(offsets[clash], sizes[clash], b.size, best_fit, base)
        starts[k], ends[k], offsets[k], sizes[k] = b.start, b.end, offset, b.size
        out[i] = offset
    return out


def _gap(offsets: np.ndarray, sizes: np.ndarray, need: int, best_fit: bool, base: int) -> int:
    """The lowest (first fit) or tightest (best fit) free range of `need` bytes above `base`, else the top."""
    if not len(offsets):
        return base
    order = np.argsort(offsets, kind="stable")
    starts = offsets[order]
    tops = np.maximum.accumulate(starts + sizes[order])
    below = np.concatenate(([base], np.maximum(tops[:-1], base)))
    gaps = starts - below
    fits = np.nonzero(gaps >= need)[0]
    if not len(fits):
        return int(max(tops[-1], base))
    pick = fits[np.argmin(gaps[fits])] if best_fit else fits[0]
    return int(below[pick])


# --- reading a plan back ---------------------------------------------------------------------
def planned_buffers(graph: Graph) -> list[Buffer]:
    """The buffers of the plan in `graph` (in-place pairs share one); ValueError if a tensor is unplaced."""
    live = Liveness(graph)
    own: dict[Value, Buffer] = {}
    out = []
    for value in live.values():
        if value.mem is None:
            raise ValueError(f"tensor {value} has no place in the memory plan")
        start, end = live.interval(value)
        donor = _donor(value, live)
        if donor is not None:
            own[donor].values.append(value)
            own[donor].end = max(own[donor].end, end)
            own[value] = own[donor]
            continue
        own[value] = Buffer([value], aligned(value.type.nbytes), start, end, value.mem.tier, value.mem.offset)
        out.append(own[value])
    return out


def _donor(value: Value, live: Liveness) -> Value | None:
    """The operand whose range `value` took over in place: one it may overwrite, placed alike."""
    return next((v for v in live.donors(value) if v.mem == value.mem), None)


def memory_report(graph: Graph) -> list[TierReport]:
    """Per tier of the plan in `graph`: arena, peak-live lower bound and no-reuse bytes (on-chip first)."""
    return tier_reports(planned_buffers(graph))


def tier_reports(buffers: list[Buffer]) -> list[TierReport]:
    """Per tier of placed buffers: arena, peak-live lower bound and no-reuse bytes (on-chip first)."""
    tiers = _by_tier(buffers)
    order = sorted(tiers, key=lambda t: (t != ONCHIP, t))
    return [TierReport(t, aligned(arena(tiers[t])), peak(tiers[t]), sum(aligned(v.type.nbytes) for b in tiers[t]
                                                                      for v in b.values),
                       sum(len(b.values) for b in tiers[t])) for t in order]


def check_plan(graph: Graph) -> list[str]:
    """Problems of the plan in `graph`: unplaced tensors, and tensors live at once whose ranges overlap."""
    try:
        buffers = planned_buffers(graph)
    except ValueError as err:
        return [str(err)]
    problems = []
    for tier_buffers in _by_tier(buffers).values():
        ranked = sorted(tier_buffers, key=lambda b: b.offset)
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                if b.offset >= a.offset + a.size:
                    break
                if a.start <= b.end and b.start <= a.end:
                    problems.append(f"{a.values[0]} and {b.values[0]} overlap in '{a.tier}' while both are live")
    return problems
