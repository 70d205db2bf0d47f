"""fold-constants: evaluate ops whose operands are all constants.

An operand is constant when its producer has no operands (full, constant, iota,
...). The op is evaluated with its declaration (`evaluate`, i.e. its numpy
reference) and replaced by a `full` when the result is a splat, or by a
`constant` when it has at most `max-elements` elements; anything else is kept.
Elementwise ops over splats are evaluated on one element, whatever their size.
"""
from __future__ import annotations

import attrs
import numpy as np

from compiler.pass_manager.base import Pass, PassContext, option
from compiler.pass_manager.registry import register_pass
from ir.builder import Builder
from ir.graph import Graph, Op, Value
from ir.interpreter import run_region
from ir.ops import FusionKind, lookup
from ir.rewrite import rewrite, splat_value
from ir.scalar import ScalarBuilder, evaluate

#: the largest tensor (in elements) evaluated to find out whether it folds
MAX_EVALUATED = 1 << 20


@register_pass
@attrs.frozen
class FoldConstants(Pass):
    """Replace ops computed from constants alone by a `full` splat or a small `constant`."""

    name = "fold-constants"
    statistics = {"ops-folded": "ops replaced by a constant"}
    max_elements: int = option(64, "largest non-splat result folded into a `constant` literal")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        """Rewrites `graph` in place; ops that became unused are left to `dce`."""
        folder = _Folder(self.max_elements)
        ctx.count("ops-folded", rewrite(graph, folder))
        return graph


class _Folder:
    def __init__(self, max_elements: int):
        self.max_elements = max_elements
        self.values: dict[Value, np.ndarray] = {}

    def __call__(self, b: Builder, op: Op) -> list[Value] | None:
        if not op.operands or op.region is not None or len(op.results) != 1:
            return None
        if not all(v.producer is not None and not v.producer.operands for v in op.operands):
            return None
        array = self.splat_result(op)
        if array is None:
            array = self.evaluate(op)
        folded = None if array is None else self.materialize(b, op.result, array)
        return None if folded is None else [folded]

    def splat_result(self, op: Op) -> np.ndarray | None:
        opdef = lookup(op.name)
        splats = [splat_value(v) for v in op.operands]
        if opdef.scalar is None or opdef.kind > FusionKind.broadcast or None in splats:
            return None
        e = ScalarBuilder()
        args = [e.const(s, v.type.dtype) for s, v in zip(splats, op.operands)]
        element = evaluate(opdef.scalar(e, op.attrs, *args), [])
        return np.broadcast_to(element.astype(op.result.type.dtype.np), op.result.type.shape)

    def evaluate(self, op: Op) -> np.ndarray | None:
        if any(v.type.size > MAX_EVALUATED for v in [*op.operands, op.result]):
            return None
        args = [self.constant(v) for v in op.operands]
        return lookup(op.name).evaluate(op, args, run_region)[0]

    def constant(self, value: Value) -> np.ndarray:
        if value not in self.values:
            producer = value.producer
            self.values[value] = lookup(producer.name).evaluate(producer, [], run_region)[0]
        return self.values[value]

    def materialize(self, b: Builder, result: Value, array: np.ndarray) -> Value | None:
        dtype = result.type.dtype
        flat = array.reshape(-1)
        if flat.size and _is_splat(flat):
            first = flat[0].item()
            if np.full((), float(first), dtype.np).tobytes() == flat[:1].tobytes():
                return b.full(shape=result.type.shape, value=float(first), dtype=dtype)
        if flat.size > self.max_elements:
            return None
        literal = array.astype(np.float64).tolist() if dtype.is_float else array.tolist()
        return b.constant(value=literal, dtype=dtype)


def _is_splat(flat: np.ndarray) -> bool:
    bits = flat.view(f"u{flat.dtype.itemsize}")
    return bool((bits == bits[0]).all())
