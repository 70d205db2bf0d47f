"""Serving throughput: aggregate tokens/s of `rduflow serve` (continuous batching over a `-b 4` PEF of
GPT-2 small's shape, random weights) with 1, 4 and 16 concurrent clients, against the same requests
run one by one with `runtime.generate.generate` (what `rduflow run` does per prompt).

    python -m pytest tests/benchmarks/test_bench_serve.py --benchmark-enable -s

Each round sends the same `REQUESTS` requests (16-token prompts of random ids, greedy, `NEW` new
tokens each, no EOS) through the `openai` client to a live server on loopback; tokens/s is all new
tokens over the round's wall time (HTTP, prefill and queueing included).
"""
from __future__ import annotations

import asyncio
import time

import numpy as np
import openai
import pytest

from compiler.driver import CompileOptions, compile_model
from runtime.generate import ProgramSteps, Prompt, generate
from runtime.program import load
from runtime.sampling import SamplingOptions
from runtime.serving import Engine
from runtime.tokenizer import ByteTokenizer
from serve_helpers import live_server
from tools.serve import Model

pytestmark = pytest.mark.slow

SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
REQUESTS, PROMPT, NEW, MAX_LEN, BATCH = 16, 16, 32, 64, 4
PROMPTS = np.random.default_rng(0).integers(0, SMALL["vocab_size"], (REQUESTS, PROMPT)).tolist()
GREEDY = SamplingOptions(temperature=0.0)


@pytest.fixture(scope="module")
def pef():
    overrides = tuple(f"model.{k}={v}" for k, v in SMALL.items())
    overrides += (f"model.seq_len={PROMPT}", f"model.max_seq_length={MAX_LEN}")
    return compile_model(CompileOptions("gpt2", overrides, inference=True, batch_size=BATCH)).pef


@pytest.fixture(scope="module")
def url(pef):
    model = Model("gpt2-small", ByteTokenizer(), None, frozenset(), Engine(ProgramSteps(load(pef))))
    with live_server(model, timeout=120) as base:
        openai.OpenAI(base_url=f"{base}/v1", api_key="unused").completions.create(  # warm-up
            model="gpt2-small", prompt=PROMPTS[0], max_tokens=2)
        yield base


def report(benchmark, label: str, seconds: float) -> None:
    rate = REQUESTS * NEW / seconds
    benchmark.extra_info.update(tokens_per_s=round(rate, 2))
    print(f"\n{label}: {rate:.1f} tokens/s aggregate ({REQUESTS} requests x {NEW} tokens in {seconds:.2f} s)")


def test_bench_one_by_one(benchmark, pef):
    steps = ProgramSteps(load(pef))
    generate(steps, [Prompt(tuple(PROMPTS[0]), "warm-up")], 2, GREEDY)

    def run() -> float:
        start = time.perf_counter()
        for i, ids in enumerate(PROMPTS):
            result = generate(steps, [Prompt(tuple(ids), f"request {i}")], NEW, GREEDY)
            assert len(result.completions[0].token_ids) == NEW
        return time.perf_counter() - start

    report(benchmark, "one by one (generate)", benchmark.pedantic(run, rounds=1, iterations=1))


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_bench_serve(benchmark, url, clients):
    async def run() -> float:
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        for ids in PROMPTS:
            queue.put_nowait(ids)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

        async def worker() -> None:
            while not queue.empty():
                answer = await client.completions.create(model="gpt2-small", prompt=queue.get_nowait(),
                                                         max_tokens=NEW, temperature=0)
                assert answer.usage.completion_tokens == NEW

        async with client:
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return time.perf_counter() - start

    seconds = benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    report(benchmark, f"serve, {clients} client(s)", seconds)
