"""Host time against modeled RDU time, per kernel and per section: tables and traces.

    program.run(inputs, profile=True)           # records host time per kernel
    print_profile(program.profile, estimate(program.pef))
    write_trace("trace.json", program.profile, estimate(program.pef))

The trace is Chrome's trace-event JSON (open it in Perfetto or chrome://tracing):
process 1 is the host (measured, mean per step), process 2 the modeled RDU, whose
sections run one after another while a section's kernels run at once.
"""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from backend.pef.file import PEF
from ir.errors import ExecutionError
from runtime.cost_model import CostReport


class Profile:
    """Host seconds per kernel, summed over the profiled steps."""

    def __init__(self, pef: PEF):
        self.names = [k.name for k in pef.kernels]
        self.ops = [k.op for k in pef.kernels]
        self.section_of = {k: s.index for s in pef.sections for k in s.kernels}
        self.totals = [0.0] * len(self.names)
        self.steps = 0

    def add_step(self, timings: list[float]) -> None:
        for i, seconds in enumerate(timings):
            self.totals[i] += seconds
        self.steps += 1

    def kernel_seconds(self) -> list[float]:
        """Mean host seconds per step of each kernel."""
        return [t / self.steps if self.steps else 0.0 for t in self.totals]

    def section_seconds(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for i, seconds in enumerate(self.kernel_seconds()):
            section = self.section_of[i]
            out[section] = out.get(section, 0.0) + seconds
        return out

    @property
    def step_seconds(self) -> float:
        return sum(self.kernel_seconds())


#: a table's width when the output is not a terminal: wide enough never to cut a name
UNBOUNDED_WIDTH = 10_000
#: what each `RDU bound` means
BOUNDS = {"compute": "the PCUs' arithmetic", "onchip": "the PMUs' bandwidth", "offchip": "off-chip memory traffic",
          "link": "the links the gradient all-reduce crosses between replicas",
          "fill": "filling and draining the section's pipeline",
          "config": "loading the section's configuration onto the chip"}


def table_console(stderr: bool = False) -> Console:
    """A console for tables: a terminal's width, else unbounded (a redirected table keeps whole names)."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=UNBOUNDED_WIDTH)
    return console


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f}"


def kernel_table(profile: Profile, report: CostReport, top: int | None = None) -> Table:
    """Per kernel: host ms (mean per step), modeled RDU us and what bounds it, slowest host first;
    the `top` slowest only (None: all), which the title says."""
    count = len(profile.names)
    shown = count if top is None else min(top, count)
    which = f"all {count} kernels" if shown == count else f"top {shown} of {count} kernels by host time"
    table = Table(title=f"Kernels: host vs modeled RDU ({report.target}, {profile.steps} step(s)): {which}")
    for column in ("kernel", "op", "section", "phase", "host ms", "RDU us", "RDU bound", "MFLOP"):
        table.add_column(column, justify="left" if column in ("kernel", "op", "phase", "RDU bound") else "right")
    host = profile.kernel_seconds()
    order = sorted(range(len(host)), key=lambda i: -host[i])[:shown]
    for i in order:
        k = report.kernels[i]
        table.add_row(k.name, k.op, str(k.section), k.phase or "-", _ms(host[i]), _us(k.time_s), k.bound,
                      f"{k.flops / 1e6:.3f}")
    return table


def section_table(profile: Profile, report: CostReport) -> Table:
    """Per section: host ms, modeled RDU us (pipelined), bound; then the totals."""
    table = Table(title="Sections")
    for column in ("section", "phase", "kernels", "host ms", "RDU us", "RDU bound"):
        table.add_column(column, justify="left" if column in ("phase", "RDU bound") else "right")
    host = profile.section_seconds()
    for s in report.sections:
        table.add_row(str(s.index), s.phase or "-", str(len(s.kernels)), _ms(host.get(s.index, 0.0)),
                      _us(s.time_s), s.bound)
    table.add_section()
    table.add_row("total", "", str(len(report.kernels)), _ms(profile.step_seconds), _us(report.time_s),
                  f"{report.utilization:.1%} util")
    return table


def print_profile(profile: Profile, report: CostReport, console: Console | None = None, top: int | None = 20) -> None:
    """The kernel table (the `top` slowest on the host; None: all), the section table, what the bounds mean."""
    console = console or table_console()
    console.print(kernel_table(profile, report, top))
    console.print(section_table(profile, report))
    console.print(f"host {profile.step_seconds * 1e3:.3f} ms/step, modeled RDU {report.time_s * 1e6:.2f} us/step "
                  f"on {report.chips} x {report.target}, {report.flops / 1e6:.3f} MFLOP/step")
    shown = sorted({k.bound for k in report.kernels} | {s.bound for s in report.sections},
                   key=lambda b: (list(BOUNDS).index(b) if b in BOUNDS else len(BOUNDS), b))
    console.print("RDU bound, what limits the modeled time: "
                  + "; ".join(f"{b}: {BOUNDS.get(b, 'see runtime/cost_model.py')}" for b in shown))


def trace_events(profile: Profile, report: CostReport) -> list[dict]:
    """Chrome trace events: the host's kernels in sequence, the RDU's sections and their kernels."""
    events: list[dict] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "host (measured, mean per step)"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": f"RDU {report.target} (modeled)"}},
    ]
    clock = 0.0
    for i, seconds in enumerate(profile.kernel_seconds()):
        k = report.kernels[i]
        events.append({"ph": "X", "pid": 1, "tid": 0, "name": k.name, "cat": k.op, "ts": clock * 1e6,
                       "dur": seconds * 1e6, "args": {"section": k.section, "phase": k.phase}})
        clock += seconds
    clock = 0.0
    for s in report.sections:
        events.append({"ph": "X", "pid": 2, "tid": 0, "name": f"section {s.index}", "cat": s.phase or "section",
                       "ts": clock * 1e6, "dur": s.time_s * 1e6,
                       "args": {"bound": s.bound, "offchip_bytes": s.offchip_bytes, "pcus": s.pcus}})
        for slot, i in enumerate(s.kernels, start=1):
            k = report.kernels[i]
            events.append({"ph": "X", "pid": 2, "tid": slot, "name": k.name, "cat": k.op,
                           "ts": (clock + s.load_s) * 1e6, "dur": (s.time_s - s.load_s) * 1e6,
                           "args": {"stage_us": k.time_s * 1e6, "bound": k.bound, "pcus": k.pcus,
                                    "pmus": k.pmus, "flops": k.flops}})
        clock += s.time_s
    return events


def write_trace(path: str | Path, profile: Profile, report: CostReport) -> None:
    """Write the Chrome/Perfetto trace JSON of both timelines."""
    data = {"traceEvents": trace_events(profile, report), "displayTimeUnit": "ms"}
    try:
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError as err:
        raise ExecutionError(f"cannot write trace {path}: {err.strerror or err}") from None
