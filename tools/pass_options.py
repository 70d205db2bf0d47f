"""The pass-pipeline options shared by `rduflow opt` and `rduflow compile`.

    add_pass_options(parser)                 # -O0/-O1/-O3, --passes, dumps, timing, bisect, ...
    pm = pass_manager_from_args(args)        # a configured PassManager
    graph = pm.run(graph)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from compiler.pass_manager.instrument import Bisect, DumpDir, PassStatistics, PrintIR, TimePasses
from compiler.pass_manager.levels import PIPELINES, level_pipeline
from compiler.pass_manager.semantics import VerifySemantics
from compiler.passes import PassManager, load_pass_file, lookup_pass, parse_pipeline
from ir.errors import PassError
from tools import arguments


def _pass_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_pass_options(parser: argparse.ArgumentParser, *, pipeline_flags: tuple[str, ...] = ("--passes",),
                     default_level: str | None = "O1") -> None:
    """Add the pipeline, instrumentation and plugin options to `parser`."""
    parser.set_defaults(default_level=default_level)
    group = parser.add_argument_group("pass pipeline")
    choice = group.add_mutually_exclusive_group()
    for level in PIPELINES:
        choice.add_argument(f"-{level}", dest="opt_level", action="store_const", const=level,
                            help=f"optimization level {level}: {level_pipeline(level)}")
    choice.add_argument(*pipeline_flags, dest="passes", metavar="PIPELINE",
                        help="a textual pass pipeline, e.g. 'canonicalize,cse,fold-constants{max-elements=16}' "
                             "(`rduflow passes` lists the passes)")
    group.add_argument("--load-pass", action="append", default=[], metavar="FILE.py", type=Path,
                       help="register the passes defined in a Python file (repeatable)")
    dumps = parser.add_argument_group("IR dumps and pass instrumentation")
    dumps.add_argument("--print-ir-before", type=_pass_names, default=[], metavar="P,..",
                       help="print the IR (to stderr) before each run of these passes")
    dumps.add_argument("--print-ir-after", type=_pass_names, default=[], metavar="P,..",
                       help="print the IR (to stderr) after each run of these passes")
    dumps.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    dumps.add_argument("--print-ir-after-change", action="store_true",
                       help="print the IR after every pass that changed it")
    dumps.add_argument("--dump-dir", type=Path, metavar="DIR",
                       help="write the IR to DIR before the pipeline and after each pass (00-input.ir, 01-cse.ir, ...)")
    dumps.add_argument("--time-passes", action="store_true", help="report the wall time of each pass")
    dumps.add_argument("--pass-statistics", action="store_true", help="report the counters each pass declares")
    dumps.add_argument("--no-verify", dest="verify", action="store_false",
                       help="skip the IR verifier between passes (it runs by default)")
    dumps.add_argument("--verify-semantics", action="store_true",
                       help="run the reference interpreter around every pass on seeded random inputs and "
                            "name the first pass that changes a result")
    dumps.add_argument("--bisect-limit", type=int, metavar="N",
                       help="run only the first N pass executions (opt-bisect), saying which run")
    dumps.add_argument("--verify-semantics-seed", type=int, default=0, metavar="N",
                       help=arguments.debug_help("seed of the --verify-semantics inputs and params (default: 0)"))
    dumps.add_argument("--crash-dir", type=Path, default=Path("."), metavar="DIR",
                       help=arguments.debug_help("where a crashing pass's reproducer is written (default: .)"))


def pipeline_text(args: argparse.Namespace) -> str:
    """The pipeline the options ask for: --passes, else -O level, else the default level."""
    if args.passes is not None:
        return args.passes
    level = args.opt_level or args.default_level
    return level_pipeline(level) if level else ""


def _check_names(option: str, names: list[str]) -> None:
    for name in names:
        try:
            lookup_pass(name)
        except PassError as err:
            raise PassError(f"{option}: {err.message}") from None


def pass_manager_from_args(args: argparse.Namespace) -> PassManager:
    """A pass manager configured by the options of `add_pass_options`."""
    for path in args.load_pass:
        load_pass_file(path)
    _check_names("--print-ir-before", args.print_ir_before)
    _check_names("--print-ir-after", args.print_ir_after)
    hooks = []
    if args.bisect_limit is not None:
        hooks.append(Bisect(args.bisect_limit))
    if args.print_ir_before or args.print_ir_after or args.print_ir_after_all or args.print_ir_after_change:
        hooks.append(PrintIR(args.print_ir_before, args.print_ir_after, args.print_ir_after_all,
                             args.print_ir_after_change))
    if args.dump_dir is not None:
        hooks.append(DumpDir(args.dump_dir))
    if args.verify_semantics:
        hooks.append(VerifySemantics(args.verify_semantics_seed))
    if args.time_passes:
        hooks.append(TimePasses())
    if args.pass_statistics:
        hooks.append(PassStatistics())
    replay = [arg for path in args.load_pass for arg in ("--load-pass", str(path.resolve()))]
    passes = parse_pipeline(pipeline_text(args), "<pipeline>")
    return PassManager(passes, verify=args.verify, instrumentations=hooks,
                       crash_dir=args.crash_dir, replay_args=replay)
