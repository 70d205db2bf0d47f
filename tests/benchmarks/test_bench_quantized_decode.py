"""Decode speed of block-quantized weights against the memory-bandwidth limit, and (with a real
model) their accuracy.

    python -m pytest tests/benchmarks/test_bench_quantized_decode.py --benchmark-enable -s
    RDUFLOW_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf python -m pytest ... -s   # also the real model

Shapes, random weights, batch 1: `smollm2` (SmolLM2-135M: Llama, 30 layers x 576, 9 heads, 3 KV
heads, vocabulary 49152, tied embeddings) and `gpt2` (GPT-2 small). For each weight dtype
(f32, bf16, q8_0, q4_1), as `llama-bench -p 32 -n 64` measures: the rate of a `CHUNK`-token prefill
and of `STEPS` decode steps after it, each the best of `ROUNDS`. The limit printed beside the
decode rate is the measured bandwidth (a numpy copy of 512 MiB, bytes read + written over its
time) over the bytes of the params a decode step reads (every param; the gathered embedding
counted whole when tied: the LM head streams it).

With `RDUFLOW_GGUF` set to a Llama-family GGUF file, `test_real_model_accuracy` runs the real
weights through each dtype: perplexity over the first `TEXT_TOKENS` tokens of
tools/data/midsummer.txt (the file's own tokenizer, teacher-forced decode steps), and the
share of positions whose greedy next token agrees with the f32 model's, the decode rate and the
rate of a `CHUNK`-token prefill.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from runtime.generate import ProgramSteps, load_weights
from runtime.program import load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {
    "smollm2": ("llama", {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                          "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                          "tie_word_embeddings": "true", "max_position_embeddings": 2048}),
    "gpt2": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}),
}
DTYPES = ("f32", "bf16", "q8_0", "q4_1")
STEPS, PREFILL, THREADS, TEXT_TOKENS, CHUNK, ROUNDS = 64, 8, 2, 256, 32, 3


def bandwidth() -> float:
    """Bytes per second a numpy copy of 512 MiB moves (read + write), the best of three."""
    source = np.ones(1 << 29, np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def steps_of(model: str, overrides: tuple[str, ...], dtype: str, hf_config=None) -> ProgramSteps:
    overrides += (f"model.seq_len={CHUNK}", f"model.max_seq_length={TEXT_TOKENS + CHUNK}")
    options = CompileOptions(model, overrides, inference=True, batch_size=1, weight_dtype=dtype, hf_config=hf_config)
    return ProgramSteps(load(compile_model(options).pef, threads=THREADS))


def weight_bytes(steps: ProgramSteps) -> int:
    params = steps.program.params
    return sum(params[name].nbytes for name, role in params.roles().items() if role == "param")


def decode_run(steps: ProgramSteps, ids: list[int]) -> np.ndarray:
    """Logits after each position: the first `PREFILL` ids prefilled, the rest one decode step each."""
    chunk = np.zeros((1, steps.limits.chunk), np.int32)
    chunk[0, :PREFILL] = ids[:PREFILL]
    logits = [steps.prefill(chunk, np.zeros(1, np.int32), np.array([PREFILL], np.int32))[0]]
    for t in range(PREFILL, len(ids)):
        logits.append(steps.decode(np.array([[ids[t]]], np.int32), np.array([t], np.int32))[0])
    return np.stack(logits)


def prefill_and_decode(steps: ProgramSteps, ids: list[int]) -> tuple[float, float]:
    """(seconds of a `CHUNK`-token prefill, seconds of `STEPS` decode steps after it)."""
    start = time.perf_counter()
    steps.prefill(np.array([ids[:CHUNK]], np.int32), np.zeros(1, np.int32), np.array([CHUNK], np.int32))
    middle = time.perf_counter()
    for t in range(CHUNK, CHUNK + STEPS):
        steps.decode(np.array([[ids[t]]], np.int32), np.array([t], np.int32))
    return middle - start, time.perf_counter() - middle


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_decode(benchmark, shape, dtype):
    model, sizes = SHAPES[shape]
    steps = steps_of(model, tuple(f"model.{k}={v}" for k, v in sizes.items()), dtype)
    ids = np.random.default_rng(0).integers(0, steps.limits.vocab, CHUNK + STEPS).tolist()
    prefill_and_decode(steps, ids)  # warm up
    rounds = [prefill_and_decode(steps, ids) for _ in range(ROUNDS)]
    benchmark.pedantic(lambda: None, rounds=1)
    prefill, decode = CHUNK / min(r[0] for r in rounds), STEPS / min(r[1] for r in rounds)
    nbytes = weight_bytes(steps)
    limit = bandwidth() / nbytes
    benchmark.extra_info.update(prefill_tokens_per_s=round(prefill, 1), decode_tokens_per_s=round(decode, 2),
                                weight_mb=round(nbytes / 1e6, 1), limit=round(limit, 1))
    print(f"\n{shape} {dtype}: prefill {CHUNK}: {prefill:.0f} tokens/s, decode {STEPS}: {decode:.1f} tokens/s; "
          f"weights {nbytes / 1e6:.1f} MB, bandwidth limit {limit:.1f} tokens/s ({decode / limit:.0%})")


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(targets)), targets].mean()))


@pytest.mark.skipif(not os.environ.get("RDUFLOW_GGUF"), reason="RDUFLOW_GGUF names no GGUF file")
def test_real_model_accuracy():
    from runtime.gguf import read_gguf
    from runtime.gguf_model import hf_config
    from runtime.tokenizer import load_tokenizer

    path = Path(os.environ["RDUFLOW_GGUF"])
    config = hf_config(read_gguf(path))
    ids = load_tokenizer(path).encode((ROOT / "tools" / "data" / "midsummer.txt").read_text())[:TEXT_TOKENS]
    results = {}
    for dtype in DTYPES:
        steps = steps_of(str(path), (), dtype, config)
        load_weights(steps.program, path)
        start = time.perf_counter()
        logits = decode_run(steps, ids)
        rate = (len(ids) - PREFILL) / (time.perf_counter() - start)
        results[dtype] = logits
        start = time.perf_counter()
        steps.prefill(np.array([ids[:CHUNK]], np.int32), np.zeros(1, np.int32), np.array([CHUNK], np.int32))
        prefill = CHUNK / (time.perf_counter() - start)
        agree = np.mean(logits.argmax(-1) == results["f32"].argmax(-1))
        print(f"\n{path.name} {dtype}: perplexity {perplexity(logits[:-1], np.array(ids[PREFILL:])):.3f} over "
              f"{len(ids) - PREFILL} tokens, greedy agreement with f32 {agree:.1%}, {rate:.1f} tokens/s "
              f"(decode, {weight_bytes(steps) / 1e6:.1f} MB of weights), prefill of {CHUNK}: {prefill:.0f} tokens/s")
        assert np.isfinite(logits).all()
