"""The `rduflow` command: subcommands, `--debug`, and the exit-code contract.

Exit codes: 0 success; 1 a user error (`RduflowError`), printed as one line;
2 a command-line usage error (argparse); 3 an internal error.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

from ir.errors import RduflowError
from tools.commands import COMMANDS

#: whether `--debug` was given: hidden options show in help only then (set by `main`)
DEBUG = False


def debug_help(text: str) -> str:
    """Help text for an experimental option: shown only with `--debug`."""
    return text if DEBUG else argparse.SUPPRESS


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def tool_version() -> str:
    try:
        return version("rduflow")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rduflow",
        description="A dataflow compiler toolchain for a simulated RDU.",
    )
    parser.add_argument("--version", action="version", version=f"rduflow {tool_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and experimental options")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tools.commands.{name}").register(sub)
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Every subcommand accepts `--debug` after its name too."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and experimental options")


def main(argv: list[str] | None = None) -> int:
    global DEBUG
    DEBUG = "--debug" in (sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args) or 0
    except RduflowError as err:
        if debug:
            traceback.print_exc()
        print(err.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # noqa: BLE001 - the contract: any other failure is our bug
        if debug:
            traceback.print_exc()
        else:
            print("rduflow: internal error, please report (rerun with --debug for the traceback)",
                  file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
