"""Continuous batching: many requests share the B rows of a generation PEF.

Each batch row is a slot. Between decode steps, waiting requests take free slots and
their prompts are prefilled (the other rows compute nothing: see `runtime.generate`);
then one decode step advances every running request. A request that finishes (an
EOS id, its token budget, or its consumer saying stop) or is cancelled frees its slot
at once; `check` refuses a prompt plus budget beyond the cache. Waiting requests form a bounded queue: `submit`
raises `QueueFull` beyond `max_queued`.

Batch invariance: a request's tokens do not depend on its neighbours. Its prompt is
always prefilled from position 0 in chunks of P, it always decodes one token per
step, the kernels compute each row alone, and each request samples with its own
random generator (seeded by its `SamplingOptions.seed`). The tests check it.

`Engine.step` does one round (admit, prefill, decode) on the calling thread;
`Engine.start` runs rounds on a background thread, waiting when there is no work.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

import attrs

from ir.errors import ExecutionError
from runtime.generate import Steps, decode_rows, prefill_rows
from runtime.sampling import Sampler, SamplingOptions

log = logging.getLogger(__name__)

#: finish reasons
EOS, LENGTH, STOP, CANCELLED, ERROR = "eos", "length", "stop", "cancelled", "error"


class QueueFull(ExecutionError):
    """Every slot is busy and the waiting queue is full."""


@attrs.define(eq=False)
class Request:
    """One completion to generate.

    `on_token(token)` is called (on the engine's thread) with each new token and returns
    False to end the request (a stop string); `on_finish(reason)` is called once at the end.
    """

    prompt: tuple[int, ...]
    max_tokens: int
    sampling: SamplingOptions
    eos_ids: frozenset[int]
    on_token: Callable[[int], bool]
    on_finish: Callable[[str], None]
    tokens: list[int] = attrs.field(factory=list)
    cancelled: bool = False
    sampler: Sampler = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.sampler = Sampler(self.sampling)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.tokens)


class Engine:
    """Schedules requests onto the batch rows of `steps` (see the module docstring)."""

    def __init__(self, steps: Steps, max_queued: int = 64):
        self.steps = steps
        self.limits = steps.limits
        self.max_queued = max_queued
        self.slots: list[Request | None] = [None] * self.limits.batch
        self.waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False

    # --- the caller's side ---------------------------------------------------------------
    def check(self, prompt: Sequence[int], max_tokens: int) -> None:
        """ExecutionError if a request cannot run on this PEF (empty, unknown ids, too long)."""
        if not prompt:
            raise ExecutionError("the prompt is empty")
        bad = next((t for t in prompt if not 0 <= t < self.limits.vocab), None)
        if bad is not None:
            raise ExecutionError(f"token id {bad} is outside the model's vocabulary (0..{self.limits.vocab - 1})")
        if max_tokens < 1:
            raise ExecutionError(f"max_tokens must be at least 1, got {max_tokens}")
        if len(prompt) + max_tokens > self.limits.max_seq_length:
            raise ExecutionError(f"the prompt has {len(prompt)} tokens; with max_tokens {max_tokens} that is "
                                 f"{len(prompt) + max_tokens}, more than the model's context of "
                                 f"{self.limits.max_seq_length} tokens")

    def submit(self, request: Request) -> None:
        """Queue a request (checked with `check`); QueueFull when the queue is full."""
        self.check(request.prompt, request.max_tokens)
        with self._wake:
            if len(self.waiting) >= self.max_queued:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting")
            self.waiting.append(request)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """End a request early (its client left); its slot is freed before the next step."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    @property
    def running(self) -> int:
        return sum(slot is not None for slot in self.slots)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # --- the engine's side ---------------------------------------------------------------
    def step(self) -> bool:
        """One round: drop cancelled requests, admit waiting ones into free slots and prefill
        them, then decode one token for every running request. False if there was nothing to do."""
        admitted = self._admit()
        if admitted:
            logits = prefill_rows(self.steps, {b: self.slots[b].prompt for b in admitted})
            for b in admitted:
                self._accept(b, logits[b])
        active = [b for b, request in enumerate(self.slots) if request is not None and b not in admitted]
        if active:
            logits = decode_rows(self.steps, {b: (self.slots[b].tokens[-1], self.slots[b].length - 1)
                                              for b in active})
            for b in active:
                self._accept(b, logits[b])
        return bool(admitted or active)

    def _admit(self) -> list[int]:
        """Free the slots of cancelled requests; move waiting requests into free slots."""
        with self._wake:
            for b, request in enumerate(self.slots):
                if request is not None and request.cancelled:
                    self._finish(b, CANCELLED)
            for request in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(request)
                request.on_finish(CANCELLED)
            admitted = []
            for b, slot in enumerate(self.slots):
                if slot is None and self.waiting:
                    self.slots[b] = self.waiting.popleft()
                    admitted.append(b)
            return admitted

    def _accept(self, b: int, logits) -> None:
        request = self.slots[b]
        token = request.sampler.next_token(logits, (*request.prompt, *request.tokens))
        request.tokens.append(token)
        try:
            go_on = request.on_token(token)
        except Exception:  # noqa: BLE001 - a consumer's bug ends its own request only
            log.exception("a request's token callback failed")
            self._finish(b, ERROR)
            return
        if token in request.eos_ids:
            self._finish(b, EOS)
        elif not go_on:
            self._finish(b, STOP)
        elif len(request.tokens) >= request.max_tokens:  # `check` keeps this within the cache
            self._finish(b, LENGTH)

    def _finish(self, b: int, reason: str) -> None:
        request, self.slots[b] = self.slots[b], None
        request.on_finish(reason)

    def _fail_all(self) -> None:
        """After an internal error: end every request with ERROR (the engine keeps serving)."""
        with self._wake:
            for b, request in enumerate(self.slots):
                if request is not None:
                    self._finish(b, ERROR)

    # --- the background thread -----------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="rduflow-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread after the current round; requests still waiting or running are cancelled."""
        with self._wake:
            self._running = False
            for request in [*self.waiting, *filter(None, self.slots)]:
                request.cancelled = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._admit()

    def _loop(self) -> None:
        while self._running:
            try:
                busy = self.step()
            except Exception:  # noqa: BLE001 - a bug must not stop the server: log it, fail the batch
                log.exception("generation step failed")
                self._fail_all()
                busy = False
            if not busy:
                with self._wake:
                    if self._running and not self.waiting:
                        self._wake.wait(timeout=1.0)
