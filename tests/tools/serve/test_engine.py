"""Continuous batching: slots, queue, cancellation, and batch invariance (tokens alone == beside others)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ir.errors import ExecutionError
from runtime.sampling import SamplingOptions
from runtime.serving import CANCELLED, EOS, LENGTH, STOP, Engine, QueueFull, Request
from serve_helpers import program_steps

REF = Path(__file__).resolve().parents[2] / "fixtures" / "ref" / "gpt2-tiny" / "expected.npz"
GREEDY = SamplingOptions(temperature=0.0)


class Recorder:
    """A request's callbacks: the tokens it was given and how it finished."""

    def __init__(self, stop_after: int | None = None):
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.done = threading.Event()
        self.stop_after = stop_after

    def on_token(self, token: int) -> bool:
        self.tokens.append(token)
        return self.stop_after is None or len(self.tokens) < self.stop_after

    def on_finish(self, reason: str) -> None:
        self.reason = reason
        self.done.set()


def request(prompt, max_tokens=8, sampling=GREEDY, eos=(127,), recorder=None) -> tuple[Request, Recorder]:
    recorder = recorder or Recorder()
    return Request(tuple(prompt), max_tokens, sampling, frozenset(eos), recorder.on_token,
                   recorder.on_finish), recorder


def run_all(engine: Engine, limit: int = 1000) -> None:
    for _ in range(limit):
        if not engine.step():
            return
    raise AssertionError("the engine did not run out of work")


@pytest.fixture(scope="module")
def steps(pef, checkpoint):
    return program_steps(pef, checkpoint)


def test_greedy_completions_equal_transformers(steps):
    with np.load(REF) as ref:
        prompts = [ref[f"gen_prompt_{i}"].tolist() for i in range(3)]
        expected = [ref[f"gen_new_{i}"].tolist() for i in range(3)]
    engine = Engine(steps)
    recorders = []
    for prompt in prompts:
        req, rec = request(prompt, max_tokens=12)
        engine.submit(req)
        recorders.append(rec)
    run_all(engine)
    assert [r.tokens for r in recorders] == expected
    assert [r.reason for r in recorders] == [LENGTH] * 3


def _workload(rng: np.random.Generator, count: int) -> list[tuple[list[int], int, SamplingOptions]]:
    """Prompts of 1..40 tokens (several prefill chunks of 16), budgets of 1..20, greedy and seeded sampling."""
    out = []
    for i in range(count):
        prompt = rng.integers(0, 127, size=int(rng.integers(1, 41))).tolist()
        sampling = GREEDY if i % 2 == 0 else SamplingOptions(temperature=0.9, top_p=0.95, seed=1000 + i)
        out.append((prompt, int(rng.integers(1, 21)), sampling))
    return out


def test_sixteen_requests_give_what_each_gives_alone(steps, oracle):
    work = _workload(np.random.default_rng(7), 16)
    alone = [oracle.tokens(p, n, temperature=s.temperature, top_p=s.top_p, seed=s.seed) for p, n, s in work]
    engine = Engine(steps)
    recorders = []
    for i, (prompt, max_tokens, sampling) in enumerate(work):
        req, rec = request(prompt, max_tokens, sampling)
        engine.submit(req)
        recorders.append(rec)
        if i % 3 == 2:  # staggered: some join while others are decoding
            engine.step()
    run_all(engine)
    assert [r.tokens for r in recorders] == alone
    assert all(r.reason in (LENGTH, EOS) for r in recorders)


def test_a_cancelled_request_frees_its_slot_for_a_waiting_one(steps):
    engine = Engine(steps)
    pairs = [request([1, 2, 3], max_tokens=30, eos=()) for _ in range(5)]
    for req, _ in pairs:
        engine.submit(req)
    engine.step()
    assert (engine.running, engine.queued) == (4, 1)
    engine.cancel(pairs[1][0])
    engine.step()
    assert pairs[1][1].reason == CANCELLED and len(pairs[1][1].tokens) == 1  # the prefill's token
    assert engine.slots[1] is pairs[4][0] and (engine.running, engine.queued) == (4, 0)
    run_all(engine)
    assert [len(rec.tokens) for _, rec in pairs] == [30, 1, 30, 30, 30]


def test_a_full_queue_refuses_requests(steps):
    engine = Engine(steps, max_queued=2)
    engine.submit(request([1])[0])
    engine.submit(request([2])[0])
    with pytest.raises(QueueFull, match="the server is busy: 2 requests are waiting"):
        engine.submit(request([3])[0])


@pytest.mark.parametrize("prompt, max_tokens, message", [
    ([], 4, "the prompt is empty"),
    ([1, 200], 4, "token id 200 is outside the model's vocabulary (0..127)"),
    ([1] * 60, 5, "the prompt has 60 tokens; with max_tokens 5 that is 65, more than the model's context of "
                  "64 tokens"),
    ([1], 0, "max_tokens must be at least 1, got 0"),
])
def test_requests_beyond_the_pef_are_refused(steps, prompt, max_tokens, message):
    with pytest.raises(ExecutionError) as err:
        Engine(steps).submit(request(prompt, max_tokens)[0])
    assert err.value.message == message


def test_any_declared_eos_id_ends_a_request_and_a_consumer_can_stop_it(steps, oracle):
    tokens = oracle.tokens([5, 6, 7], 10)
    eos_at = next(i for i in range(2, 10) if tokens[i] not in tokens[:i])  # a token new at step 3 or later
    engine = Engine(steps)
    ended, ended_rec = request([5, 6, 7], 10, eos=(127, tokens[eos_at]))
    stopped, stopped_rec = request([5, 6, 7], 10, recorder=Recorder(stop_after=4))
    engine.submit(ended)
    engine.submit(stopped)
    run_all(engine)
    assert ended_rec.tokens == tokens[:eos_at + 1] and ended_rec.reason == EOS
    assert stopped_rec.tokens == tokens[:4] and stopped_rec.reason == STOP


def test_the_engine_thread_serves_and_stops(steps, oracle):
    engine = Engine(steps)
    engine.start()
    try:
        pairs = [request([9, 8, 7, i], max_tokens=6) for i in range(6)]
        for req, _ in pairs:
            engine.submit(req)
        assert all(rec.done.wait(30) for _, rec in pairs)
    finally:
        engine.stop(timeout=30)
    assert [rec.tokens for _, rec in pairs] == [oracle.tokens([9, 8, 7, i], 6) for i in range(6)]
