"""The IR text form: deterministic, MLIR/jaxpr-like; `parse(print_graph(g))` rebuilds `g`.

Inputs print as `%name`, params as `@name`, op results and region arguments as
`%0, %1, ...` in print order. A `^phase:` label starts each run of ops tagged
with one training phase.
"""
from __future__ import annotations

import json

from ir.errors import Location, display_path
from ir.graph import Graph, Op, Region, Value
from ir.literals import format_literal
from ir.ops import lookup


class Namer:
    """Gives every value its printed name, numbering unnamed ones in order."""

    def __init__(self, graph: Graph | None = None):
        self.names: dict[Value, str] = {}
        self.counter = 0
        if graph is not None:
            for value in graph.inputs:
                self.names[value] = f"%{value.name}"
            for param in graph.params:
                self.names[param.value] = f"@{param.name}"

    def define(self, value: Value) -> str:
        name = self.names[value] = f"%{self.counter}"
        self.counter += 1
        return name

    def __getitem__(self, value: Value) -> str:
        return self.names.get(value, "<undefined>")


def format_locs(locs: tuple[Location, ...]) -> str:
    parts = ", ".join(f"{json.dumps(display_path(loc.file))}:{loc.line}:{loc.col}" for loc in locs)
    return f" loc({parts})"


def format_mem(values: list[Value]) -> str:
    """` mem(ddr:0, onchip:64)`: the values' placements (`none` for an unplaced one), if any is placed."""
    if all(v.mem is None for v in values):
        return ""
    return " mem(" + ", ".join(str(v.mem) if v.mem else "none" for v in values) + ")"


def format_attrs(op: Op) -> str:
    spec = lookup(op.name).attrs
    shown = [(k, v) for k, v in sorted(op.attrs.items()) if k not in spec or v != spec[k].default]
    if not shown:
        return ""
    return " {" + ", ".join(f"{k} = {format_literal(v)}" for k, v in shown) + "}"


class Printer:
    def __init__(self, graph: Graph, with_locs: bool = True):
        self.graph = graph
        self.with_locs = with_locs
        self.namer = Namer(graph)
        self.lines: list[str] = []

    def run(self) -> str:
        g = self.graph
        self.lines.append(f"graph @{g.name} {{")
        for value in g.inputs:
            self.lines.append(f"  input %{value.name} : {value.type}{format_mem([value])}")
        for param in g.params:
            self.lines.append(f"  {param.role.value} @{param.name} : {param.type} = {param.init}{format_mem([param.value])}")
        phase = None
        for op in g.ops:
            if op.phase != phase:
                phase = op.phase
                self.lines.append(f"^{phase.value if phase else 'untagged'}:")
            self.op(op, "  ")
        for name, value in g.outputs.items():
            self.lines.append(f"  output {name} = {self.namer[value]}")
        for name, value in g.updates.items():
            self.lines.append(f"  update @{name} = {self.namer[value]}")
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def op(self, op: Op, indent: str) -> None:
        operands = ", ".join(self.namer[v] for v in op.operands)
        results = ", ".join(self.namer.define(v) for v in op.results)
        types = ", ".join(str(v.type) for v in op.results)
        loc = format_locs(op.locs) if self.with_locs and op.locs else ""
        head = f"{indent}{results} = {op.name}({operands}){format_attrs(op)} : {types}{format_mem(op.results)}{loc}"
        if op.region is None:
            self.lines.append(head)
            return
        self.lines.append(head + " {")
        self.region(op.region, indent)
        self.lines.append(f"{indent}}}")

    def region(self, region: Region, indent: str) -> None:
        args = ", ".join(f"{self.namer.define(a)}: {a.type}" for a in region.args)
        self.lines.append(f"{indent}^({args}):")
        for op in region.ops:
            self.op(op, indent + "  ")
        self.lines.append(f"{indent}  yield {', '.join(self.namer[v] for v in region.results)}")


def print_graph(graph: Graph, with_locs: bool = True) -> str:
    """The graph's text form."""
    return Printer(graph, with_locs).run()
