"""Generation throughput of GPT-2 in tokens/s: rduflow's prefill + KV-cache decode against Hugging
Face transformers' `generate()` on the same CPU, with the same number of threads and the same weights.

    python -m pytest tests/benchmarks/test_bench_generate.py --benchmark-enable -s

Configs: `tiny`, the checkpoint in tests/fixtures/hf/gpt2-tiny (2 layers x 32), and
`small`, GPT-2 small's shape (12 layers x 768, 12 heads, vocabulary 50257) with random
weights, with a batch of 1 and (`small-b4`) of 4 prompts; `small-bf16` stores the weights
in bf16 on both sides (rduflow: `--weight-dtype bf16`, f32 activations and sums;
transformers: the model cast to torch.bfloat16, activations in bf16 too). One round is a greedy
generation of `NEW` tokens after 16-token prompts (no EOS: every round makes exactly
`NEW` tokens per prompt); tokens/s is the new tokens over the round's wall time, prefill
included, for both. rduflow's PEF caches `MAX_LEN` positions and prefills in
chunks of 16. Each test stores `tokens_per_s` in the benchmark's extra info and prints it;
the transformers tests (skipped without torch and transformers) also print the ratio. When
both run, the greedy tokens must agree on the tiny checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from runtime.generate import ProgramSteps, Prompt, generate, load_weights
from runtime.jit.parallel import default_threads
from runtime.program import load
from runtime.sampling import SamplingOptions

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "gpt2-tiny"
SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
NEW, PROMPT, MAX_LEN = 32, 16, 64
THREADS = default_threads()
#: config -> (model, batch, rounds, weight dtype)
CONFIGS = {"tiny": ("tiny", 1, 5, "f32"), "small": ("small", 1, 2, "f32"), "small-b4": ("small", 4, 2, "f32"),
           "small-bf16": ("small", 1, 2, "bf16")}
#: tokens/s and greedy tokens of each side, per config (for the ratio and the agreement check)
RESULTS: dict[tuple[str, str], tuple[float, list[list[int]]]] = {}


def group(config: str) -> str:
    model, batch, _, dtype = CONFIGS[config]
    return (f"gpt2 {model} generation, {dtype} weights, batch {batch}, {PROMPT}-token prompts + {NEW} new, "
            f"{THREADS} thread(s)")


def prompt_ids(vocab: int, batch: int) -> list[list[int]]:
    return np.random.default_rng(0).integers(0, vocab, (batch, PROMPT)).tolist()


def hf_model(config: str):
    """The transformers model of a config (the tiny checkpoint, or seeded random GPT-2 small weights)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(THREADS)
    if config == "tiny":
        return transformers.GPT2LMHeadModel.from_pretrained(TINY).eval()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, activation_function="gelu_new")).eval()
    return model.to(torch.bfloat16) if CONFIGS[config][3] == "bf16" else model


def record(benchmark, side: str, config: str, tokens: list[list[int]]) -> None:
    """Tokens/s of the mean round (when timing is enabled), printed beside the other side's."""
    made = NEW * CONFIGS[config][1]
    RESULTS[(side, config)] = (made / benchmark.stats.stats.mean if benchmark.stats else 0.0, tokens)
    rate = RESULTS[(side, config)][0]
    if not rate:
        return
    benchmark.extra_info.update(tokens_per_s=round(rate, 2))
    other = RESULTS.get(("rduflow", config), (0.0, []))[0] if side == "transformers" else 0.0
    ratio = f", rduflow / transformers = {other / rate:.2f}x" if other else ""
    print(f"\n{side} {config}: {rate:.2f} tokens/s{ratio} ({group(config)})")


def rduflow_steps(config: str) -> ProgramSteps:
    """A generation PEF of the config, loaded, with the same weights transformers uses (when it is there)."""
    name, batch, _, dtype = CONFIGS[config]
    sizes = tuple(f"model.{k}={v}" for k, v in SMALL.items())
    model, overrides = (str(TINY), ()) if name == "tiny" else ("gpt2", sizes)
    overrides += (f"model.seq_len={PROMPT}", f"model.max_seq_length={MAX_LEN}")
    options = CompileOptions(model, overrides, inference=True, batch_size=batch, weight_dtype=dtype)
    pef = compile_model(options).pef
    steps = ProgramSteps(load(pef, threads=THREADS))
    if name == "tiny":
        load_weights(steps.program, TINY)
    else:
        try:
            state = hf_model(name).state_dict()  # f32: rounded to the PEF's weight types here
        except pytest.skip.Exception:
            return steps  # no torch: the PEF's own initializers
        params = steps.program.params
        params.update({name: state[name].numpy().astype(params[name].dtype) for name in params
                       if params.roles()[name] == "param"})
    return steps


@pytest.mark.parametrize("config", list(CONFIGS))
def test_bench_rduflow_generate(benchmark, config):
    _, batch, rounds, _ = CONFIGS[config]
    steps = rduflow_steps(config)
    prompts = [Prompt(tuple(ids), f"prompt {i}") for i, ids in enumerate(prompt_ids(steps.limits.vocab, batch))]
    greedy = SamplingOptions(temperature=0.0)
    generate(steps, prompts, NEW, greedy)  # warm up: first touch of the arenas
    result = benchmark.pedantic(generate, args=(steps, prompts, NEW, greedy), rounds=rounds, iterations=1)
    assert [len(c.token_ids) for c in result.completions] == [NEW] * batch
    record(benchmark, "rduflow", config, [list(c.token_ids) for c in result.completions])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_bench_transformers_generate(benchmark, config):
    import torch

    _, batch, rounds, _ = CONFIGS[config]
    model = hf_model(config)
    ids = torch.tensor(prompt_ids(model.config.vocab_size, batch))

    def run() -> list[list[int]]:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                                 min_new_tokens=NEW, pad_token_id=0, eos_token_id=None)
        return out[:, PROMPT:].tolist()

    run()
    tokens = benchmark.pedantic(run, rounds=rounds, iterations=1)
    assert [len(t) for t in tokens] == [NEW] * batch
    record(benchmark, "transformers", config, tokens)
    ours = RESULTS.get(("rduflow", config))
    if config == "tiny" and ours is not None:
        assert ours[1] == tokens
