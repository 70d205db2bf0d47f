"""Data parallel on one machine: 2 ranks x 1 kernel thread against 1 rank x 2 threads, the same
global batch (16 sequences of 64 tokens of a 4-layer, 128-wide GPT-2), 30 steps.

    pytest tests/benchmarks/test_bench_data_parallel.py --benchmark-enable

Each round is one whole `rduflow run` (kernels already in the disk cache); the steps per
second are the trainer's own (`summary.txt`: host ms per step, the collectives included),
in `extra_info`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
MODEL = ["gpt2", "model.n_layer=4", "model.n_embd=128", "model.seq_len=64", "model.n_positions=64",
         "model.vocab_size=256"]
GLOBAL_BATCH, STEPS = 16, 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp-bench")
    rng = np.random.default_rng(0)
    with h5py.File(folder / "data.hdf5", "w") as f:
        f.create_dataset("input_ids", data=rng.integers(0, 256, (GLOBAL_BATCH * STEPS, 64), dtype=np.int32))
        f.create_dataset("token_type_ids", data=np.ones((GLOBAL_BATCH * STEPS, 64), np.int32))
    assert main(["compile", *MODEL, "-b", str(GLOBAL_BATCH), "-o", str(folder), "--pef-name", "one"]) == 0
    assert main(["compile", *MODEL, "-b", str(GLOBAL_BATCH // 2), "--data-parallel", "-ws", "2", "-o", str(folder),
                 "--pef-name", "two"]) == 0
    return folder


def _run(folder: Path, ranks: int, threads: int, save: str) -> float:
    """One training run; its steps per second (from the trainer's summary)."""
    pef = folder / ("one" if ranks == 1 else "two") / f"{'one' if ranks == 1 else 'two'}.pef"
    args = [sys.executable, "-m", "tools.cli", "run", str(pef), "--data", str(folder / "data.hdf5"),
            "--num-steps", str(STEPS), "--log-every", str(STEPS), "--save-dir", str(folder / save)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RDUFLOW_NUM_THREADS": str(threads), "HYDRA_LAUNCHER": "fork"}
    if ranks > 1:
        args = [MPIRUN, "-n", str(ranks), *args, "--data-parallel"]
    shutil.rmtree(folder / save, ignore_errors=True)
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)
    summary = (folder / save / "summary.txt").read_text()
    return 1e3 / float(re.search(r"^host_ms_per_step\s+: ([\d.]+)", summary, re.M)[1])


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("ranks, threads", [(1, 2), (2, 1)], ids=["1rank-2threads", "2ranks-1thread"])
def test_steps_per_second(benchmark, setup, ranks, threads):
    _run(setup, ranks, threads, "warm")  # kernels into the disk cache
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(_run(setup, ranks, threads, "timed")), rounds=3, iterations=1)
    benchmark.extra_info["steps_per_second"] = round(float(np.median(rates)), 2)
