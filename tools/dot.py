"""A Graphviz DOT view of a graph: fused regions as clusters, training phases as colors.

Node labels use the value names of the IR text form, so the picture and
`rduflow opt` output can be read side by side. `render_svg` draws it with Graphviz's `dot`
(`--emit svg`).
"""
from __future__ import annotations

import json
import shutil
import subprocess

from ir.errors import ConfigError
from ir.graph import Graph, Op, Phase, Value
from ir.printer import Namer

PHASE_COLORS = {None: "#ffffff", Phase.fwd: "#cfe2f3", Phase.bwd: "#fce5cd", Phase.allreduce: "#f4cccc",
                Phase.gradnorm: "#d9ead3", Phase.opt: "#d9d2e9"}


def _quote(text: str) -> str:
    return json.dumps(text)


class _Dot:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.namer = Namer(graph)
        self.lines: list[str] = []
        self.source: dict[Value, str] = {}
        self.clusters = 0
        self.nodes = 0

    def run(self) -> str:
        g = self.graph
        self.lines += [f"digraph {_quote(g.name)} {{", "  rankdir=TB;",
                       '  node [shape=box, style="rounded,filled", fontname="monospace", fillcolor="#ffffff"];',
                       '  edge [color="#555555"];']
        for value in g.inputs:
            self.value_node(value, f"in_{value.name}", "ellipse", "#eeeeee", "input")
        for param in g.params:
            self.value_node(param.value, f"param_{param.name}", "cylinder", "#fff2cc", param.role.value)
        self.ops(g.ops, "  ")
        for kind, table in (("output", g.outputs), ("update", g.updates)):
            for name, value in table.items():
                node = f"{kind}_{name}"
                label = f"{kind} {'@' if kind == 'update' else ''}{name}"
                self.lines.append(f'  {_quote(node)} [label={_quote(label)}, shape=invhouse, fillcolor="#f4cccc"];')
                self.edge(value, node)
        self.legend()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def value_node(self, value: Value, node: str, shape: str, color: str, what: str) -> None:
        label = f"{what} {self.namer[value]}\n{value.type}"
        self.lines.append(f"  {_quote(node)} [label={_quote(label)}, shape={shape}, fillcolor={_quote(color)}];")
        self.source[value] = node

    def edge(self, value: Value, node: str) -> None:
        self.lines.append(f"  {_quote(self.source[value])} -> {_quote(node)};")

    def ops(self, ops: list[Op], indent: str, phase: Phase | None = None) -> None:
        """Nodes for `ops`; ops of a region take the phase of their fused op."""
        for op in ops:
            names = [self.namer.define(v) for v in op.results]
            if op.region is None:
                self.op_node(op, names, indent, op.phase or phase)
            else:
                self.cluster(op, names, indent)

    def op_node(self, op: Op, names: list[str], indent: str, phase: Phase | None) -> None:
        self.nodes += 1
        node = f"op{self.nodes}"
        types = ", ".join(str(v.type) for v in op.results)
        label = f"{', '.join(names)} = {op.name}\n{types}"
        color = PHASE_COLORS[phase]
        self.lines.append(f"{indent}{_quote(node)} [label={_quote(label)}, fillcolor={_quote(color)}];")
        for operand in op.operands:
            self.edge(operand, node)
        for value in op.results:
            self.source[value] = node

    def cluster(self, op: Op, names: list[str], indent: str) -> None:
        self.clusters += 1
        title = f"{', '.join(names)} = fused" + (f" {op.attrs['label']}" if op.attrs.get("label") else "")
        self.lines += [f"{indent}subgraph cluster_{self.clusters} {{",
                       f"{indent}  label={_quote(title)}; style=\"rounded,filled\"; "
                       f"fillcolor={_quote(PHASE_COLORS[op.phase])}; color=\"#3d85c6\";"]
        region = op.region
        for arg, operand in zip(region.args, op.operands):
            self.namer.define(arg)
            self.source[arg] = self.source[operand]
        self.ops(region.ops, indent + "  ", op.phase)
        self.lines.append(f"{indent}}}")
        for result, inner in zip(op.results, region.results):
            self.source[result] = self.source[inner]

    def legend(self) -> None:
        phases = sorted({op.phase for op in self.graph.walk() if op.phase is not None}, key=list(Phase).index)
        if not phases:
            return
        self.lines.append('  subgraph cluster_legend { label="phases"; style=dashed;')
        for phase in phases:
            self.lines.append(f"    {_quote('legend_' + phase.value)} [label={_quote(phase.value)}, "
                              f"fillcolor={_quote(PHASE_COLORS[phase])}];")
        self.lines.append("  }")


def graph_to_dot(graph: Graph) -> str:
    """The DOT text of `graph` (deterministic)."""
    return _Dot(graph).run()


#: how to get Graphviz's `dot`, for the error when it is missing
INSTALL_GRAPHVIZ = "apt-get install graphviz (Debian, Ubuntu), brew install graphviz (macOS), or https://graphviz.org"


def render_svg(dot_text: str) -> str:
    """The SVG Graphviz's `dot` draws; ConfigError saying how to install it when it is not on PATH."""
    program = shutil.which("dot")
    if program is None:
        raise ConfigError(f"--emit svg needs Graphviz's dot program on PATH: {INSTALL_GRAPHVIZ}; "
                          "--emit dot prints the DOT text without it")
    done = subprocess.run([program, "-Tsvg"], input=dot_text, capture_output=True, text=True, check=False)
    if done.returncode:
        raise ConfigError(f"Graphviz's dot failed (exit code {done.returncode}): "
                          f"{(done.stderr.strip().splitlines() or ['no message'])[0]}")
    return done.stdout
