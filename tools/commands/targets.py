"""`rduflow targets`: the RDU target presets."""
from __future__ import annotations

import argparse
import json
import shutil

from rich.console import Console
from rich.table import Table

from backend.pef.targets import Target, load_target, preset_names
from tools import arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "targets",
        description="List the RDU target presets, or describe the targets named (presets or YAML files). "
                    "Pass one to `rduflow compile --target`.")
    parser.add_argument("names", nargs="*", metavar="NAME|FILE.yaml", help="targets to describe (default: all presets)")
    parser.add_argument("--json", action="store_true", help="print the full descriptions as JSON")
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.4g} {unit}"
    return f"{nbytes:,} B"


def _row(t: Target) -> list[str]:
    offchip = ", ".join(f"{tier.name} {_size(tier.capacity)} {tier.bandwidth / 1e9:,.4g} GB/s" for tier in t.offchip)
    return [t.name, str(t.chips_per_node), str(t.tiles), str(t.pcus), str(t.pmus), _size(t.sram_bytes),
            f"{t.clock_hz / 1e9:.2f}", f"{t.peak_flops('bf16') / 1e12:,.0f}", offchip]


def main(args: argparse.Namespace) -> int:
    targets = [load_target(n) for n in (args.names or preset_names())]
    if args.json:
        print(json.dumps([t.to_obj() for t in targets], indent=2))
        return 0
    table = Table(title="RDU targets (per chip)", title_justify="left")
    for column in ("name", "chips/node", "tiles", "PCUs", "PMUs", "SRAM", "GHz", "bf16 TFLOP/s",
                   "off-chip memory (per chip)"):
        table.add_column(column, justify="left" if column[0] in "no" else "right", no_wrap=column == "name")
    for target in targets:
        table.add_row(*_row(target))
    Console(highlight=False, width=max(shutil.get_terminal_size().columns, 130)).print(table)
    for target in targets:
        if target.description:
            print(f"{target.name}: {target.description}")
    return 0
