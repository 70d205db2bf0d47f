"""Training throughput of GPT-2 (small config: 12 layers x 768, 12 heads) in tokens/s: rduflow's JIT
against PyTorch eager on the same CPU, with the same number of threads, side by side.

    python -m pytest tests/benchmarks/test_bench_train.py --benchmark-enable -s

One step = forward, next-token cross-entropy over the completion positions,
backward, global-norm clipping at 1.0 and AdamW (weight decay 0.01) on a batch of
4 x 64 tokens (vocabulary 128, the zoo's default). Each test stores and prints
`tokens_per_s` (mean step) and `tokens_per_s_best` (fastest step); the PyTorch one is skipped without torch.
"""
from __future__ import annotations

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions
from runtime.jit.parallel import default_threads
from runtime.program import load

pytestmark = pytest.mark.slow

SIZES = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 128, "n_positions": 64}
BATCH, SEQ = 4, 64
THREADS = default_threads()
GROUP = f"gpt2 12x768 training step, batch {BATCH}x{SEQ}, {THREADS} thread(s)"


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    types = np.zeros((BATCH, SEQ), np.int32)
    types[:, SEQ // 4:] = 1  # a prompt, then the completion the loss counts
    return {"input_ids": rng.integers(0, SIZES["vocab_size"], (BATCH, SEQ), dtype=np.int32),
            "token_type_ids": types}


def report(benchmark, name: str) -> None:
    """Tokens/s over the mean and over the fastest step (when timing is enabled)."""
    if not benchmark.stats:
        return
    mean, best = (BATCH * SEQ / t for t in (benchmark.stats.stats.mean, benchmark.stats.stats.min))
    benchmark.extra_info.update(tokens_per_s=round(mean, 1), tokens_per_s_best=round(best, 1))
    print(f"\n{name}: {mean:.1f} tokens/s (best step {best:.1f}) ({GROUP})")


@pytest.mark.benchmark(group=GROUP)
def test_bench_rduflow_training_step(benchmark):
    overrides = tuple(f"model.{k}={v}" for k, v in SIZES.items()) + (f"model.seq_len={SEQ}",)
    training = TrainingOptions(optimizer="adamw", weight_decay=0.01, max_grad_norm=1.0)
    pef = compile_model(CompileOptions("gpt2", overrides, batch_size=BATCH, training=training)).pef
    program = load(pef, threads=THREADS)
    inputs = {**batch(), "lr": np.float32(1e-4)}
    program.step(inputs)  # warm up: first touch of the arenas
    outputs = benchmark.pedantic(program.step, args=(inputs,), rounds=3, iterations=1)
    assert np.isfinite(outputs["loss"]) and float(outputs["loss"]) < 2 * np.log(SIZES["vocab_size"])
    report(benchmark, "rduflow")


@pytest.mark.benchmark(group=GROUP)
def test_bench_pytorch_eager_training_step(benchmark):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = transformers.GPT2Config(**SIZES, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    data = batch()
    ids = torch.from_numpy(data["input_ids"]).long()
    mask = torch.from_numpy(data["token_type_ids"][:, 1:] == 1)

    def step() -> float:
        logits = model(ids, use_cache=False).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                               reduction="none")
        loss = ce[mask.reshape(-1)].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return float(loss.detach())

    step()
    loss = benchmark.pedantic(step, rounds=3, iterations=1)
    assert np.isfinite(loss)
    report(benchmark, "pytorch eager")
