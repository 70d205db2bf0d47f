"""Loss and dev-loss curves of training runs: in the terminal (plotext) and as a PNG (matplotlib).

    runs = [read_curves(Path("run-a")), read_curves(Path("run-b"))]   # save folders of `rduflow run`
    print(terminal_plot(runs))
    write_png(runs, Path("loss.png"))     # needs matplotlib: pip install 'rduflow[plot]'

A save folder holds `per_step_metrics.csv` (the training loss of every step) and, when
the data have a dev split, `eval_metrics.csv` (the dev loss of every evaluation).
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Sequence

import attrs

from ir.errors import ConfigError
from ir.files import write_atomically
from runtime.train import EVAL_FILE, METRICS_FILE, TrainResult

#: the PNG written beside per_step_metrics.csv at the end of a run
PNG_NAME = "loss.png"
#: the markers of each run's loss and dev loss in the terminal (told apart without colors)
MARKERS = (("hd", "x"), ("•", "o"), ("+", "#"), ("*", "@"))
INSTALL_MATPLOTLIB = "pip install 'rduflow[plot]' (or pip install matplotlib)"


@attrs.frozen
class Curves:
    """One run's training loss per step and dev loss per evaluation."""

    label: str
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    eval_steps: tuple[int, ...] = ()
    eval_loss: tuple[float, ...] = ()


def _columns(path: Path, *names: str) -> list[tuple]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [tuple(float(row[n]) for n in names) for row in rows]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None


def read_curves(save_dir: Path) -> Curves:
    """The curves of a `rduflow run --save-dir` folder; ConfigError if it holds no training metrics."""
    metrics = save_dir / METRICS_FILE
    if not metrics.is_file():
        raise ConfigError(f"{save_dir}: no {METRICS_FILE} (give the --save-dir folder of a training run)")
    train = _columns(metrics, "step", "loss")
    evals = _columns(save_dir / EVAL_FILE, "step", "loss") if (save_dir / EVAL_FILE).is_file() else []
    return Curves(str(save_dir), tuple(int(s) for s, _ in train), tuple(v for _, v in train),
                  tuple(int(s) for s, _ in evals), tuple(v for _, v in evals))


def result_curves(result: TrainResult, label: str = "training") -> Curves:
    """The curves of a run that was not saved."""
    return Curves(label, tuple(r.step for r in result.history), tuple(r.loss for r in result.history),
                  tuple(step for step, _ in result.evaluations), tuple(e.loss for _, e in result.evaluations))


def terminal_plot(runs: Sequence[Curves], colors: bool = False, width: int | None = None, height: int = 18) -> str:
    """The curves drawn in text: each run's loss as a line, its dev loss as a line of x marks."""
    import plotext

    figure = plotext.figure
    figure.clear()
    figure.plot_size(width or min(shutil.get_terminal_size().columns, 100), height)
    names = _short_labels(runs)
    for number, run in enumerate(runs):
        loss_marker, dev_marker = MARKERS[number % len(MARKERS)]
        for steps, values, label, marker in ((run.steps, run.loss, "loss", loss_marker),
                                             (run.eval_steps, run.eval_loss, "dev loss", dev_marker)):
            if steps:
                signal = figure.signal(list(steps), list(values), marker=marker)
                signal.label(f"{names[number]} {label}" if len(runs) > 1 else label)
                signal.lines()
                figure.draw(signal)
    figure.title("training loss" + (" and dev loss" if any(r.eval_steps for r in runs) else "") + " by step")
    figure.label("step", "x")
    return figure.build().string(colorless=not colors)


def _short_labels(runs: Sequence[Curves]) -> list[str]:
    """Each run's folder name, or its whole path where two names are the same."""
    names = [Path(run.label).name or run.label for run in runs]
    return [name if names.count(name) == 1 else run.label for name, run in zip(names, runs)]


def png_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_png(runs: Sequence[Curves], path: Path) -> Path:
    """Draw the curves into a PNG, written atomically; ConfigError naming the fix when matplotlib is missing."""
    if not png_available():
        raise ConfigError(f"writing {path} needs matplotlib, which is not installed: {INSTALL_MATPLOTLIB}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for run, name in zip(runs, _short_labels(runs)):
        prefix = f"{name} " if len(runs) > 1 else ""
        line, = axes.plot(run.steps, run.loss, label=f"{prefix}loss", linewidth=1)
        if run.eval_steps:
            axes.plot(run.eval_steps, run.eval_loss, "o--", color=line.get_color(), label=f"{prefix}dev loss")
    axes.set(xlabel="step", ylabel="loss", title="training loss" + (" and dev loss" if any(
        r.eval_steps for r in runs) else ""))
    axes.grid(alpha=0.3)
    axes.legend()
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {path.parent} does not exist")
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    try:
        write_atomically(path, png.getvalue())
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
    return path
