"""Pass instrumentation: IR printing and dumps, timing, statistics, opt-bisect.

Each class hooks into `PassManager` runs (see `Instrumentation`). Reports go to
`stream` (standard error by default, looked up when written so it can be redirected).
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Collection, TextIO

from rich.console import Console
from rich.table import Table

from compiler.pass_manager.manager import Instrumentation, PassRecord
from ir.graph import Graph
from ir.printer import print_graph


class _Reporter(Instrumentation):
    def __init__(self, stream: TextIO | None = None):
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def console(self) -> Console:
        return Console(file=self.stream, highlight=False, soft_wrap=False)


def _banner(when: str, record: PassRecord | None) -> str:
    what = record.label if record else "the pipeline input"
    return f"// -----// IR Dump {when} {what} //----- //"


class PrintIR(_Reporter):
    """Print the IR before/after the named passes, after all, or after those that change it."""

    def __init__(self, before: Collection[str] = (), after: Collection[str] = (), after_all: bool = False,
                 after_change: bool = False, stream: TextIO | None = None):
        super().__init__(stream)
        self.before, self.after = set(before), set(after)
        self.after_all, self.after_change = after_all, after_change
        self._previous: str | None = None

    def before_pipeline(self, graph: Graph) -> None:
        self._previous = None

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        wanted = record.pass_.name in self.before
        if not (wanted or (self.after_change and self._previous is None)):
            return
        text = print_graph(graph)
        if wanted:
            self._print("Before", record, text)
        if self.after_change:
            self._previous = text

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        """With `after_change`, the text printed here is the next pass's "before" (passes only
        change the graph while they run), so each graph is printed once."""
        wanted = self._wants_after(record.pass_.name)
        if not (wanted or self.after_change):
            return
        text = print_graph(graph)
        if wanted or text != self._previous:
            self._print("After", record, text)
        if self.after_change:
            self._previous = text

    def _wants_after(self, name: str) -> bool:
        return self.after_all or name in self.after

    def _print(self, when: str, record: PassRecord, text: str) -> None:
        print(_banner(when, record), file=self.stream)
        print(text, file=self.stream)


_DUMP = re.compile(r"\d{2,}-.+\.ir\Z")


class DumpDir(Instrumentation):
    """Write `00-input.ir`, then one numbered file per pass run: `03-cse.ir`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def before_pipeline(self, graph: Graph) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.iterdir():
            if _DUMP.match(stale.name):
                stale.unlink()
        (self.directory / "00-input.ir").write_text(print_graph(graph))

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        (self.directory / f"{record.index:02d}-{record.pass_.name}.ir").write_text(print_graph(graph))


class Bisect(_Reporter):
    """LLVM's opt-bisect: run only the first `limit` pass executions, saying which run."""

    def __init__(self, limit: int, stream: TextIO | None = None):
        super().__init__(stream)
        self.limit = limit

    def should_run(self, record: PassRecord) -> bool:
        run = record.index <= self.limit
        verb = "running" if run else "NOT running"
        print(f"BISECT: {verb} pass ({record.index}) {record.pass_.name}", file=self.stream)
        return run


class TimePasses(_Reporter):
    """A table of wall time per pass run, and of the verifier, at the end of the pipeline."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        self.records: list[PassRecord] = []

    def before_pipeline(self, graph: Graph) -> None:
        self.records = []

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        self.records.append(record)

    def after_pipeline(self, graph: Graph) -> None:
        self.console().print(timing_table(self.records))


def timing_table(records: list[PassRecord]) -> Table:
    verify = sum(r.verify_seconds for r in records)
    total = sum(r.seconds for r in records) + verify
    table = Table(title="Pass execution timing report", title_justify="left")
    for column in ("#", "pass", "wall time (ms)", "%"):
        table.add_column(column, justify="left" if column == "pass" else "right")

    def row(index: str, name: str, seconds: float, **style) -> None:
        share = 100.0 * seconds / total if total else 0.0
        table.add_row(index, name, f"{seconds * 1e3:.2f}", f"{share:.1f}", **style)

    for record in records:
        row(str(record.index), record.pass_.spec(), record.seconds)
    row("", "(verifier)", verify)
    row("", "total", total, end_section=False, style="bold")
    return table


class PassStatistics(_Reporter):
    """A table of the statistics every pass declares, summed over its runs."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        self.declared: dict[str, str] = {}
        self.counters: Counter = Counter()

    def before_pipeline(self, graph: Graph) -> None:
        self.declared, self.counters = {}, Counter()

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        for stat, meaning in record.pass_.statistics.items():
            self.declared.setdefault(f"{record.pass_.name}.{stat}", meaning)
        self.counters.update(record.counters)

    def after_pipeline(self, graph: Graph) -> None:
        table = Table(title="Pass statistics", title_justify="left")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        table.add_column("meaning")
        for key, meaning in self.declared.items():
            table.add_row(key, str(self.counters[key]), meaning)
        self.console().print(table)
