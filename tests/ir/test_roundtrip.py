"""print(parse(print(g))) == print(g) over random graphs of 50+ ops, and a stable printer."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ir.builder import Builder, make_op
from ir.dtypes import DType, bf16, boolean, f16, f32, i32, i64
from ir.errors import Location
from ir.graph import Graph, Phase, Placement, Region, Role, Value
from ir.init import Init
from ir.interpreter import interpret
from ir.parser import parse, parse_with_positions
from ir.printer import print_graph
from ir.types import TensorType
from ir.verifier import verify

FLOATS = [f32, bf16, f16]
NUMERIC = FLOATS + [i32, i64]
ALL = NUMERIC + [boolean]

ident = st.sampled_from(["x", "h", "logits", "_t", "Loss2", "out_a"])
dotted = st.sampled_from(["w", "fc1.weight", "layer.0.bias", "emb_2", "ln_f.scale", "_b.1"])
ODD_FILES = ["model.rdl", "dir/a b.rdl", 'quo"te.rdl', "back\\slash\\x.rdl", "new\nline", "ünï©ødé", "", "<builtin>"]
locations = st.one_of(
    st.builds(Location, st.sampled_from(ODD_FILES), st.integers(1, 10_000), st.integers(1, 300)),
    st.builds(Location, st.text(max_size=6), st.just(1), st.just(1)))
inits = st.one_of(
    st.sampled_from([Init("zeros"), Init("ones"), Init("xavier_uniform"), Init("glorot_normal"),
                     Init("kaiming_uniform")]),
    st.builds(lambda m, s: Init("normal", {"mean": m, "std": s}),
              st.floats(-1, 1), st.floats(0, 1)),
    st.builds(lambda lo, w: Init("uniform", {"low": lo, "high": lo + w}), st.floats(-2, 2), st.floats(0, 2)),
    st.builds(lambda v: Init("constant", {"value": v}), st.one_of(st.integers(-5, 5), st.floats(-5, 5))),
    st.builds(lambda g: Init("xavier_normal", {"gain": g}), st.floats(0.1, 3)),
    st.builds(lambda f: Init("kaiming_uniform", {"fan": f}), st.sampled_from(["in", "out"])),
)


def element(dtype: DType):
    """A literal element of `dtype`: any float (nan and infinities too), a small int, or a bool."""
    if dtype == boolean:
        return st.booleans()
    if dtype.is_int:
        return st.integers(-50, 50)
    return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-300, 1e30, 0.1]),
                     st.floats(-100, 100), st.integers(-9, 9))


def nested(flat: list, shape: tuple[int, ...]):
    if not shape:
        return flat[0]
    step = len(flat) // shape[0] if shape[0] else 0
    return tuple(nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0]))


class Gen:
    """Grows a graph (or a region) op by op from hypothesis draws, keeping a pool of values."""

    def __init__(self, draw, b: Builder, pool: list[Value], depth: int = 0):
        self.draw, self.b, self.pool, self.depth = draw, b, pool, depth
        self.params = 0

    # --- values ----------------------------------------------------------------------
    def shape(self, min_rank=0, max_rank=3) -> tuple[int, ...]:
        return tuple(self.draw(st.lists(st.integers(1, 3), min_size=min_rank, max_size=max_rank)))

    def fresh(self, type: TensorType) -> Value:
        """A new value of `type` from a generator op (or, at top level, a new param)."""
        kinds = ["full", "constant"] + (["iota"] if type.rank and type.dtype != boolean else [])
        kinds += ["param"] if self.depth == 0 and type.dtype.is_float else []
        kind = self.draw(st.sampled_from(kinds))
        if kind == "full":
            value = self.draw(element(type.dtype)) if type.dtype != boolean else float(self.draw(st.booleans()))
            return self.b.full(shape=type.shape, value=float(value), dtype=type.dtype)
        if kind == "constant":
            flat = self.draw(st.lists(element(type.dtype), min_size=type.size, max_size=type.size))
            return self.b.constant(value=nested(flat, type.shape), dtype=type.dtype)
        if kind == "iota":
            return self.b.iota(shape=type.shape, axis=self.draw(st.integers(0, type.rank - 1)), dtype=type.dtype)
        return self.param(type)

    def param(self, type: TensorType, role: Role | None = None) -> Value:
        self.params += 1
        role = role or self.draw(st.sampled_from(list(Role)))
        name = f"w{self.params}.{self.draw(dotted)}"
        return self.b.param(name, type, self.draw(inits), role)

    def value_of(self, type: TensorType) -> Value:
        return self.value(lambda t: t == type, type)

    def value(self, ok=lambda t: True, make: TensorType | None = None) -> Value:
        """A pool value whose type satisfies `ok`, or a fresh one of type `make`."""
        found = [v for v in self.pool if ok(v.type)]
        if found and (make is None or self.draw(st.booleans())):
            return self.draw(st.sampled_from(found))
        if make is None:
            make = TensorType(self.shape(), self.draw(st.sampled_from(ALL)))
        return self.fresh(make)

    def typed(self, dtypes, min_rank=0, max_rank=3) -> Value:
        dtype = self.draw(st.sampled_from(dtypes))
        return self.value(lambda t: t.dtype in dtypes and min_rank <= t.rank <= max_rank,
                          TensorType(self.shape(min_rank, max_rank), dtype))

    def partner(self, x: Value, dtype: DType | None = None) -> Value:
        """A value broadcasting against `x`: same shape, a suffix, size-1 dims, or a scalar."""
        dims = list(x.type.shape)
        shape = self.draw(st.sampled_from([
            tuple(dims), tuple(dims[len(dims) // 2:]), (), tuple(1 if i % 2 else d for i, d in enumerate(dims)),
            (2,) + tuple(dims)]))
        return self.value_of(TensorType(shape, dtype or x.type.dtype))

    # --- ops -------------------------------------------------------------------------
    def unary(self):
        name = self.draw(st.sampled_from(["exp", "log", "sqrt", "rsqrt", "tanh", "sin", "cos", "erf", "sigmoid",
                                          "relu", "silu", "gelu", "neg", "abs"]))
        x = self.typed(NUMERIC if name in ("neg", "abs") else FLOATS)
        attrs = {"approximate": self.draw(st.sampled_from(["tanh", "none"]))} if name == "gelu" else {}
        return self.b.op(name, x, **attrs)

    def cast(self):
        return self.b.cast(self.value(), dtype=self.draw(st.sampled_from(ALL)))

    def binary(self):
        name = self.draw(st.sampled_from(["add", "sub", "mul", "maximum", "minimum", "div", "pow",
                                          "eq", "ne", "lt", "le", "gt", "ge"]))
        x = self.typed(FLOATS if name in ("div", "pow") else NUMERIC)
        y = self.partner(x)
        return self.b.op(name, *self.draw(st.permutations([x, y])))

    def where(self):
        x = self.typed(ALL)
        return self.b.where(self.partner(x, boolean), x, self.partner(x))

    def reduce(self):
        name = self.draw(st.sampled_from(["sum", "max", "mean"]))
        x = self.typed(FLOATS if name == "mean" else NUMERIC)
        rank = x.type.rank
        axes = self.draw(st.one_of(st.sampled_from([None, ()]), st.lists(
            st.integers(0, max(rank - 1, 0)), unique=True, max_size=rank).map(
            lambda a: tuple(i - rank if i % 2 else i for i in a))))
        return self.b.op(name, x, axes=axes, keepdims=self.draw(st.booleans()))

    def argmax(self):
        x = self.typed(ALL, 1)
        return self.b.argmax(x, axis=self.draw(st.integers(-x.type.rank, x.type.rank - 1)),
                             keepdims=self.draw(st.booleans()))

    def softmax(self):
        x = self.typed(FLOATS, 1)
        name = self.draw(st.sampled_from(["softmax", "log_softmax"]))
        return self.b.op(name, x, axis=self.draw(st.integers(-x.type.rank, x.type.rank - 1)))

    def reshape(self):
        x = self.value()
        shape = self.draw(st.sampled_from([(x.type.size,), (1,) + x.type.shape, x.type.shape[::-1], ()]))
        return self.b.reshape(x, shape=shape if math.prod(shape) == x.type.size else (x.type.size,))

    def transpose(self):
        x = self.value()
        return self.b.transpose(x, perm=tuple(self.draw(st.permutations(range(x.type.rank)))))

    def broadcast_to(self):
        x = self.value()
        shape = tuple(self.draw(st.integers(1, 3)) if d == 1 else d for d in x.type.shape)
        return self.b.broadcast_to(x, shape=(self.draw(st.integers(1, 2)),) + shape)

    def slice(self):
        x = self.value(lambda t: t.rank >= 1, TensorType(self.shape(1), self.draw(st.sampled_from(ALL))))
        starts = tuple(self.draw(st.integers(0, d - 1)) for d in x.type.shape)
        stops = tuple(self.draw(st.integers(s + 1, d)) for s, d in zip(starts, x.type.shape))
        steps = self.draw(st.one_of(st.none(), st.tuples(*(st.integers(1, 2) for _ in starts))))
        return self.b.slice(x, starts=starts, stops=stops, steps=steps)

    def concat(self):
        x = self.typed(ALL, 1)
        return self.b.concat(*[x] * self.draw(st.integers(1, 3)), axis=self.draw(st.integers(-1, x.type.rank - 1)))

    def gather(self):
        table = self.typed(ALL, 1)
        axis = self.draw(st.integers(-table.type.rank, table.type.rank - 1))
        shape = self.shape(0, 2)
        rows = self.draw(st.lists(st.integers(0, table.type.shape[axis] - 1), min_size=math.prod(shape),
                                  max_size=math.prod(shape)))
        indices = self.b.constant(value=nested(rows, shape), dtype=self.draw(st.sampled_from([i32, i64])))
        return self.b.gather(table, indices, axis=axis)

    def matmul(self):
        a = self.typed(FLOATS, 2)
        ta, tb = self.draw(st.booleans()), self.draw(st.booleans())
        k = a.type.shape[-2] if ta else a.type.shape[-1]
        n = self.draw(st.integers(1, 3))
        w = self.value_of(TensorType((n, k) if tb else (k, n), a.type.dtype))
        return self.b.matmul(a, w, transpose_a=ta, transpose_b=tb)

    def norm(self):
        x = self.typed(FLOATS, 1)
        feature = TensorType(x.type.shape[-1:], x.type.dtype)
        eps = self.draw(st.floats(1e-12, 1.0))
        if self.draw(st.booleans()):
            return self.b.layer_norm(x, self.value_of(feature), self.value_of(feature), eps=eps)
        return self.b.rms_norm(x, self.value_of(feature), eps=eps)

    def cross_entropy(self):
        logits = self.typed(FLOATS, 1)
        shape, classes = logits.type.shape[:-1], logits.type.shape[-1]
        flat = self.draw(st.lists(st.integers(0, classes - 1), min_size=math.prod(shape), max_size=math.prod(shape)))
        labels = self.b.constant(value=nested(flat, shape), dtype=self.draw(st.sampled_from([i32, i64])))
        mask = self.draw(st.sampled_from([[], [boolean], [f32]]))
        return self.b.cross_entropy(logits, labels, *(self.value_of(TensorType(shape, m)) for m in mask))

    def conv(self):
        c, groups = self.draw(st.sampled_from([(1, 1), (2, 1), (2, 2)]))
        x = self.value_of(TensorType((self.draw(st.integers(1, 2)), c, 4, 4), self.draw(st.sampled_from(FLOATS))))
        k = self.draw(st.integers(1, 2))
        if self.draw(st.booleans()):
            w = self.value_of(TensorType((2, c // groups, k, k), x.type.dtype))
            return self.b.conv2d(x, w, stride=(self.draw(st.integers(1, 2)), 1), padding=(0, k - 1),
                                 dilation=(1, self.draw(st.integers(1, 2))), groups=groups)
        name = self.draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
        stride = self.draw(st.one_of(st.none(), st.tuples(st.integers(1, 2), st.integers(1, 2))))
        return self.b.op(name, x, kernel=(k, 2), stride=stride, padding=(k // 2, 1))

    def generator(self):
        kind = self.draw(st.sampled_from(["fresh", "causal_mask"]))
        if kind == "causal_mask":
            return self.b.causal_mask(rows=self.draw(st.integers(1, 3)), cols=self.draw(st.integers(1, 4)),
                                      offset=self.draw(st.integers(-2, 2)))
        return self.fresh(TensorType(self.shape(), self.draw(st.sampled_from(ALL))))

    def fused(self):
        operands = self.draw(st.lists(st.sampled_from(self.pool), min_size=1, max_size=3)) if self.pool \
            else [self.typed(FLOATS)]
        region = Region([Value(v.type) for v in operands])
        inner = Gen(self.draw, Builder(self.b.graph, region.ops), list(region.args), self.depth + 1)
        for _ in range(self.draw(st.integers(1, 4))):
            inner.step()
        region.results = self.draw(st.lists(st.sampled_from(inner.pool), min_size=1, max_size=3))
        label = self.draw(st.one_of(st.just(""), st.text(max_size=8)))
        op = make_op("fused", operands, {"label": label}, self.b.locs, self.b.phase, region)
        self.b.ops.append(op)
        return tuple(op.results)

    STEPS = ["unary", "cast", "binary", "where", "reduce", "argmax", "softmax", "reshape", "transpose",
             "broadcast_to", "slice", "concat", "gather", "matmul", "norm", "cross_entropy", "conv", "generator",
             "fused"]

    def step(self) -> None:
        steps = self.STEPS if self.depth < 2 else self.STEPS[:-1]
        locs = self.draw(st.lists(locations, max_size=2))
        phase = self.draw(st.sampled_from([None, *Phase]))
        with self.b.at(*locs), self.b.in_phase(phase):
            out = getattr(self, self.draw(st.sampled_from(steps)))()
        self.pool.extend(out if isinstance(out, tuple) else (out,))


@st.composite
def graphs(draw, min_ops: int = 50) -> Graph:
    b = Builder(Graph(draw(ident)))
    gen = Gen(draw, b, [])
    names = draw(st.lists(dotted, min_size=1, max_size=4, unique=True))
    for name in names:
        gen.pool.append(b.input(f"in_{name}", TensorType(gen.shape(), draw(st.sampled_from(ALL)))))
    for role in Role:
        gen.pool.append(gen.param(TensorType(gen.shape(1), draw(st.sampled_from(FLOATS))), role))
    while len(b.graph.ops) < min_ops:
        gen.step()
    for i, value in enumerate(draw(st.lists(st.sampled_from(gen.pool), min_size=1, max_size=5))):
        b.output(f"{draw(ident)}_{i}", value)
    for param in b.graph.params:
        if param.role != Role.buffer and draw(st.booleans()):
            b.update(param.name, b.neg(param.value))
    place(b.graph, draw(st.randoms(use_true_random=False)))
    return b.graph


def place(graph: Graph, rnd) -> None:
    """A memory plan on some values (as `plan-memory` leaves one): `mem(tier:offset)` or unplaced."""
    values = [*graph.inputs, *(p.value for p in graph.params), *(r for op in graph.walk() for r in op.results)]
    for value in values:
        if rnd.random() < 0.4:
            value.mem = Placement(rnd.choice(["ddr", "hbm", "onchip", "pmu_3"]), rnd.randrange(0, 1 << 40, 64))


def random_inputs(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.uniform(-3, 3, v.type.shape).astype(v.type.dtype.np) for v in graph.inputs}


def assert_same_results(g1: Graph, g2: Graph, seed: int) -> None:
    inputs = random_inputs(g1, seed)
    r1, r2 = interpret(g1, inputs, seed=seed), interpret(g2, inputs, seed=seed)
    assert list(r1.outputs) == list(r2.outputs) and list(r1.updates) == list(r2.updates)
    for name, a, b in zip([*r1.outputs, *r1.updates], [*r1.outputs.values(), *r1.updates.values()],
                          [*r2.outputs.values(), *r2.updates.values()]):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:  # the text form keeps a NaN, not its sign or payload
            np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64), err_msg=name)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs(), st.integers(0, 2**16))
def test_print_parse_print_is_identity(graph: Graph, seed: int):
    assert len(graph.ops) >= 50
    verify(graph)
    text = print_graph(graph)
    parsed, positions = parse_with_positions(text, "random.ir")
    verify(parsed, positions)
    assert print_graph(parsed) == text
    assert print_graph(parsed, with_locs=False) == print_graph(graph, with_locs=False)
    assert_same_results(graph, parsed, seed)


def test_random_graphs_cover_the_ir():
    """The generator reaches every op kind, attribute kind, role, phase and multi-result fused ops."""
    seen_ops, roles, phases, attr_kinds, multi, count, placed = set(), set(), set(), set(), False, 0, 0

    @settings(max_examples=10, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(graphs())
    def collect(graph):
        nonlocal multi, count, placed
        count += 1
        placed += sum(r.mem is not None for op in graph.walk() for r in op.results)
        for op in graph.walk():
            seen_ops.add(op.name)
            phases.add(op.phase)
            multi |= op.name == "fused" and len(op.results) > 1
            attr_kinds.update(type(v).__name__ for v in op.attrs.values())
        roles.update(p.role for p in graph.params)

    collect()
    assert count == 10 and placed
    assert roles == set(Role) and set(Phase) | {None} == phases and multi
    assert {"fused", "matmul", "conv2d", "gather", "cross_entropy", "constant", "slice"} <= seen_ops
    assert {"int", "float", "bool", "str", "tuple", "DType", "NoneType"} <= attr_kinds


def _model() -> Graph:
    """A small training-shaped graph built the way the frontend builds one."""
    b = Builder(Graph("mlp"))
    x = b.input("x", TensorType((4, 8), f32))
    labels = b.input("labels", TensorType((4,), i32))
    w = b.param("fc1.weight", TensorType((16, 8), f32), Init("kaiming_uniform"))
    bias = b.param("fc1.bias", TensorType((16,), f32), Init("zeros"), Role.buffer)
    m = b.param("fc1.weight.m", TensorType((16, 8), f32), Init("zeros"), Role.state)
    with b.in_phase(Phase.fwd), b.at(Location("mlp.rdl", 3, 5)):
        h = b.gelu(b.add(b.matmul(x, w, transpose_b=True), bias))
        loss = b.cross_entropy(b.slice(h, starts=(0, 0), stops=(4, 10)), labels)
    with b.in_phase(Phase.opt), b.at(Location("mlp.rdl", 9, 1), Location("<optimizer>", 1, 1)):
        b.update("fc1.weight.m", b.add(b.mul(m, b.scalar(0.9, f32)), w))
        b.update("fc1.weight", b.sub(w, b.mul(m, b.scalar(0.01, f32))))
    b.output("loss", loss)
    return b.graph


def test_printing_is_stable_across_builds():
    first, second = print_graph(_model()), print_graph(_model())
    assert first == second
    assert print_graph(parse(first)) == first
    assert first == """\
graph @mlp {
  input %x : f32[4,8]
  input %labels : i32[4]
  param @fc1.weight : f32[16,8] = kaiming_uniform
  buffer @fc1.bias : f32[16] = zeros
  state @fc1.weight.m : f32[16,8] = zeros
^fwd:
  %0 = matmul(%x, @fc1.weight) {transpose_b = true} : f32[4,16] loc("mlp.rdl":3:5)
  %1 = add(%0, @fc1.bias) : f32[4,16] loc("mlp.rdl":3:5)
  %2 = gelu(%1) : f32[4,16] loc("mlp.rdl":3:5)
  %3 = slice(%2) {starts = [0, 0], stops = [4, 10]} : f32[4,10] loc("mlp.rdl":3:5)
  %4 = cross_entropy(%3, %labels) : f32[] loc("mlp.rdl":3:5)
^opt:
  %5 = full() {value = 0.9} : f32[] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  %6 = mul(@fc1.weight.m, %5) : f32[16,8] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  %7 = add(%6, @fc1.weight) : f32[16,8] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  %8 = full() {value = 0.01} : f32[] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  %9 = mul(@fc1.weight.m, %8) : f32[16,8] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  %10 = sub(@fc1.weight, %9) : f32[16,8] loc("mlp.rdl":9:1, "<optimizer>":1:1)
  output loss = %4
  update @fc1.weight.m = %7
  update @fc1.weight = %10
}
"""
