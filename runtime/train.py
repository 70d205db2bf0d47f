"""The training loop: a training PEF, HDF5 data, logs, metrics and checkpoints.

    program = runtime.load("out/gpt2/gpt2.pef")          # any `Executable`
    with Trainer(program, TrainConfig(data="prepared/", num_epochs=2, save_dir="run/")) as trainer:
        result = trainer.run()                            # history, evaluations, checkpoints

Each step feeds one batch (`runtime.batches`) and the scheduled learning rate
(`runtime.schedules`, the `lr` input) to the program, which updates its resident
params and optimizer state. Every step appends `step,epoch,loss,accuracy,lr` to
`per_step_metrics.csv`; every `log_every` steps a line `Epoch [e/E], Step [s/S],
Loss: x, Accuracy: y` is reported; every `eval_every` steps and at the end the dev
split (when the data have one) is evaluated by running the program's forward
sections only. Checkpoints (`runtime.checkpoint`) are written every `save_every`
steps and at the end, each with the optimizer state and a trainer state (step,
data position, seed, schedule) from which `resume` continues exactly: the batch
order is a function of the seed and the step, so a resumed run computes the same
losses as one that was never interrupted. Steps are 1-based in everything shown
and saved ("step 3" is the third optimizer step; its loss is computed with the
params before it).
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import attrs
import numpy as np
import pydantic

from backend.pef.file import PEF, Scalar
from ir.errors import CheckpointError, ExecutionError, config_error
from runtime import checkpoint as ckpt
from runtime.batches import HYPERPARAMETERS, BatchOrder, InputSpec, Rows, eval_batches, has_split, \
    is_token_data, open_rows
from runtime.cost_model import estimate
from runtime.distributed import Replicas
from runtime.hdf5_data import recorded_tokenizer, tokenizer_folder
from runtime.interrupt import deferred_interrupt
from runtime.program import param_types
from runtime.save_dir import MetricsFile, SaveDirLock, kept_rows
from runtime.schedules import Schedule, ScheduleName

#: the outputs a step and an evaluation return to the loop (the program's others, a classifier's
#: logits, stay uncopied)
STEP_METRICS, EVAL_METRICS = ("loss", "accuracy", "grad_norm"), ("loss", "accuracy")
METRICS_FILE = "per_step_metrics.csv"
SUMMARY_FILE = "summary.txt"
METRICS_COLUMNS = ("step", "epoch", "loss", "accuracy", "lr")
#: the dev-split evaluations, one row per evaluation
EVAL_FILE = "eval_metrics.csv"
EVAL_COLUMNS = ("step", "loss", "perplexity", "accuracy", "rows")
STATE_FORMAT = "rduflow-trainer-state"
STATE_VERSION = 1
#: index inputs and the header option (model config field) that bounds their values
INDEX_BOUNDS = {"input_ids": "vocab_size", "labels": "n_classes"}


class TrainConfig(pydantic.BaseModel):
    """What a training run does (the options of `rduflow run` for a training PEF)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: a data-prep folder or one .hdf5 file
    data: Path
    #: initial weights: a Hugging Face folder or an rduflow checkpoint (else the PEF's initializers)
    checkpoint: Path | None = None
    num_epochs: int = pydantic.Field(1, ge=1)
    #: total steps counted from the start of training, overriding num_epochs (a resumed run stops at the same step)
    num_steps: int | None = pydantic.Field(None, ge=1)
    lr: float = pydantic.Field(1e-3, gt=0.0)
    lr_schedule: ScheduleName = "constant"
    warmup_steps: int = pydantic.Field(0, ge=0)
    seed: int = pydantic.Field(0, ge=0)
    shuffle: bool = True
    save_dir: Path | None = None
    save_every: int | None = pydantic.Field(None, ge=1)
    keep_last: int | None = pydantic.Field(None, ge=1)
    resume: bool = False
    eval_every: int | None = pydantic.Field(None, ge=1)
    log_every: int = pydantic.Field(1, ge=1)

    @pydantic.model_validator(mode="after")
    def _needs_save_dir(self) -> TrainConfig:
        for field in ("resume", "save_every", "keep_last"):
            if getattr(self, field) and self.save_dir is None:
                raise ValueError(f"{field}: needs save_dir")
        return self

    @classmethod
    def parse(cls, label=lambda field: f"training option '{field}'", **values: Any) -> TrainConfig:
        """A config from plain values; ConfigError naming the first bad field as `label(field)`."""
        try:
            return cls(**values)
        except pydantic.ValidationError as err:
            raise config_error(err, label) from None


class Executable(Protocol):
    """What the loop needs of a loaded training program (see `TrainProgram`)."""

    pef: PEF

    def initialize(self, seed: int) -> None:
        """Every param and optimizer state from its initializer, seeded."""

    def step(self, inputs: Mapping[str, np.ndarray], *, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One training step: every section; params and optimizer state are updated in place; returns
        the outputs named (default: all)."""

    def evaluate(self, inputs: Mapping[str, np.ndarray], *,
                 outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The forward sections only: outputs such as `loss` (those named; default: all), no update."""

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of every param, buffer and optimizer state, by name."""

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite some params or optimizer states."""


class Reporter(Protocol):
    """Where a run's lines and progress go."""

    def line(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def progress(self, done: int, total: int, loss: float) -> None: ...


class PrintReporter:
    """Lines on stdout, warnings on stderr, no progress bar."""

    def line(self, text: str) -> None:
        print(text, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def progress(self, done: int, total: int, loss: float) -> None:
        pass


@attrs.frozen
class StepMetrics:
    step: int
    epoch: int
    loss: float
    accuracy: float | None
    lr: float
    grad_norm: float | None = None

    def row(self) -> list[str]:
        accuracy = "" if self.accuracy is None else repr(self.accuracy)
        return [str(self.step), str(self.epoch), repr(self.loss), accuracy, repr(self.lr)]


@attrs.frozen
class EvalMetrics:
    loss: float
    perplexity: float
    accuracy: float | None
    batches: int
    rows: int


@attrs.define
class TrainResult:
    """What a run did."""

    first_step: int
    last_step: int
    total_steps: int
    history: list[StepMetrics] = attrs.field(factory=list)
    evaluations: list[tuple[int, EvalMetrics]] = attrs.field(factory=list)
    checkpoints: list[Path] = attrs.field(factory=list)
    train_seconds: float = 0.0
    tokens: int = 0
    samples: int = 0


# --- program helpers ----------------------------------------------------------------------
def data_inputs(pef: PEF) -> list[InputSpec]:
    """The program inputs fed from data (all but the run-time hyperparameters)."""
    return [InputSpec(s.name, s.shape, s.dtype) for s in pef.symbols.inputs if s.name not in HYPERPARAMETERS]


def batch_size(specs: list[InputSpec]) -> int:
    sizes = {s.shape[0] for s in specs if s.shape}
    if len(sizes) != 1 or any(not s.shape for s in specs):
        raise ExecutionError("the program's data inputs do not share a leading batch dimension: "
                             + ", ".join(f"{s.name}{list(s.shape)}" for s in specs))
    return sizes.pop()


def header_options(pef: PEF) -> dict[str, Scalar]:
    return {o.name: o.value for o in pef.header.options}


# --- the loop -----------------------------------------------------------------------------
class Trainer:
    """Runs `config` on `program`, reporting to `reporter`."""

    def __init__(self, program: Executable, config: TrainConfig, reporter: Reporter | None = None,
                 replicas: Replicas | None = None):
        """`replicas`: this process's data-parallel group (`runtime.distributed`; default: a single process)."""
        self.replicas = replicas or Replicas()
        if program.pef.header.mode != "train":
            raise ExecutionError("the PEF was compiled for inference (--inference); training needs a training PEF")
        self.program = program
        self.config = config
        self.reporter = reporter or PrintReporter()
        self._lock: SaveDirLock | None = None  # the save folder's, from `start()` to `close()`
        self.specs = data_inputs(program.pef)
        self.batch_size = batch_size(self.specs)
        self.options = header_options(program.pef)
        bounds = {name: self.options[option] for name, option in INDEX_BOUNDS.items()
                  if isinstance(self.options.get(option), int)}
        self.train: Rows = open_rows(config.data, "train", self.specs, bounds)
        self.dev: Rows | None = open_rows(config.data, "dev", self.specs, bounds) if has_split(config.data, "dev") \
            else None
        if self.dev is not None and len(self.dev) < self.batch_size * self.replicas.size:
            self.reporter.warn(f"the dev split has {len(self.dev)} rows, fewer than a batch of "
                               f"{self.batch_size * self.replicas.size}: "
                               "it is not evaluated")
            self.dev.close()
            self.dev = None
        elif self.dev is None and config.eval_every:
            self.reporter.warn(f"eval_every is set, but {config.data} has no dev split (dev_*_of_*.hdf5) to evaluate")
        self.order = BatchOrder(len(self.train), self.batch_size * self.replicas.size, config.shuffle, config.seed)
        self.total_steps = config.num_steps or config.num_epochs * self.order.steps_per_epoch
        self.schedule = Schedule(config.lr, config.lr_schedule, config.warmup_steps, self.total_steps)
        self.num_epochs = math.ceil(self.total_steps / self.order.steps_per_epoch)
        self.outputs = {s.name for s in program.pef.symbols.outputs}
        if "loss" not in self.outputs:
            raise ExecutionError("the program has no 'loss' output to train on")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        self.train.close()
        if self.dev is not None:
            self.dev.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup --
    def start(self) -> int:
        """Set the params (initializers, --checkpoint, or the resumed checkpoint); the first step to run.

        The save folder is checked before the program is first used (a lazily compiled one waits)."""
        found = []
        if self.config.save_dir is not None:
            if self.replicas.writer:
                self._lock = self._lock or SaveDirLock(self.config.save_dir)
                ckpt.remove_partial(self.config.save_dir)
            self.replicas.barrier()
            found = ckpt.list_checkpoints(self.config.save_dir)
        if found and not self.config.resume:
            raise CheckpointError(f"{self.config.save_dir} holds checkpoints of an earlier run (up to "
                                  f"{found[-1][1].name}): continue it with --resume, or save elsewhere")
        self.program.initialize(self.config.seed)
        if self.config.resume:
            if found:
                return self._resume(found[-1][1])
            self.reporter.warn(f"no checkpoint in {self.config.save_dir} to resume from: starting at step 1")
        if self.config.checkpoint is not None:
            self._load_weights(self.config.checkpoint)
        return 0

    def _load_weights(self, folder: Path, strict: bool = False) -> None:
        loaded = ckpt.load_hf_checkpoint(folder, param_types(self.program.pef, ("param", "buffer")), strict)
        if loaded.unexpected:
            self.reporter.warn(f"checkpoint {folder}: {len(loaded.unexpected)} tensor(s) the model does not use: "
                               f"{', '.join(loaded.unexpected[:8])}{' ...' if len(loaded.unexpected) > 8 else ''}")
        self.program.set_params(loaded.tensors)

    def _resume(self, folder: Path) -> int:
        state = ckpt.read_trainer_state(folder)
        self._check_resumable(folder, state)
        self._load_weights(folder, strict=True)
        self.program.set_params(ckpt.read_optimizer_state(folder, param_types(self.program.pef, ("state",))))
        self.reporter.line(f"Resuming from {folder} at step {state['step']}")
        return int(state["step"])

    def _check_resumable(self, folder: Path, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise CheckpointError(f"{folder}: not an rduflow trainer state (format {state.get('format')!r})")
        data = state.get("data", {})
        want = self._data_state()
        for key in ("rows", "batch_size", "shuffle", "seed"):
            if data.get(key) != want[key]:
                raise CheckpointError(f"cannot resume from {folder}: it was trained with {key} {data.get(key)!r}, "
                                      f"this run has {want[key]!r} (the batches would differ)")
        saved = state.get("schedule", {})
        for key, value in self._schedule_state().items():
            if saved.get(key) != value:
                self.reporter.warn(f"resuming with {key} {value!r}, the checkpoint used {saved.get(key)!r}: "
                                   "the learning rates differ from the original run's")

    # -- running --
    def run(self) -> TrainResult:
        """Train from the start (or the resumed step) up to `total_steps`; evaluate and save at the end."""
        first = self.start()
        result = TrainResult(first, first, self.total_steps)
        metrics = self._open_metrics(first)
        try:
            with deferred_interrupt() as stop:
                for step in range(first, self.total_steps):
                    record = self._step(step, result)
                    result.history.append(record)
                    result.last_step = record.step
                    if metrics is not None:
                        metrics.writerow(record.row())
                        metrics.flush()
                    self._after_step(record, result)
                    if self.replicas.sums([stop.requested])[0]:  # every replica stops after the same step
                        self._stop(result)
        finally:
            if metrics is not None:
                metrics.close()
        self._finish(result)
        return result

    def _step(self, step: int, result: TrainResult) -> StepMetrics:
        epoch, _ = self.order.position(step)
        batch = self.train.rows(self.replicas.share(self.order.indices(step)))
        lr = self.schedule(step)
        start = time.perf_counter()
        weight = self.replicas.weight(self.train.weight(batch))
        outputs = self.program.step({**batch, "lr": np.float32(lr), **weight},
                                    outputs=[n for n in STEP_METRICS if n in self.outputs])
        outputs = self.replicas.combine(outputs, weight)
        result.train_seconds += time.perf_counter() - start
        result.samples += self.order.batch_size
        if is_token_data(self.specs):
            result.tokens += batch["input_ids"].size * self.replicas.size
        loss = float(outputs["loss"])
        if not math.isfinite(loss):
            raise ExecutionError(f"the loss became {loss} at step {step + 1} (try a smaller --lr, or compile with "
                                 "--max-grad-norm)")
        accuracy = float(outputs["accuracy"]) if "accuracy" in outputs else None
        grad_norm = float(outputs["grad_norm"]) if "grad_norm" in outputs else None
        return StepMetrics(step + 1, epoch + 1, loss, accuracy, lr, grad_norm)

    def _after_step(self, record: StepMetrics, result: TrainResult) -> None:
        config = self.config
        self.reporter.progress(record.step, self.total_steps, record.loss)
        if record.step % config.log_every == 0 or record.step == self.total_steps:
            self.reporter.line(self._step_line(record))
        if self.dev is not None and config.eval_every and record.step % config.eval_every == 0 \
                and record.step != self.total_steps:
            self._evaluate(record.step, result)
        if config.save_every and record.step % config.save_every == 0 and record.step != self.total_steps:
            self._save(record.step, result)

    def _stop(self, result: TrainResult) -> None:
        """Ctrl-C: save the finished steps (unless just saved), then raise KeyboardInterrupt."""
        step = result.last_step
        if self.config.save_dir is None:
            self.reporter.warn(f"interrupted after step {step}: nothing saved (no --save-dir)")
        else:
            if not (result.checkpoints and result.checkpoints[-1].name == ckpt.checkpoint_name(step)):
                self._save(step, result)
            self.reporter.line(f"Interrupted after step {step}: continue with --resume")
        raise KeyboardInterrupt

    def _step_line(self, r: StepMetrics) -> str:
        text = f"Epoch [{r.epoch}/{self.num_epochs}], Step [{r.step}/{self.total_steps}], Loss: {r.loss:.4f}"
        return text + (f", Accuracy: {r.accuracy:.4f}" if r.accuracy is not None else "")

    def _finish(self, result: TrainResult) -> None:
        if self.dev is not None:
            self._evaluate(result.last_step, result)
        if self.config.save_dir is not None:
            if result.last_step > result.first_step or not ckpt.list_checkpoints(self.config.save_dir):
                self._save(result.last_step, result)
            if self.replicas.writer:
                write_summary(self.config.save_dir / SUMMARY_FILE, self._summary(result))

    # -- evaluation --
    def evaluate(self) -> EvalMetrics:
        """Loss, perplexity and accuracy over the dev split (forward sections only)."""
        if self.dev is None:
            raise ExecutionError(f"{self.config.data} has no dev split to evaluate")
        total = loss = hits = 0.0
        batches = eval_batches(self.dev, self.order.batch_size)
        for indices in batches:
            batch = self.dev.rows(self.replicas.share(indices))
            outputs = self.program.evaluate({**batch, "lr": np.float32(0.0), **self.replicas.idle_weight()},
                                            outputs=[n for n in EVAL_METRICS if n in self.outputs])
            weight = self.dev.weight(batch)
            total += weight
            loss += weight * float(outputs["loss"])
            hits += weight * float(outputs.get("accuracy", 0.0))
        total, loss, hits = self.replicas.sums([total, loss, hits])
        mean = loss / total if total else math.nan
        accuracy = hits / total if total and "accuracy" in self.outputs else None
        return EvalMetrics(mean, math.exp(mean) if mean < 700 else math.inf, accuracy, len(batches),
                           len(batches) * self.order.batch_size)

    def _evaluate(self, step: int, result: TrainResult) -> None:
        metrics = self.evaluate()
        result.evaluations.append((step, metrics))
        text = f"Evaluation loss: {metrics.loss:.4f}, Perplexity: {metrics.perplexity:.4f}"
        text += f", Accuracy: {metrics.accuracy:.4f}" if metrics.accuracy is not None else ""
        rows = len(self.dev)
        self.reporter.line(text + (f" ({metrics.rows} of {rows} dev rows: whole batches of {self.order.batch_size})"
                                   if metrics.rows < rows else f" ({rows} dev rows)"))
        if self.config.save_dir is not None and self.replicas.writer:
            append_eval_row(self.config.save_dir / EVAL_FILE, step, metrics)

    # -- checkpoints and files --
    def _save(self, step: int, result: TrainResult) -> None:
        if not self.replicas.writer:
            return
        save_dir = self.config.save_dir
        params = self.program.get_params()
        roles = {p.name: p.role for p in self.program.pef.symbols.params}
        weights = {k: v for k, v in params.items() if roles[k] != "state"}
        optimizer = {k: v for k, v in params.items() if roles[k] == "state"}
        data = Path(self.config.data)
        companions = [p for p in (self.config.checkpoint, data, tokenizer_folder(data))
                      if p is not None and p.is_dir()]
        folder = ckpt.save_checkpoint(save_dir / ckpt.checkpoint_name(step), weights, self._model_config(),
                                      optimizer, self._trainer_state(step, result), companions)
        result.checkpoints.append(folder)
        self.reporter.line(f"Saved checkpoint {folder}")
        if self.config.keep_last:
            ckpt.prune_checkpoints(save_dir, self.config.keep_last)

    def _model_config(self) -> dict[str, object]:
        model = str(self.options.get("model", "model"))
        fields = {k: v for k, v in self.options.items() if "." not in k and k not in NON_MODEL_OPTIONS}
        base = ckpt.source_config(self.config.checkpoint) if self.config.checkpoint is not None else None
        return ckpt.model_config(model, fields, base, recorded_tokenizer(self.train.metadata).get("eos_id"))

    def _data_state(self) -> dict[str, Any]:
        return {"path": str(self.config.data), "rows": len(self.train), "batch_size": self.order.batch_size,
                "shuffle": self.config.shuffle, "seed": self.config.seed}

    def _schedule_state(self) -> dict[str, Any]:
        s = self.schedule
        return {"lr": s.lr, "lr_schedule": s.name, "warmup_steps": s.warmup_steps, "total_steps": s.total_steps}

    def _trainer_state(self, step: int, result: TrainResult) -> dict[str, Any]:
        epoch, index = self.order.position(step)
        last = result.history[-1] if result.history else None
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "epoch": epoch,
            "data_position": {"epoch": epoch, "batch": index, "steps_per_epoch": self.order.steps_per_epoch},
            "data": self._data_state(),
            "rng": {"shuffle": "numpy PCG64 seeded with [seed, epoch], one permutation per epoch",
                    "seed": self.config.seed},
            "schedule": self._schedule_state(),
            "program": {"model": self.options.get("model"), "source_sha256": self.program.pef.header.source_sha256},
            "last_loss": last.loss if last else None,
        }

    def _open_metrics(self, first_step: int) -> MetricsFile | None:
        """The metrics CSV, resumed rows after `first_step` dropped (atomically); None without a save folder."""
        if self.config.save_dir is None or not self.replicas.writer:
            return None
        return MetricsFile(self.config.save_dir / METRICS_FILE, METRICS_COLUMNS, first_step)

    def _summary(self, result: TrainResult) -> dict[str, object]:
        pef, history = self.program.pef, result.history
        summary: dict[str, object] = {
            "model": self.options.get("model"), "target": pef.header.target.name, "data": str(self.config.data),
            "train_rows": len(self.train), "batch_size": self.batch_size,
            **({"data_parallel_ranks": self.replicas.size} if self.replicas.size > 1 else {}),
            "steps": f"{result.first_step + 1}-{result.last_step} of {result.total_steps}"
            if history else f"none (already at step {result.last_step})",
            "epochs": self.num_epochs, "lr": self.config.lr, "lr_schedule": self.config.lr_schedule,
            "warmup_steps": self.config.warmup_steps, "seed": self.config.seed,
            **{k: v for k, v in self.options.items() if k.startswith("training.")},
        }
        if history:
            steps = len(history)
            summary.update(first_loss=history[0].loss, final_loss=history[-1].loss,
                           min_loss=min(r.loss for r in history), train_seconds=round(result.train_seconds, 3),
                           host_ms_per_step=round(1e3 * result.train_seconds / steps, 3),
                           modeled_rdu_ms_per_step=round(1e3 * estimate(pef).time_s, 6),
                           samples_per_second=round(result.samples / max(result.train_seconds, 1e-9), 2))
            if result.tokens:
                summary["tokens_per_second"] = round(result.tokens / max(result.train_seconds, 1e-9), 1)
        if result.evaluations:
            step, e = result.evaluations[-1]
            summary.update(eval_step=step, eval_loss=e.loss, eval_perplexity=e.perplexity, eval_accuracy=e.accuracy,
                           eval_rows=f"{e.rows} of {len(self.dev)}")
        if result.checkpoints:
            summary["checkpoint"] = str(result.checkpoints[-1])
        return summary


#: header options that describe the compile, not the model's config (nor do dotted ones: `training.optimizer`)
NON_MODEL_OPTIONS = frozenset({"model", "target", "n_chips", "num_tiles", "inference", "pack_sections",
                               "batch_size", "seq_len"})


def append_eval_row(path: Path, step: int, metrics: EvalMetrics) -> None:
    """Add an evaluation to `path`, dropping rows of later steps (left by a run this one resumes)."""
    kept = kept_rows(path, step - 1)
    accuracy = "" if metrics.accuracy is None else repr(metrics.accuracy)
    row = [str(step), repr(metrics.loss), repr(metrics.perplexity), accuracy, str(metrics.rows)]
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([EVAL_COLUMNS, *kept, row])
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None


def write_summary(path: Path, summary: Mapping[str, object]) -> None:
    """`key: value` lines."""
    width = max(map(len, summary))
    path.write_text("".join(f"{k.ljust(width)} : {v}\n" for k, v in summary.items()), encoding="utf-8")
