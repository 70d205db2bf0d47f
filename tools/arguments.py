"""What the subcommands share to build their parsers: argparse types, `--debug` and its help.

    parser.add_argument("--steps", type=positive_int)
    parser.add_argument("--seed", type=non_negative_int, help=debug_help("..."))
    add_debug_flag(parser)
"""
from __future__ import annotations

import argparse

#: whether `--debug` was given: hidden options show in help only then (set by `tools.cli.main`)
DEBUG = False


def debug_help(text: str) -> str:
    """Help text for an experimental option: shown only with `--debug`."""
    return text if DEBUG else argparse.SUPPRESS


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Every subcommand accepts `--debug` after its name too."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and experimental options")


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
