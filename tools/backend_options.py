"""The backend options of `rduflow compile`: target, resources, output, statistics.

    add_backend_options(parser)          # --target, --n-chips, --num-tiles, -o, --pef-name, --stats
    options = backend_options(args)      # CompileOptions fields
    write_output(args, pef)              # DIR/NAME/NAME.pef, and the --stats report
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from backend.pef.file import PEF, write_pef
from backend.pef.targets import preset_names
from backend.report import stats_text
from tools.arguments import positive_int


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target and output")
    group.add_argument("--target", default="sn40l", metavar="NAME|FILE.yaml",
                       help=f"RDU target: a preset ({', '.join(preset_names())}) or a target YAML file "
                            "(default: sn40l; `rduflow targets` lists them)")
    group.add_argument("--n-chips", type=positive_int, default=1, metavar="N", help="chips the program may use (default: 1)")
    group.add_argument("--num-tiles", type=positive_int, metavar="N", help="tiles per chip the program may use (default: all)")
    group.add_argument("-o", "--output-folder", type=Path, default=Path("out"), metavar="DIR",
                       help="where the PEF goes: DIR/NAME/NAME.pef (default: out)")
    group.add_argument("--pef-name", metavar="NAME", help="the PEF's name (default: the model's name)")
    group.add_argument("--stats", action="store_true", help="print the resource and section report")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """CompileOptions fields from the parsed flags (-O0 keeps one kernel per section)."""
    level = args.opt_level or args.default_level
    return {"target": args.target, "n_chips": args.n_chips, "num_tiles": args.num_tiles,
            "pack_sections": args.passes is not None or level != "O0"}


def pef_name(args: argparse.Namespace) -> str:
    """--pef-name, else the model's file or zoo name, made safe for a file name."""
    name = args.pef_name or Path(args.model.rstrip("/")).stem or "model"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) if not args.pef_name else name


def write_output(args: argparse.Namespace, pef: PEF) -> Path:
    """Write the PEF, say where, and print the --stats report."""
    path = write_pef(pef.to_bytes(), args.output_folder, pef_name(args))
    print(f"PEF file {path} created")
    if args.stats:
        print(stats_text(pef))
    return path
