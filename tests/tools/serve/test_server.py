"""`rduflow serve`'s HTTP API, live on loopback, through the official `openai` client and httpx."""
from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import openai
import pytest

from serve_helpers import MODEL_NAME, live_server, served_model

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def url(pef, checkpoint):
    with live_server(served_model(pef, checkpoint)) as base:
        yield base


@pytest.fixture()
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def completion(client, prompt="Once upon", **options):
    return client.completions.create(model=MODEL_NAME, prompt=prompt, **{"max_tokens": 12, "temperature": 0,
                                                                            **options})


def streamed_completion(client, **options) -> tuple[str, str | None]:
    chunks = list(completion(client, stream=True, **options))
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason


def test_models_lists_the_served_model(client):
    [model] = client.models.list().data
    assert model.id == MODEL_NAME and model.owned_by == "rduflow"


def test_a_completion_is_what_the_prompt_gives_alone(client, oracle):
    answer = completion(client, "Once upon", max_tokens=12, frequency_penalty=0, logprobs=None, best_of=1)
    tokens = oracle.tokens(oracle.tokenizer.encode("Once upon"), 12)
    assert answer.choices[0].text == oracle.tokenizer.decode(tokens)
    assert answer.choices[0].finish_reason == ("stop" if tokens[-1] == 127 else "length")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, len(tokens))
    assert answer.usage.total_tokens == 9 + len(tokens)
    assert answer.model == MODEL_NAME and answer.object == "text_completion"


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "top_p": 0.9, "seed": 11}])
def test_a_streamed_completion_concatenates_to_the_whole_one(client, sampling):
    whole = completion(client, "The moon", max_tokens=20, **sampling)
    text, finish = streamed_completion(client, prompt="The moon", max_tokens=20, **sampling)
    assert (text, finish) == (whole.choices[0].text, whole.choices[0].finish_reason)


def test_seeded_sampling_repeats_and_equals_running_alone(client, oracle):
    first = completion(client, "Puck", max_tokens=16, temperature=0.8, top_p=0.9, seed=5).choices[0].text
    assert completion(client, "Puck", max_tokens=16, temperature=0.8, top_p=0.9, seed=5).choices[0].text == first
    assert first == oracle.text("Puck", 16, temperature=0.8, top_p=0.9, seed=5)
    assert completion(client, "Puck", max_tokens=16, temperature=0.8, top_p=0.9, seed=6).choices[0].text != first


def test_chat_renders_the_checkpoint_template(client, oracle):
    answer = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=10, temperature=0)
    prompt = oracle.chat_prompt(MESSAGES)
    assert prompt == "s:Be brief.<|endoftext|>u:Hi<|endoftext|>a:"
    assert answer.usage.prompt_tokens == len(oracle.tokenizer.encode(prompt)) == 19  # each <|endoftext|> is one id
    assert answer.choices[0].message.content == oracle.text(prompt, 10)
    assert answer.choices[0].message.role == "assistant" and answer.object == "chat.completion"


def test_a_streamed_chat_concatenates_to_the_whole_one_and_reports_usage(client):
    options = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    whole = client.chat.completions.create(**options)
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_the_stream_is_server_sent_events_ending_with_done(url):
    body = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2]) and len(events) == 6  # 3 tokens, finish, [DONE]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_text_before_them(client, oracle, stream):
    full = oracle.text("Titania", 30)
    stop = full[5:7]
    expected = full[:full.find(stop)]
    options = {"prompt": "Titania", "max_tokens": 30, "stop": ["@@never", stop]}
    if stream:
        assert streamed_completion(client, **options) == (expected, "stop")
    else:
        answer = completion(client, **options)
        assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected, "stop")
        assert answer.usage.completion_tokens < 30


def test_sixteen_concurrent_requests_each_equal_running_alone(url, oracle):
    rng = np.random.default_rng(3)
    work = [("".join(chr(c) for c in rng.integers(65, 91, size=int(rng.integers(1, 30)))), int(rng.integers(4, 25)),
             {"temperature": 0} if i % 2 else {"temperature": 0.9, "seed": 100 + i}) for i in range(16)]

    async def run_all():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        async with client:
            answers = await asyncio.gather(*(client.completions.create(
                model=MODEL_NAME, prompt=p, max_tokens=n, **s) for p, n, s in work))
        return [a.choices[0].text for a in answers]

    alone = [oracle.text(p, n, **s) for p, n, s in work]
    assert asyncio.run(run_all()) == alone


ERRORS = [
    ({"model": "gpt-4", "prompt": "x"}, 404, "model_not_found", "The model `gpt-4` does not exist"),
    ({"model": MODEL_NAME, "prompt": "x" * 60, "max_tokens": 10}, 400, None,
     "the prompt has 60 tokens; with max_tokens 10 that is 70, more than the model's context of 64 tokens"),
    ({"model": MODEL_NAME, "prompt": "x", "temperature": 3}, 400, None, "temperature: Input should be less than"),
    ({"model": MODEL_NAME, "prompt": "x", "top_p": 0}, 400, None, "top_p: Input should be greater than 0"),
    ({"model": MODEL_NAME, "prompt": "x", "max_tokens": 0}, 400, None, "max_tokens: Input should be greater"),
    ({"model": MODEL_NAME, "prompt": "x", "n": 2}, 400, None, "n: Input should be 1"),
    ({"model": MODEL_NAME, "prompt": "x", "stop": list("abcde")}, 400, None, "at most 4 stop sequences"),
    ({"model": MODEL_NAME, "prompt": ["a", "b"]}, 400, None, "one prompt per request, got 2"),
    ({"model": MODEL_NAME, "prompt": [1, 500]}, 400, None, "token id 500 is outside the model's vocabulary"),
    ({"model": MODEL_NAME, "prompt": ""}, 400, None, "the prompt is empty"),
    ({"prompt": "x"}, 400, None, "model: Field required"),
    ({"model": MODEL_NAME, "prompt": "x", "logprobs": 1}, 400, None, "logprobs is not supported by rduflow serve"),
    ({"model": MODEL_NAME, "prompt": "x", "echo": True}, 400, None, "echo is not supported by rduflow serve"),
    ({"model": MODEL_NAME, "prompt": "x", "presence_penalty": 0.5}, 400, None, "presence_penalty is not supported"),
]


@pytest.mark.parametrize("body, status, code, message", ERRORS)
def test_completion_errors_are_openai_error_objects(url, body, status, code, message):
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == code and error["type"]


@pytest.mark.parametrize("body, message", [
    ({"model": MODEL_NAME, "messages": []}, "messages: List should have at least 1 item"),
    ({"model": MODEL_NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content"),
    ({"model": MODEL_NAME, "messages": [{"content": "no role"}]}, "messages.0.role: Field required"),
    ({"model": MODEL_NAME, "messages": MESSAGES, "max_completion_tokens": 60}, "more than the model's context"),
    ({"model": MODEL_NAME, "messages": MESSAGES, "logprobs": True}, "logprobs is not supported by rduflow serve"),
])
def test_chat_errors_are_openai_error_objects(url, body, message):
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


@pytest.mark.parametrize("method, path, content, status, message", [
    ("POST", "/v1/completions", b"{not json", 400, "the request body is not valid JSON"),
    ("POST", "/v1/completions", b"[1, 2]", 400, "the request body must be a JSON object"),
    ("POST", "/v1/chat/completions", b"\xff\xfe", 400, "the request body is not valid JSON"),
    ("GET", "/v1/nothing", None, 404, "GET /v1/nothing: Not Found"),
    ("GET", "/v1/completions", None, 405, "GET /v1/completions: Method Not Allowed"),
])
def test_malformed_requests_are_openai_error_objects(url, method, path, content, status, message):
    response = httpx.request(method, f"{url}{path}", content=content, timeout=30)
    assert response.status_code == status and response.json()["error"]["message"].startswith(message)


def test_the_openai_client_raises_its_own_errors_and_the_server_keeps_serving(client):
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist") as err:
        client.completions.create(model="nope", prompt="x")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="context of 64 tokens"):
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=50)
    assert completion(client, max_tokens=2).usage.completion_tokens == 2


def test_health_and_metrics(url, client):
    completion(client, max_tokens=3)
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "running": 0, "queued": 0}
    text = httpx.get(f"{url}/metrics").text
    values = {m[0]: float(m[1]) for m in re.findall(r"^(rduflow_[^ ]+) (\S+)$", text, re.M)}
    assert values['rduflow_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["rduflow_generation_tokens_total"] >= 3 and values["rduflow_prompt_tokens_total"] >= 9
    assert values["rduflow_time_to_first_token_seconds_count"] >= 1
    assert values["rduflow_time_per_output_token_seconds_count"] >= 2
    assert values["rduflow_queue_depth"] == 0 and values["rduflow_running_requests"] == 0


def test_load_200_requests_from_16_clients(url):
    """None lost, none failed; prints p50/p99 latency and the aggregate tokens per second."""
    prompts = [f"Request {i}: " for i in range(200)]

    async def run_all():
        queue: asyncio.Queue[str] = asyncio.Queue()
        for p in prompts:
            queue.put_nowait(p)
        latencies, tokens = [], []
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        async def worker():
            while not queue.empty():
                prompt = queue.get_nowait()
                start = time.perf_counter()
                answer = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16,
                                                         temperature=0)
                latencies.append(time.perf_counter() - start)
                tokens.append(answer.usage.completion_tokens)

        async with client:
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(16)))
        return latencies, tokens, time.perf_counter() - start

    latencies, tokens, seconds = asyncio.run(run_all())
    assert len(latencies) == 200 and all(n >= 1 for n in tokens)
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\nload: 200 requests, 16 clients: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"{sum(tokens) / seconds:.0f} tokens/s aggregate ({sum(tokens)} tokens in {seconds:.2f} s)")
