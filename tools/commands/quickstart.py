"""`rduflow quickstart [--workdir DIR]`: data-prep, compile, train, compile for inference, generate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools import arguments
from tools.quickstart import Settings, StepFailed, run_quickstart


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        description="Prepare a bundled public-domain corpus (A Midsummer Night's Dream), compile a small "
                    "GPT-2 for training, train it (the loss falls), compile it for inference and generate "
                    "a sample. Each step's rduflow command is printed before it runs, so you can repeat "
                    "it by hand; every artifact stays in the work folder.")
    parser.add_argument("--workdir", type=Path, default=Path("rduflow-quickstart"), metavar="DIR",
                        help="the work folder (default: ./rduflow-quickstart); a non-empty folder "
                             "not made by the quickstart is refused, its own is reused")
    parser.add_argument("--num-steps", type=arguments.positive_int, default=Settings().num_steps, metavar="N",
                        help=f"training steps (default: {Settings().num_steps})")
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    settings = Settings(num_steps=args.num_steps)
    try:
        report = run_quickstart(args.workdir, settings, debug=getattr(args, "debug", False))
    except StepFailed as err:  # a user error or an interruption stays one; anything else is our bug
        print(err.render(), file=sys.stderr)
        return err.exit_code if err.exit_code in (1, 130) else 3
    print(f"\n{report.summary()}")
    return 0
