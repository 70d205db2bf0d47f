"""`rduflow opt`: read IR text, run a pass pipeline, write IR text (or DOT), like `mlir-opt`."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ir.errors import IRError, RduflowError
from ir.files import honour_umask
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


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename it."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise RduflowError(f"cannot write '{path}': {err.strerror}") from None
    try:
        honour_umask(fd)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # a full disk, a quota: nothing is left behind
            raise RduflowError(f"cannot write '{path}': {err.strerror or err}") from None
        raise


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
        write_atomically(args.output, text)
    return 0
