"""`--verify-semantics`: run the reference interpreter around every pass and compare.

Inputs are random but seeded: integers that feed an index operand (a gather's
rows, cross-entropy labels; see `OpDef.index_bounds`) are drawn below that
bound — other integers below the smallest bound in the graph — floats from a
small normal distribution, bools fair. Params come from their initializers.
The first pass whose outputs or param updates differ from the previous ones by
more than the dtype's tolerance is named, with its worst element. Results that
are ill-conditioned (a first Adam step normalizes gradients that are rounding
noise) get a wider tolerance: each result's noise is measured once, by running
the input graph on inputs and params perturbed by a few ulps. A pass that
retypes params (`Pass.retypes_params`: bf16 weights) is checked against the
graph before it run on the params rounded to their new types.
"""
from __future__ import annotations

import attrs
import numpy as np

from compiler.pass_manager.manager import Instrumentation, PassRecord
from ir.dtypes import DType
from ir.errors import ExecutionError, PassError
from ir.graph import Graph, Value
from ir.interpreter import initial_params, interpret
from ir.parser import parse
from ir.printer import print_graph
from ir.ops import FusionKind, lookup

#: (relative, absolute) tolerance per float dtype
TOLERANCES = {DType.f32: (1e-4, 1e-5), DType.f16: (2e-3, 1e-3), DType.bf16: (2e-2, 1e-2)}
FLOAT_STD = 0.5
#: inputs and params are perturbed by this many ulps to measure each result's rounding noise
PERTURBATION_ULPS = 8
NOISE_FACTOR = 4.0
DEFAULT_INDEX_BOUND = 8


def index_bounds(graph: Graph) -> dict[Value, int]:
    """For each value used as indices, the smallest exclusive bound over its uses.

    Bounds flow back through single-operand injective ops (reshape, transpose,
    slice, ...), which move values without changing them.
    """
    bounds: dict[Value, int] = {}
    for op in reversed(list(graph.walk())):
        opdef = lookup(op.name)
        for i, bound in opdef.index_bounds(op).items():
            _lower(bounds, op.operands[i], bound)
        moves = opdef.kind in (FusionKind.injective, FusionKind.broadcast) and opdef.scalar is None
        if moves and len(op.operands) == 1 and op.results[0] in bounds:
            _lower(bounds, op.operands[0], bounds[op.results[0]])
    return bounds


def _lower(bounds: dict[Value, int], value: Value, bound: int) -> None:
    bounds[value] = min(bound, bounds.get(value, bound))


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, integers kept valid as indices."""
    rng = np.random.default_rng(seed)
    bounds = index_bounds(graph)
    smallest = min(bounds.values(), default=DEFAULT_INDEX_BOUND)
    inputs = {}
    for value in graph.inputs:
        dtype, shape = value.type.dtype, value.type.shape
        if dtype.is_float:
            array = rng.normal(0.0, FLOAT_STD, shape)
        elif dtype.is_int:
            array = rng.integers(0, max(bounds.get(value, smallest), 1), shape)
        else:
            array = rng.random(shape) < 0.5
        inputs[value.name] = np.asarray(array).astype(dtype.np)
    return inputs


@attrs.frozen
class Difference:
    """How one result differs: its name and its worst element (index, expected and actual value)."""

    name: str
    abs_diff: float = np.inf
    index: tuple[int, ...] = ()
    expected: float = np.nan
    actual: float = np.nan
    note: str = ""

    @property
    def rel_diff(self) -> float:
        return self.abs_diff / abs(self.expected) if self.expected else np.inf

    def __str__(self) -> str:
        if self.note:
            return f"{self.name}: {self.note}"
        where = f"[{', '.join(map(str, self.index))}]" if self.index else ""
        return (f"{self.name}: max abs diff {self.abs_diff:.3g} (rel {self.rel_diff:.3g}) at {self.name.split()[-1]}"
                f"{where}: expected {self.expected:.6g}, got {self.actual:.6g}")


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            noise: dict[str, float] | None = None) -> Difference | None:
    """The first result of `actual` that is missing from or differs from `expected`.

    An element may differ by the dtype's tolerance plus `NOISE_FACTOR` times the
    result's `noise` (how much it moved when the inputs were perturbed by a few ulps).
    """
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            return Difference(name, note="is no longer computed")
        if got.shape != want.shape or got.dtype != want.dtype:
            return Difference(name, note=f"was {want.dtype}{list(want.shape)}, now {got.dtype}{list(got.shape)}")
        difference = _difference(name, want, got, (noise or {}).get(name, 0.0))
        if difference is not None:
            return difference
    return None


def _difference(name: str, want: np.ndarray, got: np.ndarray, noise: float) -> Difference | None:
    a, b = want.astype(np.float64), got.astype(np.float64)
    rtol, atol = TOLERANCES.get(DType.of(want), (0.0, 0.0))
    with np.errstate(all="ignore"):
        diff = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
        # a NaN expected element gets no relative slack (a NaN tolerance would fail equal NaNs)
        tolerance = atol + NOISE_FACTOR * noise + rtol * np.nan_to_num(np.abs(a), nan=0.0, posinf=np.inf)
        excess = np.nan_to_num(diff - tolerance, nan=np.inf)
    if not (excess > 0).any():
        return None
    index = np.unravel_index(int(np.argmax(excess)), a.shape)
    return Difference(name, float(np.nan_to_num(diff[index], nan=np.inf)), tuple(int(i) for i in index),
                      float(a[index]), float(b[index]))


def _perturbed(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float arrays scaled elementwise by 1 + a few ulps of noise; others unchanged."""
    out = {}
    for name, array in arrays.items():
        if DType.of(array).is_float:
            ulps = PERTURBATION_ULPS * np.finfo(array.dtype).eps * rng.standard_normal(array.shape)
            array = (array.astype(np.float64) * (1.0 + ulps)).astype(array.dtype)
        out[name] = array
    return out


def _noise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    noise = {}
    for name, x in a.items():
        with np.errstate(all="ignore"):
            diff = np.abs(x.astype(np.float64) - b[name].astype(np.float64))
        finite = diff[np.isfinite(diff)]
        noise[name] = float(finite.max()) if finite.size else 0.0
    return noise


def _results(graph: Graph, inputs: dict, params: dict) -> dict[str, np.ndarray]:
    result = interpret(graph, inputs, params)
    return {**{f"output {k}": v for k, v in result.outputs.items()},
            **{f"update @{k}": v for k, v in result.updates.items()}}


class VerifySemantics(Instrumentation):
    """Interpret the graph after every pass; PassError naming the first pass that changes a result."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.inputs: dict[str, np.ndarray] = {}
        self.params: dict[str, np.ndarray] = {}
        self.expected: dict[str, np.ndarray] = {}
        self.noise: dict[str, float] = {}
        #: a copy of the graph before a pass that retypes params
        self.before: Graph | None = None

    def before_pipeline(self, graph: Graph) -> None:
        self.inputs = random_inputs(graph, self.seed)
        self.params = initial_params(graph, self.seed)
        rng = np.random.default_rng([self.seed, 1])
        try:
            self.expected = _results(graph, self.inputs, self.params)
            perturbed = _results(graph, _perturbed(self.inputs, rng), _perturbed(self.params, rng))
        except ExecutionError as err:
            raise PassError(f"--verify-semantics cannot run the input graph on random inputs: "
                            f"{err.message}") from None
        self.noise = _noise(self.expected, perturbed)

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        self.before = parse(print_graph(graph)) if record.pass_.retypes_params else None

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if self.before is not None:
            self._round_params(graph)
        try:
            actual = _results(graph, self.inputs, self.params)
        except ExecutionError as err:
            raise PassError(f"pass {record.label} broke the program: {err.message}") from None
        difference = compare(self.expected, actual, self.noise)
        if difference is not None:
            raise PassError(f"pass {record.label} changed the program's results "
                            f"(seed {self.seed}): {difference}")
        self.expected = actual

    def _round_params(self, graph: Graph) -> None:
        """Params rounded to their new types; expected: the graph before the pass on them."""
        self.params = {p.name: self.params[p.name].astype(p.type.dtype.np) for p in graph.params}
        widened = {p.name: self.params[p.name].astype(p.type.dtype.np) for p in self.before.params}
        self.expected = _results(self.before, self.inputs, widened)
