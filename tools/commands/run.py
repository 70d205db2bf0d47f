"""`rduflow run PEF [options]`: train with a training PEF, generate text with an inference PEF
(`--inference`, see `tools/generation.py`); the mode comes from the PEF's header.

Each mode is a function of the parsed arguments and the loaded PEF, registered in
`MODES` by the PEF mode it serves; options shared by every mode are added by
`_add_common_options`, a mode's own by its `_add_*_options`. Paths, data and prompts are
checked before the kernels are compiled, so a mistake costs no wait.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from backend.pef.file import PEF, read_pef
from backend.pef.targets import load_target
from ir.errors import ConfigError, RduflowError
from runtime import distributed
from runtime.checkpoint import weight_files
from runtime.cost_model import estimate, scaling_lines
from runtime.profile import print_profile, table_console, write_trace
from runtime.program import Program, load
from runtime.schedules import SCHEDULES
from runtime.train import TrainConfig, Trainer, TrainResult
from tools import arguments
from tools.generation import add_inference_options, check_mode, profile_top, run_inference
from tools.plot import PNG_NAME, png_available, read_curves, result_curves, terminal_plot, write_png


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        description="Run a compiled PEF. A training PEF trains on HDF5 data (a data-prep folder or one "
                    ".hdf5 file whose datasets are named after the PEF's inputs), optionally starting from "
                    "a Hugging Face or rduflow checkpoint, and saves Hugging Face checkpoints. An inference "
                    "PEF of a model with a KV cache completes prompts. The PEF's mode decides which: "
                    "options of the other mode are refused.")
    parser.add_argument("pef", type=Path, metavar="PEF", help="the compiled program (.pef)")
    _add_common_options(parser.add_argument_group("all modes"))
    training = _add_training_options(parser.add_argument_group("training (a training PEF)"))
    generation = add_inference_options(parser.add_argument_group("generation (an inference PEF of a model with a "
                                                                 "KV cache)"))
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main, mode_options={"train": _defaults(training), "inference": _defaults(generation)})


def _defaults(actions: list[argparse.Action]) -> tuple[tuple[str, object, str], ...]:
    """(dest, default, flag) of each option: a run of another mode refuses those given."""
    return tuple((a.dest, a.default, a.option_strings[0]) for a in actions)


def _add_common_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--checkpoint", type=Path, metavar="DIR|FILE.gguf",
                       help="initial weights: a Hugging Face checkpoint folder, an rduflow checkpoint or a "
                            ".gguf file")
    group.add_argument("--seed", type=arguments.non_negative_int, default=0, metavar="N",
                       help="seed of the initializers, of the data order and of sampling (default: 0)")
    group.add_argument("--profile", action="store_true",
                       help="print host time and modeled RDU time per kernel and section")
    group.add_argument("--profile-top", type=arguments.non_negative_int, default=20, metavar="N",
                       help="with --profile: list the N kernels slowest on the host, 0 for all (default: 20; "
                            "--json lists all)")
    group.add_argument("--trace", type=Path, metavar="FILE.json",
                       help="write a Chrome/Perfetto trace of the host and the modeled RDU timelines")
    group.add_argument("--target", metavar="NAME|FILE.yaml",
                       help="model the RDU cost on this target instead of the PEF's (see 'rduflow targets')")
    group.add_argument("--threads", type=arguments.positive_int, metavar="N",
                       help=arguments.debug_help("host threads for the kernels (default: all cores)"))


def _add_training_options(group: argparse._ArgumentGroup) -> list[argparse.Action]:
    """The training options; returns their actions (an inference run refuses them)."""
    add = group.add_argument
    return [
        add("--data", type=Path, metavar="DIR|FILE.hdf5",
            help="training data: a data-prep folder (train_* files, dev_* files evaluated) or one "
                 ".hdf5 file"),
        add("--num-epochs", type=arguments.positive_int, default=1, metavar="N", help="passes over the data (default: 1)"),
        add("--num-steps", type=arguments.positive_int, metavar="N",
            help="stop after N steps counted from the start of training (overrides --num-epochs; "
                 "a resumed run stops at the same step)"),
        add("--lr", type=float, default=1e-3, metavar="X", help="peak learning rate (default: 0.001)"),
        add("--lr-schedule", choices=SCHEDULES, default="constant",
            help="decay after warmup (default: constant)"),
        add("--warmup-steps", type=arguments.non_negative_int, default=0, metavar="N",
            help="steps of linear warmup (default: 0)"),
        add("--no-shuffle", dest="shuffle", action="store_false",
            help="read the rows in file order (default: a seeded shuffle per epoch)"),
        add("--save-dir", type=Path, metavar="DIR",
            help="folder for checkpoints, per_step_metrics.csv and summary.txt"),
        add("--save-every", type=arguments.positive_int, metavar="N",
            help="save a checkpoint every N steps (one is always saved at the end)"),
        add("--keep-last", type=arguments.positive_int, metavar="K", help="keep only the K newest checkpoints"),
        add("--resume", action="store_true",
            help="continue from the newest checkpoint in --save-dir (weights, optimizer, data position)"),
        add("--eval-every", type=arguments.positive_int, metavar="N",
            help="evaluate on the dev split every N steps (it is always evaluated at the end)"),
        add("--log-every", type=arguments.positive_int, default=1, metavar="N",
            help="print a loss line every N steps (default: 1)"),
        add("--data-parallel", action="store_true",
            help="one rank of data-parallel training, launched by 'mpirun -n N' with a PEF compiled with "
                 "--data-parallel --world-size N; rank 0 logs and saves"),
    ]


def main(args: argparse.Namespace) -> int:
    pef = read_pef(args.pef)
    check_mode(args, pef)
    mode = pef.header.mode
    for other, options in args.mode_options.items():
        given = [flag for dest, default, flag in options if getattr(args, dest) != default]
        if other != mode and given:
            raise ConfigError(f"{given[0]} is {_MODE_NAMES[other]} option, but {args.pef} is {_MODE_NAMES[mode]} "
                              f"PEF (its mode, set at compile time, decides what the run does)")
    _check_paths(args)
    return MODES[pef.header.mode](args, pef)


_MODE_NAMES = {"train": "a training", "inference": "an inference"}


def _check_paths(args: argparse.Namespace) -> None:
    """The folders a run reads late or writes at its end, checked before anything is compiled or run:
    --checkpoint holds weights, --trace goes into an existing folder, --save-dir is or can become a folder."""
    if args.checkpoint is not None:
        weight_files(args.checkpoint)
    if args.trace is not None:
        _check_trace(args.trace)
    if args.save_dir is not None:
        _check_save_dir(args.save_dir)


def _check_trace(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"--trace {path}: is a folder; give a file name, such as {path / 'trace.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--trace {path}: folder {path.parent} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(f"--trace {path}: not writable")


def _check_save_dir(path: Path) -> None:
    """A folder, or one that can be made: its nearest existing ancestor is a writable folder."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path and not path.is_dir():
        raise ConfigError(f"--save-dir {path}: is a file, not a folder")
    if not existing.is_dir():
        raise ConfigError(f"--save-dir {path}: cannot be made, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--save-dir {path}: {existing} is not writable")


# --- training ---------------------------------------------------------------------------
_FLAGS = {"shuffle": "--no-shuffle"}


def _flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def train(args: argparse.Namespace, pef: PEF) -> int:
    """Train with a training PEF; under mpirun with --data-parallel, as one rank of its group."""
    if args.data is None:
        raise ConfigError("--data is required to train (a data-prep folder or an .hdf5 file)")
    size = distributed.check_launch(pef, args.data_parallel, args.pef, args.data)
    if size is None:
        return _train(args, pef, None)
    replicas = distributed.connect(size, args.pef, args.data)
    return distributed.run_replica(replicas, lambda: _train(args, pef, replicas),
                                   lambda err: _report_failure(args, replicas, err))


def _report_failure(args: argparse.Namespace, replicas: distributed.Replicas, err: BaseException) -> int:
    """Print a rank's failure as the CLI would, naming the rank; the exit code."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    if isinstance(err, RduflowError):
        print(f"rank {replicas.rank}: {err.render()}", file=sys.stderr, flush=True)
        return 1
    if isinstance(err, KeyboardInterrupt):
        print(f"rank {replicas.rank}: interrupted", file=sys.stderr, flush=True)
        return 130
    print(f"rank {replicas.rank}: rduflow: internal error, please report (rerun with --debug for the traceback)",
          file=sys.stderr, flush=True)
    return 3


def _train(args: argparse.Namespace, pef: PEF, replicas: distributed.Replicas | None) -> int:
    """The training run of this process (one rank of `replicas`, if given)."""
    config = TrainConfig.parse(
        label=_flag, data=args.data, checkpoint=args.checkpoint, num_epochs=args.num_epochs,
        num_steps=args.num_steps, lr=args.lr, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        seed=args.seed, shuffle=args.shuffle, save_dir=args.save_dir, save_every=args.save_every,
        keep_last=args.keep_last, resume=args.resume, eval_every=args.eval_every, log_every=args.log_every)
    if replicas is not None:  # the ranks must agree on every step, evaluation and save they run together
        replicas.check_same("the training options", config.model_dump(mode="json"))
    target = load_target(args.target) if args.target else None
    profiling = args.profile or args.trace is not None
    writer = replicas is None or replicas.writer
    threads = args.threads or (distributed.local_threads() if replicas is not None else None)
    program = _Program(pef, args.seed, threads, profiling, replicas.comm if replicas is not None else None)
    reporter = ConsoleReporter(Console(stderr=True)) if writer else QuietReporter()
    if config.save_dir is None:
        reporter.warn("no --save-dir: the trained weights and metrics will not be saved")
    ranks = f" x {replicas.size} ranks" if replicas is not None else ""
    with Trainer(program, config, reporter, replicas) as trainer:
        reporter.line(f"Training {trainer.options.get('model', 'the model')} on {config.data}: {len(trainer.train)} "
                      f"rows, batch {trainer.batch_size}{ranks}, {trainer.total_steps} steps ({trainer.num_epochs} "
                      f"epoch(s))")
        with reporter:
            result = trainer.run()
    if writer:
        _draw_curves(config.save_dir, result)
    if profiling and writer:
        report = estimate(pef, target)
        if args.profile:
            print_profile(program.program.profile, report, table_console(), profile_top(args))
            print("\n".join(scaling_lines(pef, target)))
        if args.trace is not None:
            write_trace(args.trace, program.program.profile, report)
            print(f"Trace written to {args.trace}")
    return 0


def _draw_curves(save_dir: Path | None, result: TrainResult) -> None:
    """The loss curves in the terminal; with a save folder, also loss.png beside the metrics (with matplotlib)."""
    runs = [read_curves(save_dir) if save_dir is not None else result_curves(result)]
    if len(runs[0].steps) < 2:
        return
    print(terminal_plot(runs, colors=sys.stdout.isatty()))
    if save_dir is not None and png_available():
        print(f"Loss curves drawn in {write_png(runs, save_dir / PNG_NAME)}")


class _Program:
    """The training program, its kernels compiled on first use, so that the Trainer checks the data and
    the save folder first; with `profile`, each step records host time per kernel (--profile, --trace)."""

    def __init__(self, pef: PEF, seed: int, threads: int | None, profile: bool, communicator=None):
        self.pef = pef
        self.seed, self.threads, self.profile = seed, threads, profile
        self.communicator = communicator
        self._program: Program | None = None

    @property
    def program(self) -> Program:
        if self._program is None:
            self._program = load(self.pef, seed=self.seed, threads=self.threads, communicator=self.communicator)
        return self._program

    def initialize(self, seed: int) -> None:
        self.program.initialize(seed)

    def step(self, inputs: Mapping[str, np.ndarray], *, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return self.program.run(inputs, outputs=outputs, profile=self.profile)

    def evaluate(self, inputs: Mapping[str, np.ndarray], *,
                 outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return self.program.evaluate(inputs, outputs=outputs)

    def get_params(self) -> dict[str, np.ndarray]:
        return self.program.get_params()

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        self.program.set_params(values)


class QuietReporter:
    """A data-parallel rank other than 0: rank 0 reports for the group."""

    def line(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    def progress(self, done: int, total: int, loss: float) -> None:
        pass

    def __enter__(self) -> QuietReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ConsoleReporter:
    """Loss lines on stdout, a progress bar on stderr when it is a terminal, warnings on stderr."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=True,
                            disable=not console.is_terminal, redirect_stdout=False, redirect_stderr=False)
        self.task = None

    def __enter__(self) -> ConsoleReporter:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def line(self, text: str) -> None:
        if self.bar.live.is_started and not self.bar.disable and sys.stdout.isatty():
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # above the bar
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)

    def progress(self, done: int, total: int, loss: float) -> None:
        if self.task is None:
            self.task = self.bar.add_task("train", total=total, completed=done - 1, loss=loss)
        self.bar.update(self.task, completed=done, loss=loss)


#: PEF mode -> the function that runs it
MODES: dict[str, Callable[[argparse.Namespace, PEF], int]] = {"train": train, "inference": run_inference}
