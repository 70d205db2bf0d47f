"""`rduflow opt`: read IR text, run a pass pipeline, write IR text (or DOT), like `mlir-opt`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ir.errors import IRError, RduflowError
from ir.files import write_atomically
from ir.parser import parse_with_positions
from ir.printer import print_graph
from ir.verifier import verify
from tools import arguments
from tools.dot import graph_to_dot, render_svg
from tools.pass_options import add_pass_options, pass_manager_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "opt",
        description="Read IR text (FILE, or - for stdin), verify it, run the pass pipeline and write "
                    "the resulting IR to stdout or -o. With no pipeline the IR is only verified and "
                    "re-printed. IR dumps, timing and statistics go to stderr.")
    parser.add_argument("file", metavar="FILE.ir", help="IR text file, or - for stdin")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT", help="write here instead of stdout")
    parser.add_argument("--emit", choices=("ir", "dot", "svg"), default="ir",
                        help="ir: the IR text form (default); dot: a Graphviz view with fused regions "
                             "as clusters and phases as colors; svg: that view drawn by Graphviz's dot "
                             "(apt-get install graphviz)")
    parser.add_argument("--no-locs", dest="locs", action="store_false", help="print the IR without locations")
    add_pass_options(parser, pipeline_flags=("-p", "--passes"), default_level=None)
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise IRError(f"cannot read '{name}': {getattr(err, 'strerror', None) or err}") from None


def main(args: argparse.Namespace) -> int:
    pm = pass_manager_from_args(args)
    filename = "<stdin>" if args.file == "-" else args.file
    graph, positions = parse_with_positions(_read(args.file), filename)
    verify(graph, positions)
    graph = pm.run(graph)
    text = print_graph(graph, with_locs=args.locs) if args.emit == "ir" else graph_to_dot(graph)
    text = render_svg(text) if args.emit == "svg" else text
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            write_atomically(args.output, text.encode())
        except OSError as err:  # a full disk, a quota, a missing folder: nothing is left behind
            raise RduflowError(f"cannot write '{args.output}': {err.strerror or err}") from None
    return 0
