"""Lowering of kernel-program expression bodies (serialized `ir.scalar` DAGs) to LLVM values.

Floats compute in f32; a result of a narrower float dtype (f16, bf16) is rounded to
that precision after each primitive, as the reference interpreter does.
"""
from __future__ import annotations

from typing import Callable, Sequence

import llvmlite.ir as ir

from backend.pef.records import Node
from ir.dtypes import DType
from ir.scalar import PRIMITIVES
from runtime.jit import mathlib
from runtime.jit.codegen import F32, I1, compute_type, constant, intrinsic, round_to

FAST = ("contract",)

Leaf = Callable[[Node], ir.Value]

_FLOAT_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _float_binary(b: ir.IRBuilder, op: str, x: ir.Value, y: ir.Value) -> ir.Value:
    if op == "add":
        return b.fadd(x, y, flags=FAST)
    if op == "sub":
        return b.fsub(x, y, flags=FAST)
    if op == "mul":
        return b.fmul(x, y, flags=FAST)
    if op == "div":
        return b.fdiv(x, y)
    if op == "max":
        return intrinsic(b, "llvm.maximum", x, y)
    if op == "min":
        return intrinsic(b, "llvm.minimum", x, y)
    if op == "pow":
        return mathlib.call(b, "pow", x, y)
    if op == "ne":
        return b.fcmp_unordered("!=", x, y)
    return b.fcmp_ordered(_FLOAT_CMP[op], x, y)


def _int_binary(b: ir.IRBuilder, op: str, x: ir.Value, y: ir.Value) -> ir.Value:
    if op in ("add", "sub", "mul"):
        return getattr(b, op)(x, y)
    if op in ("max", "min"):
        if x.type == I1:
            return b.or_(x, y) if op == "max" else b.and_(x, y)
        return intrinsic(b, f"llvm.s{op}", x, y)
    if op in _FLOAT_CMP:
        return b.icmp_signed(_FLOAT_CMP[op], x, y)
    raise NotImplementedError(f"primitive '{op}' on integers")


def _float_unary(b: ir.IRBuilder, op: str, x: ir.Value) -> ir.Value:
    if op == "neg":
        return b.fneg(x)
    if op == "abs":
        return intrinsic(b, "llvm.fabs", x)
    if op == "sqrt":
        return intrinsic(b, "llvm.sqrt", x)
    return mathlib.call(b, op, x)


def _int_unary(b: ir.IRBuilder, op: str, x: ir.Value) -> ir.Value:
    if op == "neg":
        return b.neg(x)
    if op == "abs":
        fn = b.module.declare_intrinsic("llvm.abs", [x.type], ir.FunctionType(x.type, [x.type, I1]))
        return b.call(fn, [x, ir.Constant(I1, 0)])
    raise NotImplementedError(f"primitive '{op}' on integers")


def cast(b: ir.IRBuilder, x: ir.Value, src: DType, dst: DType) -> ir.Value:
    """numpy's astype between compute values (float -> int truncates, saturating)."""
    target = compute_type(dst)
    if src == dst:
        return x
    if src.is_float and dst.is_float:
        return round_to(b, x, dst)
    if src.is_float:
        if dst == DType.bool:
            return b.fcmp_unordered("!=", x, ir.Constant(F32, 0.0))
        fn = b.module.declare_intrinsic("llvm.fptosi.sat", [target, F32], ir.FunctionType(target, [F32]))
        return b.call(fn, [x])
    if dst.is_float:
        value = b.uitofp(x, F32) if src == DType.bool else b.sitofp(x, F32)
        return round_to(b, value, dst)
    if dst == DType.bool:
        return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
    if src == DType.bool:
        return b.zext(x, target)
    if target.width < x.type.width:
        return b.trunc(x, target)
    return b.sext(x, target) if target.width > x.type.width else x


def emit_body(b: ir.IRBuilder, nodes: Sequence[Node], leaf: Leaf) -> ir.Value:
    """The value of a body's node list (the last node); `leaf(node)` gives arg/index/acc nodes."""
    values: list[ir.Value] = []
    for node in nodes:
        dtype = DType(node.dtype)
        if node.op in ("arg", "index", "acc"):
            value = leaf(node)
        elif node.op == "const":
            value = constant(dtype, node.value)
        elif node.op == "cast":
            (x,) = node.args
            value = cast(b, values[x], DType(nodes[x].dtype), dtype)
        else:
            value = _primitive(b, node.op, DType(nodes[node.args[0]].dtype), dtype,
                               [values[a] for a in node.args])
        values.append(value)
    return values[-1]


def _primitive(b: ir.IRBuilder, op: str, operand_dtype: DType, dtype: DType,
               args: list[ir.Value]) -> ir.Value:
    if op not in PRIMITIVES:
        raise NotImplementedError(f"unknown scalar primitive '{op}'")
    if op == "select":
        return b.select(*args)
    if len(args) == 1:
        value = _float_unary(b, op, *args) if operand_dtype.is_float else _int_unary(b, op, *args)
    elif operand_dtype.is_float:
        value = _float_binary(b, op, *args)
    else:
        value = _int_binary(b, op, *args)
    return round_to(b, value, dtype) if dtype.is_float else value
