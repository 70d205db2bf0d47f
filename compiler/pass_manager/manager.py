"""The pass manager: runs a pipeline, verifies between passes, calls instrumentation hooks.

    pm = PassManager.parse("canonicalize,cse,dce")
    graph = pm.run(graph)

Instrumentations (see `compiler.pass_manager.instrument`) print IR, time passes, gather
statistics, check semantics or gate passes (bisect). When a pass raises an
unexpected exception and `crash_dir` is set, the manager writes a reproducer —
the pipeline's input IR with the pipeline up to the failing pass in a leading
comment — prints the `rduflow opt` command that replays it, and re-raises.
"""
from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence, TextIO

import attrs

from compiler.pass_manager.base import Pass, PassContext
from compiler.pass_manager.pipeline_syntax import format_pipeline, parse_pipeline
from ir.errors import PassError, RduflowError, VerifyError
from ir.graph import Graph
from ir.printer import print_graph
from ir.verifier import verify


@attrs.define
class PassRecord:
    """One execution of a pass in a pipeline run (`index` counts from 1)."""

    index: int
    pass_: Pass
    seconds: float = 0.0
    verify_seconds: float = 0.0
    counters: Counter = attrs.field(factory=Counter)

    @property
    def label(self) -> str:
        return f"{self.pass_.name} (#{self.index})"


class Instrumentation:
    """Hooks around a pipeline run; subclasses override what they need."""

    def before_pipeline(self, graph: Graph) -> None:
        """Called once with the input graph."""

    def should_run(self, record: PassRecord) -> bool:
        """Whether to run this pass execution (every gate must agree)."""
        return True

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        """Called before a pass that runs."""

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        """Called after a pass that ran and whose output verified."""

    def after_pipeline(self, graph: Graph) -> None:
        """Called once with the output graph."""


class PassManager:
    """An ordered list of configured passes and the instrumentation around them."""

    def __init__(self, passes: Sequence[Pass] = (), *, verify: bool = True,
                 instrumentations: Sequence[Instrumentation] = (), crash_dir: Path | None = None,
                 replay_args: Sequence[str] = (), stream: TextIO | None = None):
        self.passes = list(passes)
        self.verify = verify
        self.instrumentations = list(instrumentations)
        self.crash_dir = crash_dir
        self.replay_args = list(replay_args)
        self.stream = stream
        self.records: list[PassRecord] = []
        self.counters: Counter = Counter()
        #: the compile target handed to every pass (see `PassContext.target`)
        self.target: str | None = None

    @classmethod
    def parse(cls, pipeline: str, **options) -> PassManager:
        """A manager for a textual pipeline such as `canonicalize,cse,dce`."""
        return cls(parse_pipeline(pipeline), **options)

    def add(self, pass_: Pass) -> PassManager:
        self.passes.append(pass_)
        return self

    def pipeline(self) -> str:
        return format_pipeline(self.passes)

    def run(self, graph: Graph) -> Graph:
        """Run every pass in order and return the resulting graph."""
        self.records, self.counters = [], Counter()
        original = print_graph(graph) if self.crash_dir is not None else None
        if self.verify:
            self._verify(graph, None)
        for hook in self.instrumentations:
            hook.before_pipeline(graph)
        ran: list[Pass] = []
        for index, pass_ in enumerate(self.passes, 1):
            record = PassRecord(index, pass_)
            if not all([hook.should_run(record) for hook in self.instrumentations]):
                continue
            ran.append(pass_)
            graph = self._run_one(record, graph, original, ran)
        for hook in self.instrumentations:
            hook.after_pipeline(graph)
        return graph

    def _run_one(self, record: PassRecord, graph: Graph, original: str | None, ran: list[Pass]) -> Graph:
        for hook in self.instrumentations:
            hook.before_pass(record, graph)
        ctx = PassContext(record.pass_, record.counters, self.target)
        start = time.perf_counter()
        try:
            result = record.pass_.run(graph, ctx)
        except RduflowError:
            raise
        except Exception as err:
            if original is not None:
                self._write_reproducer(record, err, original, ran)
            raise
        record.seconds = time.perf_counter() - start
        if not isinstance(result, Graph):
            raise TypeError(f"pass '{record.pass_.name}' returned {type(result).__name__}, not a Graph")
        if self.verify:
            start = time.perf_counter()
            self._verify(result, record)
            record.verify_seconds = time.perf_counter() - start
        self.records.append(record)
        self.counters.update(record.counters)
        for hook in self.instrumentations:
            hook.after_pass(record, result)
        return result

    def _verify(self, graph: Graph, record: PassRecord | None) -> None:
        try:
            verify(graph)
        except VerifyError as err:
            when = f"after pass {record.label}" if record else "given to the pass pipeline"
            raise PassError(f"the IR {when} is invalid: {err.message}", err.location) from None

    def _write_reproducer(self, record: PassRecord, err: Exception, original: str, ran: list[Pass]) -> None:
        name = record.pass_.name
        path = self.crash_dir / f"rduflow-crash-{name}.ir"
        command = shlex.join(["rduflow", "opt", str(path), "-p", format_pipeline(ran), *self.replay_args])
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        header = (f"// rduflow crash reproducer: pass {record.label} raised {reason}\n"
                  f"// replay: {command}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + original)
        stream = self.stream or sys.stderr
        print(f"error: pass {record.label} crashed ({reason})\n"
              f"reproducer written to {path}; replay it with:\n  {command}", file=stream)
