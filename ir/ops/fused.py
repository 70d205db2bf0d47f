"""The fused kernel: an op owning a region that computes its results from its operands."""
from __future__ import annotations

from ir.ops.base import Attr, Cost, FusionKind, OpDef, TypeRuleError, lookup, register


@register
class Fused(OpDef):
    """One kernel made of several ops; region arguments stand for the operands."""

    name = "fused"
    kind = FusionKind.opaque
    arity = None
    attrs = {"label": Attr("str", "")}
    owns_region = True

    @classmethod
    def infer_op(cls, op):
        region = op.region
        if region is None:
            raise TypeRuleError("has no region")
        if not region.results:
            raise TypeRuleError("region yields no values")
        if len(region.args) != len(op.operands):
            raise TypeRuleError(f"region takes {len(region.args)} arguments but the op has "
                                f"{len(op.operands)} operands")
        for i, (arg, operand) in enumerate(zip(region.args, op.operands)):
            if arg.type != operand.type:
                raise TypeRuleError(f"region argument {i} is {arg.type} but operand {i} is {operand.type}")
        return [v.type for v in region.results]

    @classmethod
    def evaluate(cls, op, args, interpret):
        return interpret(op.region, args)

    @classmethod
    def cost(cls, op):
        inner = [lookup(o.name).cost(o) for o in op.region.walk()]
        read = sum(v.type.nbytes for v in op.operands)
        written = sum(v.type.nbytes for v in op.results)
        return Cost(sum(c.flops for c in inner), read, written)
