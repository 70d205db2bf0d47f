"""Data-parallel training under `mpirun -n 2`, against one process with twice the batch.

Each run launches real MPI ranks (the `mpich` wheel's mpirun, from the venv's bin). The
data give rows different numbers of completion tokens, so the ranks of a step hold
different token counts and the all-reduce must weight them.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from runtime.batches import BatchOrder
from tools.cli import main

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install -e '.[mpi]')")

ROWS, DEV_ROWS, SEQ, BATCH = 16, 8, 16, 2
#: SGD with momentum, and clipping (which must see the global gradient). Not AdamW: it divides each
#: gradient by its own magnitude, so where the true gradient is zero (a key bias: softmax ignores it)
#: it turns rounding noise, which differs with the summation order, into full-size steps.
OPTIMIZER = ["--optimizer", "sgd", "--momentum", "0.9", "--max-grad-norm", "1.0"]
#: the training options of every run (shuffled, two epochs of 4 global steps, evaluated twice)
COMMON = ["--num-steps", "6", "--seed", "5", "--lr", "0.05", "--eval-every", "3", "--save-every", "2"]


def token_rows(path: Path, rows: int, seed: int) -> Path:
    """Rows of a prompt (type 0), a completion of 1 to 10 tokens (type 1) and padding (type 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 120, (rows, SEQ), dtype=np.int32)
    types = np.full((rows, SEQ), 2, np.int32)
    for row in range(rows):
        prompt, completion = rng.integers(1, 5), rng.integers(1, 11)
        types[row, :prompt], types[row, prompt:prompt + completion] = 0, 1
    with h5py.File(path, "w") as f:
        f.create_dataset("input_ids", data=ids)
        f.create_dataset("token_type_ids", data=types)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    token_rows(folder / "train_1_of_1.hdf5", ROWS, seed=2)
    token_rows(folder / "dev_1_of_1.hdf5", DEV_ROWS, seed=3)
    return folder


def test_the_ranks_of_a_step_hold_different_token_counts(data):
    """The premise of the equivalence tests: unequal shares, so the reduction must weight them."""
    with h5py.File(data / "train_1_of_1.hdf5") as f:
        counts = (f["token_type_ids"][:, 1:] == 1).sum(axis=1)
    order = BatchOrder(ROWS, 2 * BATCH, True, 5)
    shares = [(counts[order.indices(s)[:BATCH]].sum(), counts[order.indices(s)[BATCH:]].sum()) for s in range(6)]
    assert all(a != b for a, b in shares), shares


@pytest.fixture(scope="module")
def pefs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Per fixture model: a single-process PEF of batch 2B and a data-parallel one of batch B for 2 ranks."""
    out = tmp_path_factory.mktemp("pefs")
    made: dict[str, dict[str, str]] = {}
    for model in ("gpt2-tiny", "llama-tiny"):
        made[model] = {}
        for kind, flags in (("single", ["-b", str(2 * BATCH)]),
                            ("dp", ["-b", str(BATCH), "--data-parallel", "--world-size", "2"])):
            name = f"{model}-{kind}"
            assert main(["compile", str(FIXTURES / "hf" / model), f"model.seq_len={SEQ}", *flags, *OPTIMIZER,
                         "-o", str(out), "--pef-name", name]) == 0
            made[model][kind] = str(out / name / f"{name}.pef")
    return made


def mpirun(n: int, args: list[str], timeout: float = 240, script: list[str] | None = None,
           **popen) -> subprocess.CompletedProcess:
    """`mpirun -n N python -m tools.cli ARGS` (or a script) from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    program = script or ["-m", "tools.cli"]
    return subprocess.run([MPIRUN, "-n", str(n), sys.executable, *program, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def metrics(save_dir: Path) -> list[dict[str, str]]:
    with open(save_dir / "per_step_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def evaluations(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Evaluation loss")]


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_two_ranks_train_as_one_process_with_twice_the_batch(model, pefs, data, tmp_path, capsys):
    checkpoint = str(FIXTURES / "hf" / model)
    assert main(["run", pefs[model]["single"], "--data", str(data), "--checkpoint", checkpoint, *COMMON,
                 "--save-dir", str(tmp_path / "single")]) == 0
    single_out = capsys.readouterr().out
    report = tmp_path / "replicas.json"
    done = mpirun(2, [str(report), "run", pefs[model]["dp"], "--data-parallel", "--data", str(data), "--checkpoint",
                      checkpoint, *COMMON, "--save-dir", str(tmp_path / "dp")],
                  script=[str(ROOT / "tests" / "runtime" / "distributed" / "check_replicas.py")])
    assert done.returncode == 0, done.stderr
    # every rank held bit-identical params and optimizer state after every step
    assert json.loads(report.read_text()) == {"steps": 6, "identical": [True] * 6}
    one, two = metrics(tmp_path / "single"), metrics(tmp_path / "dp")
    assert [r["step"] for r in two] == [str(s) for s in range(1, 7)]
    np.testing.assert_allclose([float(r["loss"]) for r in two], [float(r["loss"]) for r in one], rtol=1e-5)
    np.testing.assert_allclose([float(r["accuracy"]) for r in two], [float(r["accuracy"]) for r in one], atol=1e-6)
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    # logged once (rank 0), the same evaluation
    assert done.stdout.count("Step [1/6]") == 1
    want, got = evaluations(single_out), evaluations(done.stdout)
    assert len(got) == 2
    for a, b in zip(got, want):
        np.testing.assert_allclose([float(x) for x in a.replace(",", " ").split() if x[0].isdigit()],
                                   [float(x) for x in b.replace(",", " ").split() if x[0].isdigit()], rtol=1e-5)
    final_one = load_file(tmp_path / "single" / "checkpoint-6" / "model.safetensors")
    final_two = load_file(tmp_path / "dp" / "checkpoint-6" / "model.safetensors")
    assert sorted(final_one) == sorted(final_two)
    for name, value in final_one.items():
        np.testing.assert_allclose(final_two[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_a_killed_data_parallel_run_resumes_to_the_uninterrupted_metrics(pefs, data, tmp_path):
    args = ["run", pefs["gpt2-tiny"]["dp"], "--data-parallel", "--data", str(data), "--num-steps", "40",
            "--save-every", "4", "--seed", "3", "--lr-schedule", "cosine", "--warmup-steps", "3", "--log-every", "20"]
    whole = mpirun(2, [*args, "--save-dir", str(tmp_path / "whole"), "--profile"])
    assert whole.returncode == 0, whole.stderr
    # rank 0 reports the profile, with the modeled all-reduce and scaling
    assert whole.stdout.count("Data-parallel scaling on sn40l (modeled; gradients all-reduced through the hosts") == 1
    assert re.search(r"│ +\d+ │ allreduce +│", whole.stdout), whole.stdout
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    proc = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "tools.cli", *args, "--save-dir", str(killed)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-8").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(killed)) < 40
    resumed = mpirun(2, [*args, "--save-dir", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout
    assert (killed / "per_step_metrics.csv").read_text() == (tmp_path / "whole" / "per_step_metrics.csv").read_text()
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (killed / "checkpoint-40" / name).read_bytes() == (tmp_path / "whole" / "checkpoint-40" / name).read_bytes()


# --- mistakes ------------------------------------------------------------------------------
def test_a_data_parallel_pef_without_mpirun_shows_the_mpirun_command(pefs, data, capsys, monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    pef = pefs["gpt2-tiny"]["dp"]
    assert main(["run", pef, "--data", str(data), "--num-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"error: this PEF was compiled for data-parallel training over 2 replicas: run it as "
                           f"'mpirun -n 2 rduflow run {pef} --data-parallel --data {data} ...'")
    assert main(["run", pefs["gpt2-tiny"]["single"], "--data", str(data), "--data-parallel"]) == 1
    assert "--data-parallel needs a PEF compiled for it: rduflow compile ... --data-parallel --world-size N" \
        in capsys.readouterr().err


def test_a_world_size_mismatch_is_an_error_on_every_rank(pefs, data):
    done = mpirun(3, ["run", pefs["gpt2-tiny"]["dp"], "--data-parallel", "--data", str(data)], timeout=120)
    assert done.returncode == 1
    message = "error: this PEF was compiled for 2 data-parallel replicas, but mpirun started 3"
    assert done.stderr.count(message) == 3, done.stderr


def test_ranks_given_different_pefs_stop_with_the_same_error(pefs, data):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    llama = pefs["llama-tiny"]["dp"]
    rank = [sys.executable, "-m", "tools.cli", "run"]
    flags = ["--data-parallel", "--data", str(data)]
    done = subprocess.run([MPIRUN, "-n", "1", *rank, pefs["gpt2-tiny"]["dp"], *flags, ":", "-n", "1", *rank, llama,
                           *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("error: data-parallel ranks disagree on the PEF (sha256 prefix): rank 1 has") == 2, \
        done.stderr


def test_one_failing_rank_ends_the_job_with_its_message(pefs, data):
    """Rank 1 fails alone (a bad learning rate) while rank 0 waits in a collective: MPI_Abort ends both."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    rank = [sys.executable, "-m", "tools.cli", "run", pefs["gpt2-tiny"]["dp"], "--data-parallel", "--data", str(data)]
    start = time.monotonic()
    done = subprocess.run([MPIRUN, "-n", "1", *rank, ":", "-n", "1", *rank, "--lr", "-1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "rank 1: error: --lr: input should be greater than 0" in done.stderr
    assert time.monotonic() - start < 60


def test_a_single_process_pef_under_mpirun_is_refused_on_every_rank(pefs, data):
    """Otherwise each rank would train alone and all would write the same save folder."""
    done = mpirun(2, ["run", pefs["gpt2-tiny"]["single"], "--data", str(data)], timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("error: mpirun started 2 ranks, but this PEF is not data-parallel: each would train "
                             "alone (compile with --data-parallel --world-size 2)") == 2, done.stderr


def test_ranks_given_different_data_stop_with_the_same_error(pefs, data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    token_rows(other / "train_1_of_1.hdf5", ROWS, seed=9)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    rank = [sys.executable, "-m", "tools.cli", "run", pefs["gpt2-tiny"]["dp"], "--data-parallel", "--data"]
    done = subprocess.run([MPIRUN, "-n", "1", *rank, str(data), ":", "-n", "1", *rank, str(other)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("error: data-parallel ranks disagree on the training data (fingerprint): rank 1 has") == 2, \
        done.stderr


def test_ranks_given_different_training_options_stop_with_the_same_error(pefs, data):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_LAUNCHER": "fork"}
    rank = [sys.executable, "-m", "tools.cli", "run", pefs["gpt2-tiny"]["dp"], "--data-parallel", "--data", str(data)]
    done = subprocess.run([MPIRUN, "-n", "1", *rank, ":", "-n", "1", *rank, "--num-steps", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    message = ("error: data-parallel ranks disagree on the training options (num_steps): rank 1 has 3, rank 0 has None "
               "(every rank must get the same)")
    assert done.stderr.count(message) == 2, done.stderr


def test_the_mpi_all_reduce_adds_in_rank_order_with_the_same_bits_everywhere():
    done = mpirun(3, [], script=[str(ROOT / "tests" / "runtime" / "distributed" / "check_all_reduce.py")], timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(f"rank {r} ok" in done.stdout for r in range(3)), done.stdout
