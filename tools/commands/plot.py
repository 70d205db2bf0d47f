"""`rduflow plot SAVE_DIR [SAVE_DIR ...] [-o FILE.png]`: loss curves of training runs, to compare them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools import arguments
from tools.plot import read_curves, terminal_plot, write_png


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        description="Draw the training loss and the dev loss of one or more training runs (the --save-dir "
                    "folders of `rduflow run`: per_step_metrics.csv and eval_metrics.csv) in the terminal, "
                    "and with -o as a PNG (which needs matplotlib: pip install 'rduflow[plot]').")
    parser.add_argument("save_dirs", nargs="+", type=Path, metavar="SAVE_DIR", help="a training run's save folder")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE.png", help="also draw the curves into a PNG")
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    runs = [read_curves(folder) for folder in args.save_dirs]
    print(terminal_plot(runs, colors=sys.stdout.isatty()))
    if args.output is not None:
        print(f"Plot written to {write_png(runs, args.output)}")
    return 0
