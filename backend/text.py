"""Readable text of kernel programs, for `rduflow pef dump` and debugging.

    kernel k0_fwd (fused, fwd, mlp.rdl:4:3): 2 stages, 8 PCUs, 18 PMUs, 1,344 flops
      buffers
        %x      input   f32[4,8]    ddr+0
        ...
      stage 0: gemm -> t1 [4,16] tile [4,16], m=4 n=16 k=8, a=%x+0(8,1) b=@w1+0(1,8)
        epilogue
          v0 = acc : f32
          ...
"""
from __future__ import annotations

import attrs

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Affine, Body
from backend.pef.stages import Stage
from ir.errors import display_location


def _dims(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def format_access(access: Access) -> str:
    return f"{access.buffer}+{access.offset}({','.join(map(str, access.strides))})"


def _affine(affine: Affine) -> str:
    return f"{affine.offset}+({','.join(map(str, affine.coeffs))})·i"


def format_body(body: Body, indent: str) -> list[str]:
    """One line per read, index and node."""
    lines = [f"{indent}r{i} = {format_access(r)}" for i, r in enumerate(body.reads)]
    lines += [f"{indent}x{i} = {_affine(a)}" for i, a in enumerate(body.indices)]
    for i, node in enumerate(body.nodes):
        if node.op == "arg":
            rhs = f"load r{node.value}"
        elif node.op == "index":
            rhs = f"index x{node.value}"
        elif node.op == "const":
            rhs = f"const {node.value!r}"
        else:
            rhs = " ".join([node.op] + [", ".join(f"v{a}" for a in node.args)]).strip()
        lines.append(f"{indent}v{i} = {rhs} : {node.dtype}")
    return lines


def _params(stage: Stage) -> str:
    """The stage's scalar fields and accesses, `name=value`, bodies left out."""
    parts = []
    for field in attrs.fields(type(stage)):
        value = getattr(stage, field.name)
        if field.name == "out" or isinstance(value, Body) or value is None:
            continue
        if isinstance(value, Access):
            value = format_access(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], Access):
            value = "[" + ", ".join(format_access(v) for v in value) + "]"
        elif isinstance(value, tuple):
            value = _dims(value) if not value or not isinstance(value[0], tuple) else \
                "[" + ", ".join(_dims(v) for v in value) + "]"
        parts.append(f"{field.name}={value}")
    return " ".join(parts)


def format_kernel(program: KernelProgram, section: int | None = None) -> str:
    where = ", ".join(x for x in (program.op, program.phase, display_location(program.loc)) if x)
    schedule, cost = program.schedule, program.cost
    head = (f"kernel {program.name} ({where}): {len(program.stages)} stage(s), {schedule.pcus} PCUs, "
            f"{schedule.pmus} PMUs, {cost.flops:,} flops")
    if section is not None:
        head += f", section {section}"
    lines = [head, "  buffers"]
    width = max((len(b.name) for b in program.buffers), default=0)
    for b in program.buffers:
        lines.append(f"    {b.name:<{width}}  {b.role:<6}  {b.dtype}{_dims(b.shape):<14} {b.tier}+{b.offset}")
    for i, stage in enumerate(program.stages):
        out = program.buffer(stage.out)
        tile = schedule.tiles[i] if i < len(schedule.tiles) else ()
        lines.append(f"  stage {i}: {stage.kind} -> {stage.out} {_dims(out.shape)} tile {_dims(tile)}  {_params(stage)}")
        for name in ("body", "epilogue"):
            body = getattr(stage, name, None)
            if body is not None:
                lines.append(f"    {name}")
                lines += format_body(body, "      ")
    read = ", ".join(f"{t} {n:,}" for t, n in cost.bytes_read.items()) or "-"
    written = ", ".join(f"{t} {n:,}" for t, n in cost.bytes_written.items()) or "-"
    lines.append(f"  bytes read: {read}; written: {written}")
    return "\n".join(lines)
