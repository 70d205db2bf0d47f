"""fuse: group ops into `fused` kernels along post-dominators (TVM's FuseOps, adapted to the RDU).

Every op's fusion kind comes from its declaration (elementwise < broadcast <
injective < reduction < output-fusable < opaque). Ops that cannot sit inside a
kernel — composite ops (not yet decomposed), ops owning a region, ops declaring
no lowering hook — count as opaque and stay kernels of their own.

Groups never leave a *segment*, a run of consecutive ops of one phase: fusion
never crosses fwd/bwd/gradnorm/opt, and since no dataflow path leaves a segment
and comes back, merging only ops on paths inside a segment keeps every group
convex (the fused graph stays acyclic). A value also used outside its group —
by a later segment, an output or a param update — becomes one of the fused op's
results, so a forward activation saved for the backward pass does not block
fusion.

1. Post-dominator tree per segment: an op's immediate post-dominator is the
   least common ancestor of its users there; the path kind is the largest edge
   kind on the way (an edge has its user's kind, elementwise when a broadcast
   user's operand already has the result's shape).
2. In op order (phase 0, then phase 1 for injective ops, so epilogues settle
   first), each op's group merges with its post-dominator's group — with every
   op on the paths between them — when the groups on those paths (`on path`)
   and the post-dominator's group (`sink`) allow it and the result keeps at
   most `max-ops` ops:

   | op's group      | path kind    | on path       | sink            | what it gives                   |
   |-----------------|--------------|---------------|-----------------|---------------------------------|
   | output-fusable  | <= reduction | <= reduction  | <= reduction    | epilogues: bias, activation,    |
   |                 |              |               |                 | residual, a softmax or a sum    |
   | <= broadcast    | <= reduction | <= reduction  | not opaque      | producers join their consumers  |
   | reduction       | <= reduction | <= reduction  | <= reduction    | softmax/norms as one kernel     |
   | injective       | <= reduction | <= reduction  | <= reduction    | reshapes, slices, gathers       |
   | views only      | output-fus.  | views only    | output-fusable  | prologues: strided operand reads |

   At most one output-fusable op (matmul, conv) anchors a group. Where TVM
   stops — at a reduction's consumers, an anchor's non-elementwise epilogue,
   a view feeding a gemm — the RDU goes on: in a dataflow kernel a reduced or
   multiplied result waits in a PMU for the stages that use it, and a view
   (transpose, reshape, slice) of a gemm operand is a strided read, never a copy
   (a widening cast, e.g. of a bf16 weight, counts as a view: the gemm converts as it loads).
3. Multi-output fusion: an op still alone whose producers in its segment all
   sit in one group joins that group (a bias gradient's sum joins the kernel
   making the gradient), which then reads the tensor once, on chip. Every path
   from the group to the op ends at one of those producers, so it stays convex.
4. Operand-less generators (ops with a `generate` hook: full, iota,
   causal_mask) are not kernels: each fused kernel that uses one gets its own
   copy, and the top-level op stays only if something else still uses it.
5. A value a kernel would write out for later kernels (an attention head or a one-hot
   mask saved for the backward pass) is not a result when the kernels using it can
   re-derive it from what is in memory anyway (kernel inputs, other results): a view
   that stays a strided read, or a single-flop elementwise op that reads fewer bytes
   than it would write, and every later user is a fused kernel.
"""
from __future__ import annotations

import heapq
from collections import Counter
from typing import Callable

import attrs

from backend.pef.records import row_major
from compiler.pass_manager.base import Pass, PassContext, option
from compiler.pass_manager.registry import register_pass
from ir.builder import make_op
from ir.graph import Graph, Op, Region, Value
from ir.ops import FusionKind, lookup

EW, BC, INJ, RED, OUT, OPQ = (FusionKind.elementwise, FusionKind.broadcast, FusionKind.injective,
                              FusionKind.reduction, FusionKind.output_fusable, FusionKind.opaque)


@register_pass
@attrs.frozen
class Fuse(Pass):
    """Group ops into fused kernels by fusion kind along post-dominators (TVM's FuseOps)."""

    name = "fuse"
    statistics = {
        "kernels-before": "top-level ops (kernels) before fusion",
        "kernels-after": "top-level ops (kernels) after fusion",
        "fused-kernels": "fused ops created",
        "ops-fused": "ops moved into fused kernels",
        "generators-cloned": "copies of operand-less generators placed in kernels",
        "ops-rederived": "views and cheap elementwise ops copied into the kernels that read their result",
        "bytes-kept-onchip": "bytes of intermediate tensors that no longer leave the chip",
        "offchip-bytes-before": "modeled kernel operand and result bytes before fusion",
        "offchip-bytes-after": "modeled kernel operand and result bytes after fusion",
    }
    max_ops: int = option(32, "largest number of ops in one fused kernel")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place."""
        before, traffic = len(graph.ops), kernel_traffic(graph)
        partition = _Partition(graph.ops, max(self.max_ops, 1))
        stats = _rebuild(graph, partition)
        ctx.count("kernels-before", before)
        ctx.count("kernels-after", len(graph.ops))
        ctx.count("offchip-bytes-before", traffic)
        ctx.count("offchip-bytes-after", kernel_traffic(graph))
        for key, n in stats.items():
            ctx.count(key, n)
        return graph


def kernel_traffic(graph: Graph) -> int:
    """Modeled off-chip bytes when every kernel (top-level op) reads its operands and writes its results off-chip."""
    return sum(op_traffic(op) for op in graph.ops)


def op_traffic(op: Op) -> int:
    """Bytes `op` moves as a kernel of its own: each distinct operand read once, each result written."""
    return sum(v.type.nbytes for v in dict.fromkeys(op.operands)) + sum(v.type.nbytes for v in op.results)


def is_generator(op: Op) -> bool:
    """An operand-less op computed from its loop index: free to copy into every kernel that uses it."""
    return not op.operands and op.region is None and lookup(op.name).generate is not None


def fusion_kind(op: Op) -> FusionKind:
    """The op's declared kind; opaque when it cannot sit inside a kernel."""
    opdef = lookup(op.name)
    if op.region is not None or opdef.is_composite():
        return OPQ
    lowerable = any(getattr(opdef, hook) is not None for hook in ("view", "scalar", "generate", "stage"))
    return opdef.kind if lowerable or not op.operands else OPQ


def _is_view(op: Op) -> bool:
    """A view, or a widening cast: both fold into a gemm's operand read (strides, a converting load)."""
    opdef = lookup(op.name)
    return opdef.view is not None or opdef.widens(op)


@attrs.define(eq=False)
class _Group:
    """A union-find node: a group of ops with its combined kind and size."""

    kind: FusionKind
    size: int = 1
    views: bool = False
    parent: _Group | None = None

    def root(self) -> _Group:
        group = self
        while group.parent is not None:
            group = group.parent
        node = self
        while node.parent is not None and node.parent is not group:
            node.parent, node = group, node.parent
        return group

    def absorb(self, other: _Group) -> None:
        other.parent = self
        self.size += other.size
        self.kind = max(self.kind, other.kind)
        self.views = self.views and other.views


#: fcond(kind of a group, its all-views flag, whether it is the sink's group) -> allowed
Condition = Callable[[FusionKind, bool, bool], bool]


def _epilogue(kind: FusionKind, views: bool, sink: bool) -> bool:
    return kind <= RED


def _producer(kind: FusionKind, views: bool, sink: bool) -> bool:
    return kind < OPQ if sink else kind <= RED


def _consumer(kind: FusionKind, views: bool, sink: bool) -> bool:
    return kind <= RED


def _prologue(kind: FusionKind, views: bool, sink: bool) -> bool:
    return kind == OUT if sink else views


class _Partition:
    """Groups of the top-level ops (generators aside) by the rules in the module docstring."""

    def __init__(self, ops: list[Op], max_ops: int):
        self.ops = ops
        self.max_ops = max_ops
        self.nodes = [i for i, op in enumerate(ops) if not is_generator(op)]
        self.index = {id(ops[i]): n for n, i in enumerate(self.nodes)}
        self.groups = [_Group(fusion_kind(ops[i]), views=_is_view(ops[i])) for i in self.nodes]
        self.users = self._edges()
        self._post_dominators()
        for phase in (0, 1):
            for node in range(len(self.nodes)):
                self._try_fuse(node, phase)
        for node in range(len(self.nodes)):
            self._join_producer(node)

    def _edges(self) -> list[list[tuple[int, FusionKind]]]:
        """In-segment users of each node with the edge kind."""
        segment, current, last = [], -1, object()
        for i in self.nodes:
            phase = self.ops[i].phase
            current += phase is not last
            segment.append(current)
            last = phase
        users: list[dict[int, FusionKind]] = [{} for _ in self.nodes]
        self.producers: list[set[int]] = [set() for _ in self.nodes]
        for n, i in enumerate(self.nodes):
            op = self.ops[i]
            kind = lookup(op.name).kind
            for value in op.operands:
                p = self.index.get(id(value.producer)) if value.producer is not None else None
                if p is None or segment[p] != segment[n]:
                    continue
                edge = EW if kind == BC and value.type.shape == op.results[0].type.shape else kind
                users[p][n] = max(edge, users[p].get(n, EW))
                self.producers[n].add(p)
        return [sorted(u.items()) for u in users]

    def _post_dominators(self) -> None:
        count = len(self.nodes)
        self.parent, self.depth, self.path_kind = [-1] * count, [1] * count, [EW] * count
        for n in reversed(range(count)):
            if not self.users[n]:
                continue
            dom, kind = self.users[n][0]
            for user, edge in self.users[n][1:]:
                dom, kind = self._lca(dom, user, kind)
                kind = max(kind, edge)
            if dom >= 0:
                self.parent[n], self.depth[n], self.path_kind[n] = dom, self.depth[dom] + 1, kind

    def _lca(self, a: int, b: int, kind: FusionKind) -> tuple[int, FusionKind]:
        """Least common post-dominator, giving up (-1) past `max_ops` steps: farther ones cannot be fused anyway."""
        parent, depth, path = self.parent, self.depth, self.path_kind
        steps = 0
        while a != b:
            if a < 0 or b < 0 or steps > self.max_ops:
                return -1, kind
            if depth[a] >= depth[b]:
                kind, a = max(kind, path[a]), parent[a]
            else:
                kind, b = max(kind, path[b]), parent[b]
            steps += 1
        return a, kind

    def _rule(self, group: _Group, path: FusionKind, phase: int) -> Condition | None:
        if phase == 1 and group.views and path == OUT:
            return _prologue
        if group.kind == OUT:
            return _epilogue if phase == 0 and path <= RED else None
        if group.kind <= BC:
            return _producer if phase == 0 and path <= RED else None
        if group.kind == RED:
            return _consumer if phase == 0 and path <= RED else None
        if group.kind == INJ and phase == 1 and path <= RED:
            return _consumer
        return None

    def _try_fuse(self, node: int, phase: int) -> None:
        sink = self.parent[node]
        group = self.groups[node].root()
        if sink < 0 or group.kind == OPQ:
            return
        target = self.groups[sink].root()
        rule = None if target is group else self._rule(group, self.path_kind[node], phase)
        if rule is None:
            return
        members = self._check_path(node, sink, group, target, rule)
        if members is not None:
            for other in members:
                target.absorb(other)

    def _check_path(self, src: int, sink: int, group: _Group, target: _Group,
                    rule: Condition) -> list[_Group] | None:
        """The groups on every path from `src` to `sink` if the rule allows them all and the size fits."""
        merged = {id(group): group}
        total = target.size + group.size
        if total > self.max_ops:
            return None
        seen = {src}
        stack = [u for u, _ in self.users[src]]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            g = self.groups[node].root()
            if not rule(g.kind, g.views, g is target):
                return None
            if g is not target and id(g) not in merged:
                merged[id(g)] = g
                total += g.size
                if total > self.max_ops:
                    return None
            if node != sink:
                stack.extend(u for u, _ in self.users[node])
        return list(merged.values())

    def _join_producer(self, node: int) -> None:
        """Multi-output fusion: a lone op whose producers here all sit in one group joins it.

        Every path from that group to the op ends with one of those producers, so
        the group stays convex; its result is read once, on chip, instead of again.
        """
        group = self.groups[node].root()
        owners = {id(g): g for g in (self.groups[p].root() for p in self.producers[node])}
        if group.size != 1 or group.kind == OPQ or len(owners) != 1:
            return
        (target,) = owners.values()
        allowed = target.kind <= RED if group.kind == OUT else target.kind < OPQ
        if allowed and target.size + 1 <= self.max_ops:
            target.absorb(group)

    def members(self) -> list[list[Op]]:
        """Each group's ops in order, groups ordered by their first op."""
        by_root: dict[int, list[Op]] = {}
        for n, i in enumerate(self.nodes):
            by_root.setdefault(id(self.groups[n].root()), []).append(self.ops[i])
        return list(by_root.values())


# --- rebuilding the graph ------------------------------------------------------------------
def _rebuild(graph: Graph, partition: _Partition) -> Counter:
    """Replace each group by a fused op (or keep its op), order kernels, drop unused generators."""
    stats: Counter = Counter()
    position = {id(op): i for i, op in enumerate(graph.ops)}
    unit_of: dict[int, int] = {}
    units: list[list[Op]] = []
    for members in partition.members():
        for op in members:
            unit_of[id(op)] = len(units)
        units.append(members)
    fused = [_wants_kernel(members) for members in units]
    escapes = _escaping(graph, unit_of)
    derived = _rederived(graph.ops, unit_of, fused, escapes)
    kept_generators = _kept_generators(graph, unit_of, fused)
    kept = {id(op) for op in kept_generators}
    replace: dict[Value, Value] = {}
    kernels: list[tuple[int, Op]] = []
    for u, members in enumerate(units):
        if fused[u]:
            op = _fuse(members, lambda v, u=u: v not in derived and escapes.get(v, set()) - {u} != set(),
                       derived, stats)
            replace.update(zip(op.region.results, op.results))
        else:
            op = members[0]
        kernels.append((min(position[id(m)] for m in members), op))
    kernels += [(position[id(g)], g) for g in kept_generators]
    stats["bytes-kept-onchip"] += sum(v.type.nbytes for op in graph.ops if is_generator(op) and id(op) not in kept
                                      for v in op.results)
    for _, op in kernels:
        op.operands = [replace.get(v, v) for v in op.operands]
    graph.outputs = {k: replace.get(v, v) for k, v in graph.outputs.items()}
    graph.updates = {k: replace.get(v, v) for k, v in graph.updates.items()}
    graph.ops = _topological(kernels)
    return stats


def _wants_kernel(members: list[Op]) -> bool:
    """Several ops, or one fusable op that uses a generator (the copy makes the top-level one unneeded)."""
    if len(members) > 1:
        return True
    op = members[0]
    return fusion_kind(op) != OPQ and any(v.producer is not None and is_generator(v.producer) for v in op.operands)


def _escaping(graph: Graph, unit_of: dict[int, int]) -> dict[Value, set[int]]:
    """For each value, the units that use it (-1 for outputs, updates and kept generators' users)."""
    users: dict[Value, set[int]] = {}
    for op in graph.ops:
        for value in op.operands:
            users.setdefault(value, set()).add(unit_of.get(id(op), -1))
    for value in graph.live_outs():
        users.setdefault(value, set()).add(-1)
    return users


def _rederived(ops: list[Op], unit_of: dict[int, int], fused: list[bool],
               escapes: dict[Value, set[int]]) -> dict[Value, list[Value]]:
    """Results of ops in fused kernels that the kernels using them re-derive (rule 5), each with
    the operands it is derived from. No plain kernel, output or update uses them; they are views
    that stay strided reads of a tensor in memory anyway, or single-flop elementwise ops of such
    tensors, views and generators that read fewer bytes than they would write."""
    derived: dict[Value, list[Value]] = {}
    layout: dict[Value, tuple[int, tuple[int, ...]]] = {}
    reads: dict[Value, int] = {}  # a derived value's bytes read from memory
    for op in ops:
        u, opdef = unit_of.get(id(op), -1), lookup(op.name)
        if u < 0 or not fused[u] or (opdef.view is None and (opdef.scalar is None or opdef.flops_per_element > 1)):
            continue
        (v,) = op.results
        if not all(w >= 0 and fused[w] for w in escapes.get(v, set()) - {u}):
            continue
        sources = {}
        for x in op.operands:
            if x in derived:
                sources[x] = reads[x]
            elif x.producer is None or unit_of.get(id(x.producer)) != u or escapes.get(x, set()) - {u}:
                sources[x] = 0 if x.producer is not None and is_generator(x.producer) else x.type.nbytes
        if len(sources) < len(set(op.operands)):
            continue
        if opdef.view is not None:
            (x,) = op.operands
            placed = opdef.view(op.attrs, x.type.shape, *layout.get(x, (0, row_major(x.type.shape))))
            if placed is None or placed[0] < 0 or any(s < 0 for s in placed[1]):
                continue
            layout[v] = placed
        elif sum(sources.values()) >= v.type.nbytes:
            continue
        derived[v], reads[v] = list(op.operands), sum(sources.values())
    return derived


def _kept_generators(graph: Graph, unit_of: dict[int, int], fused: list[bool]) -> list[Op]:
    """Generators something outside a fused kernel still uses (a plain op, an output, an update)."""
    needed: set[int] = set()
    for op in graph.ops:
        unit = unit_of.get(id(op))
        if unit is not None and fused[unit]:
            continue
        needed.update(id(v.producer) for v in op.operands if v.producer is not None)
    needed.update(id(v.producer) for v in graph.live_outs() if v.producer is not None)
    return [op for op in graph.ops if is_generator(op) and id(op) in needed]


def _fuse(members: list[Op], escapes: Callable[[Value], bool], derived: dict[Value, list[Value]],
          stats: Counter) -> Op:
    """One fused op whose region holds `members` (moved in), generator and re-derived copies, and
    arguments for the rest."""
    phase, locs, label = members[0].phase, _locs(members), _label(members)
    inside = {id(op) for op in members}
    local: dict[Value, Value] = {}
    region = Region([])
    operands: list[Value] = []
    for op in members:
        op.operands = [_local(v, inside, local, region, operands, derived, stats) for v in op.operands]
        op.phase = None
        region.ops.append(op)
    # a group nothing uses (dead code, left to `dce`) still yields its last value
    region.results = [v for op in members for v in op.results if escapes(v)] or list(members[-1].results)
    stats["bytes-kept-onchip"] += sum(v.type.nbytes for op in members for v in op.results if v not in region.results)
    stats["fused-kernels"] += 1
    stats["ops-fused"] += len(members)
    return make_op("fused", operands, {"label": label}, locs, phase, region)


def _label(members: list[Op]) -> str:
    """The kernel's name: its first distinct op names, e.g. `matmul_add_gelu`."""
    return "_".join(list(dict.fromkeys(op.name for op in members))[:3])


def _locs(members: list[Op]) -> tuple:
    return tuple(dict.fromkeys(loc for op in members for loc in op.locs))


def _topological(kernels: list[tuple[int, Op]]) -> list[Op]:
    """Kernels in dependency order, otherwise by their first op's original position."""
    made = {id(v): k for k, (_, op) in enumerate(kernels) for v in op.results}
    waiting = [0] * len(kernels)
    users: list[list[int]] = [[] for _ in kernels]
    for k, (_, op) in enumerate(kernels):
        for p in {made[id(v)] for v in op.operands if id(v) in made}:
            waiting[k] += 1
            users[p].append(k)
    ready = [(pos, k) for k, (pos, _) in enumerate(kernels) if not waiting[k]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(kernels[k][1])
        for user in users[k]:
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, (kernels[user][0], user))
    assert len(order) == len(kernels), "fusion made a cycle"
    return order


def _local(value: Value, inside: set[int], local: dict[Value, Value], region: Region,
           operands: list[Value], derived: dict[Value, list[Value]], stats: Counter) -> Value:
    """The region's stand-in for an operand: itself if made inside, else a generator or
    re-derived copy, or an argument."""
    if value.producer is not None and id(value.producer) in inside:
        return value
    if value not in local:
        producer = value.producer
        if producer is not None and (is_generator(producer) or value in derived):
            sources = [_local(v, inside, local, region, operands, derived, stats) for v in derived.get(value, [])]
            copy = make_op(producer.name, sources, dict(producer.attrs), producer.locs)
            region.ops.append(copy)
            local[value] = copy.results[value.index]
            stats["ops-rederived" if value in derived else "generators-cloned"] += 1
        else:
            local[value] = Value(value.type)
            region.args.append(local[value])
            operands.append(value)
    return local[value]
