"""`rduflow pef info|dump PEF`: what a compiled program holds."""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from rich.table import Table

from backend.pef.file import PEF, read_pef
from backend.pef.schema import encode
from backend.report import info
from backend.text import format_kernel
from ir.errors import ConfigError
from runtime.profile import table_console
from tools import arguments


#: the indent of wrapped lines, and the width they wrap at (a terminal's, if narrower)
INDENT = " " * 9
WRAP = 100


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pef",
                                   description="Inspect a compiled program (PEF file).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("info", help="header, symbols, sections with resources, sizes, off-chip traffic",
                              description="The PEF's header (target, mode, compile options), symbols, "
                                          "sections with their PCUs/PMUs and modeled off-chip traffic, and sizes.")
    show.add_argument("pef", metavar="PEF", type=Path, help="a .pef file")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    arguments.add_debug_flag(show)
    show.set_defaults(func=main_info)
    dump = actions.add_parser("dump", help="kernel programs and the memory plan",
                              description="Every kernel program (buffers, stages, expression bodies, "
                                          "schedule, cost) and the memory plan.")
    dump.add_argument("pef", metavar="PEF", type=Path, help="a .pef file")
    dump.add_argument("--section", type=int, metavar="N", help="only the kernels of section N")
    dump.add_argument("--json", action="store_true", help="print one JSON object")
    arguments.add_debug_flag(dump)
    dump.set_defaults(func=main_dump)
    arguments.add_debug_flag(parser)


def _shape(entry: dict) -> str:
    return f"{entry['dtype']}[{','.join(map(str, entry['shape']))}]"


def _traffic(table: dict[str, int]) -> str:
    return ", ".join(f"{tier} {n:,}" for tier, n in table.items()) or "-"


def main_info(args: argparse.Namespace) -> int:
    pef = read_pef(args.pef)
    data = info(pef, args.pef.stat().st_size)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console = table_console()
    t = data["target"]
    console.print(f"PEF {args.pef} ({data['sizes']['file']:,} bytes, format {data['format_version']}, "
                  f"rduflow {data['tool_version']})")
    console.print(f"target   {t['name']}: {t['n_chips']} chip(s) x {t['num_tiles']} tile(s) = "
                  f"{t['pcus']} PCUs, {t['pmus']} PMUs")
    console.print(f"mode     {data['mode']}")
    if data["source_sha256"]:
        console.print(f"source   sha256 {data['source_sha256']}")
    if data["options"]:
        console.print(_options(data["options"], console.width))
    console.print(_symbols(data["symbols"]))
    console.print(_sections(data["sections"]))
    sizes, traffic = data["sizes"], data["offchip_traffic"]
    console.print(f"kernels {sizes['kernels']}; params {sizes['param_bytes']:,} bytes; arenas "
                  + ", ".join(f"{k} {v:,}" for k, v in sizes["arenas"].items()))
    console.print(f"modeled off-chip traffic per step: {traffic['total']:,} bytes "
                  f"(read {traffic['read']:,}, written {traffic['written']:,})")
    for entry in data["entries"]:
        console.print(f"entry    {entry['name']}: {entry['kernels']} kernels in {entry['sections']} section(s); "
                      "inputs " + ", ".join(f"{s['name']} {_shape(s)}" for s in entry["inputs"]) +
                      "; outputs " + ", ".join(f"{s['name']} {_shape(s)}" for s in entry["outputs"]))
    return 0


def _options(options: list[dict], width: int) -> str:
    """The compile options, wrapped under an indent; those whose change needs no recompile are marked."""
    text = ", ".join(f"{o['name']}={o['value']}" + ("" if o["recompile"] else " (no recompile)") for o in options)
    fixed = all(o["recompile"] for o in options)
    head = "options  changing any of these needs a recompile (run-time inputs, such as lr, do not):" if fixed else \
        "options  changing these needs a recompile, unless marked (no recompile):"
    return head + "\n" + textwrap.fill(text, width=min(width, WRAP), initial_indent=INDENT, subsequent_indent=INDENT,
                                       break_on_hyphens=False, break_long_words=False)


def _symbols(symbols: dict) -> Table:
    table = Table(title="symbols", title_justify="left")
    for column in ("kind", "name", "type", "tensor", "role / init"):
        table.add_column(column)
    for entry in symbols["inputs"]:
        table.add_row("input", entry["name"], _shape(entry), entry["tensor"], "")
    for entry in symbols["params"]:
        args = ", ".join(f"{k}={v}" for k, v in entry["init_args"].items())
        table.add_row("param", entry["name"], _shape(entry), entry["tensor"],
                      f"{entry['role']} / {entry['init']}" + (f"({args})" if args else ""))
    for entry in symbols["outputs"]:
        table.add_row("output", entry["name"], _shape(entry), entry["tensor"], "")
    for entry in symbols["updates"]:
        table.add_row("update", entry["param"], "", entry["tensor"], f"new value of @{entry['param']}")
    return table


def _sections(sections: list[dict]) -> Table:
    table = Table(title="sections", title_justify="left")
    for column in ("#", "phase", "kernels", "PCUs", "PMUs", "off-chip read", "off-chip written"):
        table.add_column(column, justify="right" if column in ("#", "kernels", "PCUs", "PMUs") else "left")
    for s in sections:
        table.add_row(str(s["index"]), s["phase"] or "-", str(s["kernels"]), str(s["pcus"]), str(s["pmus"]),
                      _traffic(s["offchip_read"]), _traffic(s["offchip_written"]))
    return table


def _kernels(pef: PEF, section: int | None) -> list[tuple[int, int]]:
    """(kernel index, section index) pairs to show."""
    if section is not None and not 0 <= section < len(pef.sections):
        raise ConfigError(f"--section {section}: the PEF has sections 0 to {len(pef.sections) - 1}")
    return [(k, s.index) for s in pef.sections if section in (None, s.index) for k in s.kernels]


def main_dump(args: argparse.Namespace) -> int:
    pef = read_pef(args.pef)
    chosen = _kernels(pef, args.section)
    if args.json:
        print(json.dumps({"kernels": [dict(encode(pef.kernels[k]), section=s) for k, s in chosen],
                          "memory": encode(pef.memory)}, indent=2))
        return 0
    out = [format_kernel(pef.kernels[k], s) for k, s in chosen]
    plan = ["memory plan", *(f"  arena {a.name}: {a.size:,} bytes" for a in pef.memory.arenas)]
    width = max((len(a.tensor) for a in pef.memory.allocations), default=0)
    plan += [f"  {a.tensor:<{width}}  {a.arena}+{a.offset}  {a.nbytes:,} bytes" for a in pef.memory.allocations]
    print("\n\n".join(out + ["\n".join(plan)]))
    return 0
