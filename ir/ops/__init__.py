"""Every op of the IR, declared once; `lookup(name)` gives a declaration."""
from ir.ops import collective, create, dynamic, elementwise, fused, linalg, nn, reduce, shape  # noqa: F401  (registers)
from ir.ops.base import REGISTRY, Attr, Cost, FusionKind, OpDef, TypeRuleError, lookup, register

__all__ = ["REGISTRY", "Attr", "Cost", "FusionKind", "OpDef", "TypeRuleError", "lookup", "register"]
