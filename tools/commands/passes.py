"""`rduflow passes`: the registered passes, their options, and the -O pipelines."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compiler.pass_manager.levels import PIPELINES, level_pipeline
from compiler.pass_manager.registry import load_entry_points
from compiler.passes import PASSES, load_pass_file
from tools import arguments

#: table width when the output is not a terminal (so piped listings do not wrap)
WIDTH = 160


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "passes",
        description="List every registered pass (built-in, from the rduflow.passes entry points, and "
                    "from --load-pass files) with its options and a one-line description.")
    parser.add_argument("--load-pass", action="append", default=[], metavar="FILE.py", type=Path,
                        help="also list the passes defined in a Python file (repeatable)")
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def _options(cls) -> str:
    return "\n".join(f"{o.name}: {o.type.__name__} = {o.format(o.default)}" for o in cls.options().values())


def main(args: argparse.Namespace) -> int:
    load_entry_points()
    for path in args.load_pass:
        load_pass_file(path)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else WIDTH)
    table = Table(title="Passes", title_justify="left")
    table.add_column("pass", style="bold", no_wrap=True)
    table.add_column("options", no_wrap=True)
    table.add_column("description")
    for name in sorted(PASSES):
        table.add_row(name, _options(PASSES[name]), PASSES[name].doc())
    console.print(table)
    levels = Table(title="Optimization levels", title_justify="left")
    levels.add_column("flag", no_wrap=True)
    levels.add_column("pipeline")
    for level in PIPELINES:
        levels.add_row(f"-{level}", level_pipeline(level))
    console.print(levels)
    return 0
