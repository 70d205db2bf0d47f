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
GEMM benchmark's peak), measured once per pytest run. PyTorch runs in its own
process (`torch_training_step.py`) under `RDUFLOW_TORCH_PYTHON` (default: this interpreter);
its tests are skipped where that has no torch. `step_flops` counts the dense products, as PyTorch
runs them: rduflow's LM head skips the rows of the positions the loss does not count, and its
gradient products the tokens whose gradient is zero (padding), so its GFLOP/s overstate its work.

`test_bench_lockstep_training_step` runs the engines in turns a step at a time instead: rduflow,
then a PyTorch eager step, then a `torch.compile` one (each in a process kept waiting between its
steps, `torch_training_step.py --serve`), for an untimed round and `LOCKSTEP_ROUNDS` timed ones;
it prints each engine's figures and the ratio of rduflow's step to each PyTorch step of the same
round (their median and range). Steps seconds apart see nearly the same machine, so the ratio
moves far less than that of whole runs minutes apart on a host whose speed drifts. It then times
the step's matrix products alone (`step_products`: each gemm stage as a plain GEMM of its shape and
operand orientation, dense, warm), by rduflow's JIT and by PyTorch's `torch.matmul` in turn, and prints each
engine's median step against them, and eager's median step over rduflow's products alone: the
ratio rduflow would reach if its step were nothing but those products.
"""
from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from backend.pef.file import PEF
from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions
from runtime.jit.host import host_tile
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel, default_threads
from runtime.program import load
from test_bench_gemm import Product, fma_peak_per_core, product_program
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


def report(benchmark, name: str, config: str, seconds: list[float], key: str = "") -> None:
    """Tokens/s over the mean and over the fastest step, and GFLOP/s over the mean (also as a
    fraction of the host's peak), stored under names starting with `key`."""
    _, batch_size, seq, _ = CONFIGS[config]
    mean_s = sum(seconds) / len(seconds)
    mean, best = (batch_size * seq / t for t in (mean_s, min(seconds)))
    gflops = step_flops(config) / mean_s / 1e9
    peak = host_peak() / 1e9
    figures = dict(tokens_per_s=round(mean, 1), tokens_per_s_best=round(best, 1), gflop_per_s=round(gflops, 1),
                   peak_fraction=round(gflops / peak, 3))
    benchmark.extra_info.update({key + name: value for name, value in figures.items()})
    print(f"\n{name}: {mean:.1f} tokens/s (best step {best:.1f}), {gflops:.1f} GFLOP/s of "
          f"{step_flops(config) / 1e9:.1f} GFLOP per step, {gflops / peak:.0%} of the host's "
          f"{peak:.0f} GFLOP/s peak ({group(config)})")


def rduflow_step(config: str):
    """The compiled, loaded and warmed-up step: a function running one step, returning the loss (as
    PyTorch's step does); its PEF is `.pef`."""
    vocab, batch_size, seq, padding = CONFIGS[config]
    sizes = {**LAYERS, "vocab_size": vocab, "n_positions": seq}
    overrides = tuple(f"model.{k}={v}" for k, v in sizes.items()) + (f"model.seq_len={seq}",)
    training = TrainingOptions(optimizer="adamw", weight_decay=0.01, max_grad_norm=1.0)
    pef = compile_model(CompileOptions("gpt2", overrides, batch_size=batch_size, training=training)).pef
    gemms = [s for k in pef.kernels for s in k.stages if s.kind == "gemm"]
    assert sum(2 * math.prod(s.batch) * s.m * s.n * s.k for s in gemms) == step_flops(config)
    program = load(pef, threads=THREADS)
    inputs = {**batch(vocab, batch_size, seq, padding), "lr": np.float32(1e-4)}
    program.step(inputs)  # warm up: first touch of the arenas

    def step() -> float:
        loss = float(program.step(inputs, outputs=("loss",))["loss"])
        assert np.isfinite(loss) and loss < 2 * np.log(vocab)
        return loss
    step.pef = pef
    return step


def torch_command(config: str, compiled: bool) -> list[str]:
    vocab, batch_size, seq, padding = CONFIGS[config]
    command = [os.environ.get("RDUFLOW_TORCH_PYTHON", sys.executable), str(SCRIPT), "--vocab", str(vocab),
               "--batch", str(batch_size), "--seq", str(seq), "--padding", str(padding), "--threads", str(THREADS)]
    return command + ["--compile"] * compiled


@pytest.mark.parametrize("config", CONFIGS)
def test_bench_rduflow_training_step(benchmark, config):
    benchmark.group = group(config)
    step = rduflow_step(config)
    benchmark.pedantic(step, rounds=3, iterations=1)
    if benchmark.stats:
        report(benchmark, "rduflow", config, list(benchmark.stats.stats.data))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("config", CONFIGS)
def test_bench_pytorch_training_step(benchmark, config, compiled):
    """The same step in PyTorch, timed in its own process (3 steps after a warm-up one)."""
    benchmark.group = group(config)
    run = subprocess.run(torch_command(config, compiled), capture_output=True, text=True)
    if run.returncode == NO_TORCH:
        pytest.skip(run.stderr.strip())
    if run.returncode and compiled:
        pytest.skip(f"torch.compile does not run here: {run.stderr.strip().splitlines()[-1:]}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["loss"])
    benchmark.pedantic(lambda: None, rounds=1)
    report(benchmark, "pytorch " + ("torch.compile" if compiled else "eager"), config, result["seconds"])


#: timed rounds of the lockstep benchmark (one step of each engine per round)
LOCKSTEP_ROUNDS = 8
#: timed calls of each plain product (their median counts), and rounds of all products by each engine
#: in turn (the fastest round counts)
PRODUCT_CALLS, PRODUCT_ROUNDS = 5, 3


def step_products(pef: PEF) -> collections.Counter[Product]:
    """Each gemm stage of the step as a plain product (its shape and which operands are stored
    transposed; dense, no epilogue, no fused stages around it), with how many times the step runs it."""
    products = collections.Counter()
    for stage in (s for k in pef.kernels for s in k.stages if s.kind == "gemm"):
        a, b = stage.a.strides, stage.b.strides
        products[Product(math.prod(stage.batch), stage.m, stage.n, stage.k, a[-2] == 1 and a[-1] != 1,
                         b[-1] != 1, any(b[:-2]))] += 1
    return products


class JitProducts:
    """The step's products alone, each a plain GEMM compiled by the JIT for `THREADS` threads (the
    JIT is held: it owns their native code), with operands of random values."""

    def __init__(self, products: collections.Counter[Product]):
        self.jit, self.parallel, rng = Jit(use_cache=False, threads=THREADS), Parallel(THREADS), np.random.default_rng(0)
        self.calls = []
        for p, count in products.items():
            program = product_program(p)
            ((stage,),) = (kernel.stages for kernel in self.jit.load([program]))
            arrays = [rng.standard_normal(buffer.size, np.float32) for buffer in program.buffers]
            self.calls.append((stage, (ctypes.c_void_p * 3)(*(a.ctypes.data for a in arrays)), arrays, count))

    def __call__(self) -> float:
        """Seconds of all of them, warm: the median of `PRODUCT_CALLS` calls of each, times its count."""
        total = 0.0
        for stage, args, _, count in self.calls:
            times = []
            for _ in range(1 + PRODUCT_CALLS):  # the first call warms up
                start = time.perf_counter()
                assert self.parallel.run(stage.fn, args, stage.plan.extent, stage.plan.work, stage.plan.pieces) == 0
                times.append(time.perf_counter() - start)
            total += float(np.median(times[1:])) * count
        return total


@pytest.mark.parametrize("a_transposed, b_transposed, b_batched", list(itertools.product((False, True), repeat=3)))
def test_a_plain_product_computes_a_at_b_in_its_layout(a_transposed, b_transposed, b_batched):
    products = JitProducts(collections.Counter({Product(3, 5, 7, 9, a_transposed, b_transposed, b_batched): 2}))
    assert products() > 0
    ((_, _, (a, b, c), _),) = products.calls
    a = a.reshape(3, 9, 5).transpose(0, 2, 1) if a_transposed else a.reshape(3, 5, 9)
    b = b.reshape(-1, 7, 9).transpose(0, 2, 1) if b_transposed else b.reshape(-1, 9, 7)
    np.testing.assert_allclose(c.reshape(3, 5, 7), a @ b, rtol=1e-5, atol=1e-5)


def test_the_step_products_are_its_gemm_stages():
    products = step_products(rduflow_step("vocab128").pef)
    assert sum(p.flops * count for p, count in products.items()) == step_flops("vocab128")
    assert products[Product(48, 64, 64, 64, False, True, True)] == 24  # the attention scores and their gradient


class TorchSteps:
    """A PyTorch step process (`torch_training_step.py --serve`) answering one timed step per request."""

    def __init__(self, config: str, compiled: bool):
        self.errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: warnings never block the process
        self.process = subprocess.Popen(torch_command(config, compiled) + ["--serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.errors, text=True)

    def _answer(self) -> dict | None:
        line = self.process.stdout.readline()
        return json.loads(line) if line.strip() else None

    def ready(self) -> bool:
        """Waits for the warm-up step; False if the process ended instead."""
        return self._answer() is not None

    def _request(self, line: str) -> dict:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        if answer is None:
            raise AssertionError(f"the PyTorch step process ended: {self.close()}")
        return answer

    def step(self) -> float:
        """Seconds of one step."""
        answer = self._request("step")
        assert np.isfinite(answer["loss"])
        return answer["seconds"]

    def products_seconds(self, products: collections.Counter[Product]) -> float:
        """Seconds of `products` alone through `torch.matmul` (MKL), each counted as often as given."""
        return self._request("products " + json.dumps([[*p, count] for p, count in products.items()]))["seconds"]

    def close(self) -> str:
        """Ends the process; its standard error."""
        self.process.communicate(timeout=60)
        self.errors.seek(0)
        return self.errors.read()


def short(engine: str) -> str:
    """'rduflow', 'eager' or 'torch.compile': an engine's name in stored figures."""
    return engine.split()[-1]


@pytest.mark.parametrize("config", ["vocab50257", "vocab50257-padded"])
def test_bench_lockstep_training_step(benchmark, config):
    """rduflow, PyTorch eager and torch.compile a step each in turn, `LOCKSTEP_ROUNDS` times."""
    benchmark.group = group(config) + ", lockstep"
    engines = {"pytorch eager": TorchSteps(config, compiled=False),
               "pytorch torch.compile": TorchSteps(config, compiled=True)}
    try:
        step = rduflow_step(config)  # compiled while PyTorch warms up
        for name, steps in list(engines.items()):
            if not steps.ready():
                err, code = steps.close(), steps.process.returncode
                if code == NO_TORCH:
                    pytest.skip(err.strip())
                assert name != "pytorch eager", err
                del engines[name]  # torch.compile does not run here
        seconds = {name: [] for name in ("rduflow", *engines)}
        for _ in range(1 + LOCKSTEP_ROUNDS):  # the first round untimed: each engine waited for the others
            start = time.perf_counter()
            step()
            seconds["rduflow"].append(time.perf_counter() - start)
            for name, steps in engines.items():
                seconds[name].append(steps.step())
        seconds = {name: times[1:] for name, times in seconds.items()}
        products = step_products(step.pef)
        timers = {"rduflow": JitProducts(products),
                  "pytorch eager": functools.partial(engines["pytorch eager"].products_seconds, products)}
        rounds = [{name: timer() for name, timer in timers.items()} for _ in range(PRODUCT_ROUNDS)]
        alone = {name: min(r[name] for r in rounds) for name in timers}
    finally:
        for steps in engines.values():
            if steps.process.poll() is None:
                steps.close()
    benchmark.pedantic(lambda: None, rounds=1)
    for name, times in seconds.items():
        report(benchmark, name, config, times, key=short(name) + "_")
    for name in engines:
        ratios = [t / r for t, r in zip(seconds[name], seconds["rduflow"])]
        benchmark.extra_info[f"ratio_to_{short(name)}"] = round(float(np.median(ratios)), 3)
        print(f"rduflow vs {name}, round by round: {' '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {np.median(ratios):.2f}×, range {min(ratios):.2f}–{max(ratios):.2f}×)")
    report_products(benchmark, config, alone, seconds)


def report_products(benchmark, config: str, alone: dict[str, float], seconds: dict[str, list[float]]) -> None:
    """What each engine's step would take as its matrix products alone (dense, each a plain GEMM,
    warm: `alone`), against its median step; and the ratio to eager rduflow would reach with nothing
    in its step but those products."""
    for name, floor in alone.items():
        median = float(np.median(seconds[name]))
        benchmark.extra_info[f"{short(name)}_products_s"] = round(floor, 4)
        print(f"{name}: the step's products alone (dense, plain, warm) {floor:.3f} s, "
              f"{step_flops(config) / floor / 1e9:.0f} GFLOP/s; its median step {median:.3f} s is "
              f"{median / floor:.2f}× that")
    limit = float(np.median(seconds["pytorch eager"])) / alone["rduflow"]
    print(f"eager's median step over rduflow's products alone: {limit:.2f}× (rduflow's ratio to eager if its "
          f"step were only those products, dense; its gradients skip the tokens a masked loss leaves out)")
