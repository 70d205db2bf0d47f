"""Training throughput of GPT-2 (small config: 12 layers x 768, 12 heads) in tokens/s: rduflow's JIT
against PyTorch (eager, and `torch.compile` where it runs) on the same CPU, with the same number
of threads, side by side:

    RDUFLOW_TORCH_PYTHON=/work/venv-ref/bin/python \
        python -m pytest tests/benchmarks/test_bench_train.py --benchmark-enable -s

One step = forward, next-token cross-entropy over the completion positions,
backward, global-norm clipping at 1.0 and AdamW (weight decay 0.01), returning the loss, in three
configs: `vocab128` (4 x 64 tokens, the zoo's vocabulary of 128: the layers alone), `vocab50257`
(4 x 128 tokens, GPT-2's vocabulary: the LM head and its gradients too) and `vocab50257-padded`
(the same with each sequence's last 64 tokens padding the loss does not count, as in a batch of
fine-tuning examples padded to one length: their gradients are zero). Each test stores and
prints `tokens_per_s` (mean step) and `tokens_per_s_best` (fastest step), and the step's
matrix-product FLOPs (`step_flops`) over the mean step as GFLOP/s and as a fraction of the host's
peak: threads x the FMA throughput one core reaches (`test_bench_gemm.fma_peak_per_core`, the
GEMM benchmark's peak), measured once per session. PyTorch runs in its own
process (`torch_training_step.py`) under `RDUFLOW_TORCH_PYTHON` (default: this interpreter);
its tests are skipped where that has no torch. `step_flops` counts the dense products, padding too.
"""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions
from runtime.jit.host import host_tile
from runtime.jit.parallel import default_threads
from runtime.program import load
from test_bench_gemm import fma_peak_per_core
from torch_training_step import NO_TORCH, batch

pytestmark = pytest.mark.slow

LAYERS = {"n_layer": 12, "n_embd": 768, "n_head": 12}
#: config: (vocabulary, batch, sequence length, padding tokens at the end of each sequence)
CONFIGS = {"vocab128": (128, 4, 64, 0), "vocab50257": (50257, 4, 128, 0), "vocab50257-padded": (50257, 4, 128, 64)}
THREADS = default_threads()
SCRIPT = Path(__file__).with_name("torch_training_step.py")


def group(config: str) -> str:
    vocab, batch_size, seq, padding = CONFIGS[config]
    padded = f" ({padding} padding each)" if padding else ""
    return f"gpt2 12x768 vocab {vocab} training step, batch {batch_size}x{seq}{padded}, {THREADS} thread(s)"


def step_flops(config: str) -> int:
    """Multiply-add FLOPs of a training step's matrix products: 6 x tokens x (the layers' 12 d^2
    weights per layer + the LM head's vocab x d) for forward and both gradients, plus the
    attention scores and their mix (4 x batch x seq^2 x d per layer forward, x3 with backward)."""
    vocab, batch_size, seq, _ = CONFIGS[config]
    d, layers = LAYERS["n_embd"], LAYERS["n_layer"]
    return 6 * batch_size * seq * (layers * 12 * d * d + vocab * d) + 12 * layers * batch_size * seq * seq * d


@functools.cache
def host_peak() -> float:
    """FLOP/s of `THREADS` cores at their measured FMA peak."""
    return THREADS * fma_peak_per_core(host_tile().lanes)


def report(benchmark, name: str, config: str, seconds: list[float]) -> None:
    """Tokens/s over the mean and over the fastest step, and GFLOP/s over the mean (also as a
    fraction of the host's peak)."""
    _, batch_size, seq, _ = CONFIGS[config]
    mean_s = sum(seconds) / len(seconds)
    mean, best = (batch_size * seq / t for t in (mean_s, min(seconds)))
    gflops = step_flops(config) / mean_s / 1e9
    peak = host_peak() / 1e9
    benchmark.extra_info.update(tokens_per_s=round(mean, 1), tokens_per_s_best=round(best, 1), gflop_per_s=round(gflops, 1),
                                peak_fraction=round(gflops / peak, 3))
    print(f"\n{name}: {mean:.1f} tokens/s (best step {best:.1f}), {gflops:.1f} GFLOP/s of "
          f"{step_flops(config) / 1e9:.1f} GFLOP per step, {gflops / peak:.0%} of the host's "
          f"{peak:.0f} GFLOP/s peak ({group(config)})")


@pytest.mark.parametrize("config", CONFIGS)
def test_bench_rduflow_training_step(benchmark, config):
    vocab, batch_size, seq, padding = CONFIGS[config]
    benchmark.group = group(config)
    sizes = {**LAYERS, "vocab_size": vocab, "n_positions": seq}
    overrides = tuple(f"model.{k}={v}" for k, v in sizes.items()) + (f"model.seq_len={seq}",)
    training = TrainingOptions(optimizer="adamw", weight_decay=0.01, max_grad_norm=1.0)
    pef = compile_model(CompileOptions("gpt2", overrides, batch_size=batch_size, training=training)).pef
    gemms = [s for k in pef.kernels for s in k.stages if s.kind == "gemm"]
    assert sum(2 * math.prod(s.batch) * s.m * s.n * s.k for s in gemms) == step_flops(config)
    program = load(pef, threads=THREADS)
    inputs = {**batch(vocab, batch_size, seq, padding), "lr": np.float32(1e-4)}
    program.step(inputs)  # warm up: first touch of the arenas
    # the loss alone comes back, as PyTorch's step returns it (the logits stay in the arena)
    outputs = benchmark.pedantic(program.step, args=(inputs,), kwargs={"outputs": ("loss",)}, rounds=3, iterations=1)
    assert np.isfinite(outputs["loss"]) and float(outputs["loss"]) < 2 * np.log(vocab)
    if benchmark.stats:
        report(benchmark, "rduflow", config, list(benchmark.stats.stats.data))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("config", CONFIGS)
def test_bench_pytorch_training_step(benchmark, config, compiled):
    """The same step in PyTorch, timed in its own process (3 steps after a warm-up one)."""
    vocab, batch_size, seq, padding = CONFIGS[config]
    benchmark.group = group(config)
    command = [os.environ.get("RDUFLOW_TORCH_PYTHON", sys.executable), str(SCRIPT), "--vocab", str(vocab),
               "--batch", str(batch_size), "--seq", str(seq), "--padding", str(padding), "--threads", str(THREADS)]
    command += ["--compile"] * compiled
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode == NO_TORCH:
        pytest.skip(run.stderr.strip())
    if run.returncode and compiled:
        pytest.skip(f"torch.compile does not run here: {run.stderr.strip().splitlines()[-1:]}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["loss"])
    benchmark.pedantic(lambda: None, rounds=1)
    report(benchmark, "pytorch " + ("torch.compile" if compiled else "eager"), config, result["seconds"])
