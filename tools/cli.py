"""The `rduflow` command: subcommands, `--debug`, and the exit-code contract.

Exit codes: 0 success; 1 a user error (`RduflowError`), printed as one line;
2 a command-line usage error (argparse; an unknown flag gets the subcommand's usage and
the nearest flag); 3 an internal error. Only the subcommand being run is imported
(`tools.commands.COMMANDS`), so `rduflow --help` starts fast.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import traceback
from typing import Iterable

from ir.errors import RduflowError
from ir.version import tool_version
from tools import arguments
from tools.commands import COMMANDS


class _WithHelp:
    """The subparsers seen by one command's `register`: its parser gets the registry's help line."""

    def __init__(self, subparsers: argparse._SubParsersAction, help: str):
        self.subparsers, self.help = subparsers, help

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("help", self.help)
        return self.subparsers.add_parser(name, **kwargs)


def build_parser(loaded: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the commands named in `loaded` (default: all) get their full parsers, the
    others only their help line (enough for `rduflow --help`)."""
    loaded = {c.name for c in COMMANDS} if loaded is None else set(loaded)
    parser = argparse.ArgumentParser(
        prog="rduflow",
        description="A dataflow compiler toolchain for a simulated RDU.",
    )
    parser.add_argument("--version", action="version", version=f"rduflow {tool_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and experimental options")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        if command.name in loaded:
            importlib.import_module(command.module).register(_WithHelp(sub, command.help))
        else:
            sub.add_parser(command.name, help=command.help)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not a top-level flag)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was parsed: `rduflow pef info` -> the `info` parser."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if name not in getattr(sub, "choices", {}):
            return parser
        parser = sub.choices[name]


def _reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """Exit 2 with the subcommand's usage, naming the first unknown argument and the nearest flag."""
    parser = _innermost(parser, args)
    word = unknown[0]
    message = f"unrecognized argument: {word}" if len(unknown) == 1 else \
        f"unrecognized arguments: {' '.join(unknown)}"
    if word.startswith("-"):
        flags = [f for a in parser._actions for f in a.option_strings if a.help != argparse.SUPPRESS]
        near = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.6)
        if near:
            message += f" (did you mean {near[0]}?)"
    parser.error(message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments.DEBUG = "--debug" in argv
    parser = build_parser([_command(argv)])
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _reject_unknown(parser, args, unknown)
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


if __name__ == "__main__":  # `python -m tools.cli`
    sys.exit(main())
