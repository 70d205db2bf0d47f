"""A live server whose decode steps are slowed, so requests stay in flight: a client that leaves
frees its slot, a full queue answers 429, and a shutdown lets the requests in flight finish."""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from serve_helpers import MODEL_NAME, free_port, served_model, wait_healthy
from tools.serve import create_app

STEP_SECONDS = 0.02


class SlowSteps:
    """The entry points, each decode step taking at least STEP_SECONDS."""

    def __init__(self, steps):
        self.steps, self.limits = steps, steps.limits

    def prefill(self, *args):
        return self.steps.prefill(*args)

    def decode(self, *args):
        time.sleep(STEP_SECONDS)
        return self.steps.decode(*args)


@pytest.fixture()
def server(pef, checkpoint):
    """A slowed server with one place in the queue; yields (url, uvicorn server)."""
    model = served_model(pef, checkpoint, max_queued=1, wrap=SlowSteps)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=20))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 30)
    yield url, server
    server.should_exit = True
    thread.join(30)
    assert not thread.is_alive()


def long_stream(client: httpx.Client, prompt: str = "Hi"):
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 50, "temperature": 0, "stream": True}
    return client.stream("POST", "/v1/completions", json={**body, "stop": None}, timeout=60)


def metric(url: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        with long_stream(client) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")  # the first token has come
    wait_for(lambda: metric(url, "rduflow_cancelled_requests_total") == 1)
    assert httpx.get(f"{url}/health").json()["running"] == 0
    assert metric(url, "rduflow_generation_tokens_total") < 50


def test_a_client_that_leaves_before_a_whole_answer_frees_its_slot(server):
    url, _ = server
    body = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 50, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.2)
    wait_for(lambda: metric(url, "rduflow_cancelled_requests_total") == 1)
    assert httpx.get(f"{url}/health").json()["running"] == 0


def test_a_full_queue_answers_429_and_the_server_keeps_serving(server, oracle):
    url, _ = server
    long = [p for p in (f"p{i}" for i in range(40)) if 127 not in oracle.tokens(oracle.tokenizer.encode(p), 50)]
    with httpx.Client(base_url=url) as client, contextlib.ExitStack() as stack:
        streams = []
        for i in range(5):  # 4 slots, then 1 waiting
            streams.append(stack.enter_context(long_stream(client, long[i])))
            if i < 4:
                wait_for(lambda: httpx.get(f"{url}/health").json()["queued"] == 0)
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "running": 4, "queued": 1}
        refused = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError, match="the server is busy: 1 requests are waiting") as err:
            refused.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
        assert err.value.code == "queue_full"
        for stream in streams:
            assert stream.read().endswith(b"data: [DONE]\n\n")
    answer = refused.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, temperature=0)
    assert answer.usage.completion_tokens == 2
    assert metric(url, 'rduflow_requests_total{endpoint="/v1/completions",status="429"}') == 1


def test_sigterm_finishes_the_requests_in_flight_and_takes_no_new_ones(server):
    url, uvicorn_server = server
    with httpx.Client(base_url=url) as client:
        with long_stream(client) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
            uvicorn_server.handle_exit(signal.SIGTERM, None)  # what uvicorn's SIGTERM handler does
            wait_for(lambda: not _accepts(url))
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and len(rest) == 51  # 49 more tokens, the finish chunk, [DONE]


def _accepts(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
        return True
    except httpx.TransportError:
        return False
