"""`rduflow quickstart`: the whole workflow on a bundled corpus, one `rduflow` command per step.

    data-prep -> compile (training) -> run (train) -> compile --inference -> run --inference

Each step is a command line, printed before it runs and run in process through
`tools.cli.main`, so it takes exactly the path of typing it; its output is shown and
kept in `WORKDIR/logs/`. Every artifact stays in the work folder. A marker file tells
a quickstart folder (reused: its outputs are replaced) from an unrelated one (refused
unless empty).
"""
from __future__ import annotations

import contextlib
import csv
import io
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

import attrs

from ir.errors import RduflowError
from runtime.checkpoint import checkpoint_name
from runtime.tokenizer import ByteTokenizer
from runtime.train import METRICS_FILE as METRICS
from tools import cli
from tools.plot import read_curves, terminal_plot

CORPUS = Path(__file__).parent / "data" / "midsummer.txt"
MARKER = ".rduflow-quickstart"
#: what a rerun in the same work folder replaces
OUTPUTS = ("data", "pef", "checkpoints", "logs")
#: how `rduflow run --inference` prints a completion, and the line after the last one
COMPLETION = "Completion: "
END_OF_COMPLETIONS = "time to first token"


class QuickstartError(RduflowError):
    """A work folder the quickstart may not use, or a step that failed."""

    stage = "quickstart"


class StepFailed(QuickstartError):
    """A step's command failed; its own error has been printed already."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@attrs.frozen
class Settings:
    """Model sizes and run lengths: `rduflow quickstart` uses the defaults, tests shrink them."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    seq_len: int = 64
    batch_size: int = 16
    num_steps: int = 400
    lr: float = 3e-3
    warmup_steps: int = 20
    log_every: int = 40
    prompt: str = "The course of true love"
    max_new_tokens: int = 40
    temperature: float = 0.5
    seed: int = 0

    def model_overrides(self) -> tuple[str, ...]:
        """The zoo `gpt2` at these sizes, with the byte tokenizer's vocabulary."""
        return (f"model.vocab_size={ByteTokenizer.vocab_size}", f"model.n_positions={self.seq_len}",
                f"model.seq_len={self.seq_len}", f"model.n_embd={self.n_embd}",
                f"model.n_layer={self.n_layer}", f"model.n_head={self.n_head}")


@attrs.frozen
class Layout:
    """Where each artifact goes in the work folder."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / CORPUS.name

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pefs(self) -> Path:
        return self.root / "pef"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pef(self, name: str) -> Path:
        return self.pefs / name / f"{name}.pef"


@attrs.frozen
class Step:
    """One step of the workflow: what it does and its `rduflow` arguments."""

    name: str
    title: str
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(("rduflow", *self.args))


def steps(layout: Layout, s: Settings, checkpoints: Path | None = None) -> list[Step]:
    """The five steps, as the command lines a user would type; training saves into `checkpoints`
    (default: the layout's)."""
    checkpoints = checkpoints or layout.checkpoints
    model = ("gpt2", *s.model_overrides())
    return [
        Step("data-prep", "tokenize the corpus into HDF5 sequences",
             ("data-prep", "--input", str(layout.corpus), "--output", str(layout.data),
              "--max-seq-length", str(s.seq_len), "--dev-ratio", "0.05", "--overwrite")),
        Step("compile", "compile GPT-2 for training (forward, backward, AdamW)",
             ("compile", *model, "-b", str(s.batch_size), "--max-grad-norm", "1.0",
              "-o", str(layout.pefs), "--pef-name", "train")),
        Step("train", "train it on the corpus",
             ("run", str(layout.pef("train")), "--data", str(layout.data), "--num-steps", str(s.num_steps),
              "--lr", str(s.lr), "--lr-schedule", "cosine", "--warmup-steps", str(s.warmup_steps),
              "--log-every", str(s.log_every), "--seed", str(s.seed), "--save-dir", str(checkpoints))),
        Step("compile-inference", "compile it for inference (forward only)",
             ("compile", *model, "--inference", "-b", "1", "-o", str(layout.pefs), "--pef-name", "generate")),
        Step("generate", "generate a sample from the trained weights",
             ("run", str(layout.pef("generate")), "--inference",
              "--checkpoint", str(checkpoints / checkpoint_name(s.num_steps)),
              "--prompt", s.prompt, "--max-new-tokens", str(s.max_new_tokens),
              "--temperature", str(s.temperature), "--seed", str(s.seed))),
    ]


@attrs.frozen
class Report:
    """What the quickstart did: each step's wall time, the loss curve's ends, the sample's prompt and completion."""

    layout: Layout
    times: dict[str, float]
    first_loss: float
    last_loss: float
    prompt: str
    completion: str
    #: the steps' commands as a user reruns them by hand (training into a new folder)
    rerun: tuple[str, ...] = ()
    #: the loss curves drawn in text
    plot: str = ""

    def summary(self) -> str:
        root = self.layout.root
        lines = [f"Quickstart finished in {sum(self.times.values()):.1f} s:"]
        lines += [f"  {name:<18} {seconds:6.1f} s" for name, seconds in self.times.items()]
        trend = "fell" if self.last_loss < self.first_loss else "did not fall"
        lines += [f"Loss {trend} from {self.first_loss:.4f} (first step) to {self.last_loss:.4f} (last step).",
                  f'Sample: "{self.prompt}" -> "{printable(self.completion)}"',
                  f"Everything is in {root}/: the corpus, data/ (HDF5), pef/train and pef/generate (PEFs),",
                  f"checkpoints/ ({METRICS}, Hugging Face checkpoints) and logs/ (each step's output)."]
        if self.plot:
            lines += [self.plot.rstrip("\n")]
        if self.rerun:
            lines += ["To repeat the steps by hand (training saves into a new folder: checkpoints/ holds this run's):",
                      *(f"  {command}" for command in self.rerun)]
        return "\n".join(lines)


class _Tee:
    """A text stream copying what is written to several others."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


def prepare_workdir(layout: Layout) -> None:
    """Create or reuse the work folder; refuse a non-empty folder the quickstart did not make."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise QuickstartError(f"work folder {root} is a file")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise QuickstartError(f"work folder {root} is not empty and was not made by rduflow quickstart; "
                              "pick another with --workdir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text("made by rduflow quickstart: a rerun replaces "
                                   f"{', '.join(OUTPUTS)}\n")
        for name in OUTPUTS:
            _remove(root / name)
        layout.logs.mkdir()
        shutil.copyfile(CORPUS, layout.corpus)
    except OSError as err:
        raise QuickstartError(f"cannot prepare work folder {root}: {err.strerror or err}") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_step(step: Step, log: Path, debug: bool = False) -> str:
    """Run `step` through the `rduflow` entry point, showing its output and keeping it in `log`; its stdout."""
    argv = [*step.args, "--debug"] if debug else list(step.args)
    stdout = io.StringIO()
    with log.open("w", encoding="utf-8") as handle, \
            contextlib.redirect_stdout(_Tee(sys.stdout, handle, stdout)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, handle)):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse: our command line and the CLI disagree
            code = exit_.code if isinstance(exit_.code, int) else 2
    if code:
        raise StepFailed(f"step '{step.name}' failed (exit code {code}); its output is in {log}; "
                         f"rerun it with: {step.command}", code)
    return stdout.getvalue()


def run_quickstart(workdir: Path, settings: Settings = Settings(), debug: bool = False,
                   out: TextIO | None = None) -> Report:
    """Run every step in `workdir`, printing each command first; the report of the run."""
    out = out or sys.stdout
    layout = Layout(workdir)
    prepare_workdir(layout)
    plan = steps(layout, settings)
    times: dict[str, float] = {}
    printed = ""
    for number, step in enumerate(plan, 1):
        print(f"\n[{number}/{len(plan)}] {step.title}\n$ {step.command}", file=out, flush=True)
        start = time.perf_counter()
        printed = run_step(step, layout.logs / f"{number}-{step.name}.log", debug)
        times[step.name] = time.perf_counter() - start
        print(f"({step.name}: {times[step.name]:.1f} s)", file=out, flush=True)
    first, last = losses(layout.checkpoints / METRICS)
    rerun = steps(layout, settings, _unused(layout.root / "checkpoints-2"))
    return Report(layout, times, first, last, settings.prompt, completion(printed), tuple(s.command for s in rerun),
                  terminal_plot([read_curves(layout.checkpoints)]))


def _unused(path: Path) -> Path:
    """`path`, or the first of `path-2`, `path-3`, ... that does not exist."""
    number = 2
    while path.exists():
        number += 1
        path = path.with_name(f"{path.name.rsplit('-', 1)[0]}-{number}")
    return path


def losses(metrics: Path) -> tuple[float, float]:
    """The first and last training loss of a `per_step_metrics.csv`."""
    try:
        with metrics.open(newline="") as handle:
            values = [float(row["loss"]) for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError) as err:
        raise QuickstartError(f"cannot read the training losses from {metrics}: {err}") from None
    if not values:
        raise QuickstartError(f"{metrics} holds no training step")
    return values[0], values[-1]


def completion(printed: str) -> str:
    """The first completion in what the generation step printed (control characters escaped)."""
    start = printed.find(COMPLETION)
    if start < 0:
        raise QuickstartError("the generation step printed no completion")
    start += len(COMPLETION)
    ends = [end for marker in (COMPLETION, END_OF_COMPLETIONS) if (end := printed.find(f"\n{marker}", start)) >= 0]
    return printed[start:min(ends, default=len(printed))]


def printable(text: str) -> str:
    """`text` on one line: control characters (a newline the model wrote) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
