"""Ctrl-C at a safe point: within `deferred_interrupt()` the first SIGINT is only recorded,
for a loop to see between steps (so it can save a consistent checkpoint, then stop);
a second SIGINT interrupts at once, as usual.

    with deferred_interrupt() as stop:
        for step in steps:
            run(step)
            if stop.requested:
                save(); raise KeyboardInterrupt
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import attrs


@attrs.define
class StopRequest:
    requested: bool = False


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[StopRequest]:
    """Defer the first SIGINT (main thread only; elsewhere signals cannot be handled and nothing changes)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def record(signum: int, frame: object) -> None:
        request.requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once

    signal.signal(signal.SIGINT, record)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
