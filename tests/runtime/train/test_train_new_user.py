"""What a new user meets when training: Ctrl-C, the evaluation line, the loss curves, the profile, file modes."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.cli import main
from train_helpers import FIXTURES, ROOT, random_tokens, write_tokens


def _metrics_steps(save_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (save_dir / "per_step_metrics.csv").read_text().splitlines()[1:]]


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resume_continues_from_it(fixture_pefs, tmp_path):
    data = random_tokens(tmp_path / "d.hdf5", 40, seed=2)
    args = ["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--checkpoint", str(FIXTURES / "hf" / "gpt2-tiny"),
            "--num-steps", "60", "--seed", "3", "--log-every", "1"]
    assert main([*args, "--save-dir", str(tmp_path / "whole")]) == 0
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *args, "--save-dir", str(stopped)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # the loop is running once a step has been logged
        if line.startswith("Epoch [1/") and "Step [3/60]" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    step = int(re.search(r"^Interrupted after step (\d+): continue with --resume$", out, re.MULTILINE)[1])
    assert 3 <= step < 60
    assert f"Saved checkpoint {stopped / f'checkpoint-{step}'}" in out
    assert (stopped / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert _metrics_steps(stopped) == list(range(1, step + 1))
    assert main([*args, "--save-dir", str(stopped), "--resume"]) == 0
    assert (stopped / "per_step_metrics.csv").read_text() == (tmp_path / "whole" / "per_step_metrics.csv").read_text()


def test_evaluation_says_how_many_dev_rows_it_used(fixture_pefs, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    random_tokens(folder / "train_1_of_1.hdf5", 8)
    dev = random_tokens(tmp_path / "dev.hdf5", 7, seed=5)
    os.replace(dev, folder / "dev_1_of_1.hdf5")
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(folder), "--num-steps", "2"]) == 0
    out = capsys.readouterr().out
    batch = int(re.search(r"rows, batch (\d+),", out)[1])
    used = 7 // batch * batch
    assert used < 7
    assert re.search(rf"^Evaluation loss: [\d.]+, Perplexity: [\d.]+, Accuracy: [\d.]+ \({used} of 7 dev rows: "
                     rf"whole batches of {batch}\)$", out, re.MULTILINE)


def test_training_ends_with_the_loss_curves_and_a_png(fixture_pefs, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    random_tokens(folder / "train_1_of_1.hdf5", 16)
    random_tokens(folder / "dev_1_of_1.hdf5", 8, seed=4)
    save = tmp_path / "run"
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(folder), "--num-steps", "6", "--eval-every", "2",
                 "--save-dir", str(save)]) == 0
    out = capsys.readouterr().out
    assert "training loss and dev loss by step" in out and "─" in out
    assert f"Loss curves drawn in {save / 'loss.png'}" in out
    assert (save / "loss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    evaluations = (save / "eval_metrics.csv").read_text().splitlines()
    assert evaluations[0] == "step,loss,perplexity,accuracy,rows"
    assert [int(row.split(",")[0]) for row in evaluations[1:]] == [2, 4, 6]


def test_profile_says_how_many_kernels_it_lists_and_keeps_names_when_redirected(fixture_pefs, tmp_path):
    data = random_tokens(tmp_path / "d.hdf5", 4)

    def profile(*extra: str) -> str:
        out = tmp_path / "profile.txt"
        with out.open("w") as handle:  # redirected, as `> profile.txt` does
            done = subprocess.run([sys.executable, "-m", "tools.cli", "run", fixture_pefs["gpt2-tiny"], "--data",
                                   str(data), "--num-steps", "1", "--profile", *extra], cwd=ROOT, stdout=handle,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0, done.stderr
        return out.read_text()

    text = profile()
    total = int(re.search(r"top 20 of (\d+) kernels by host time", text)[1])
    assert total > 20 and "…" not in text
    rows = [line for line in text.splitlines() if re.match(r"│ k\d+_", line)]
    assert len(rows) == 20 and all(re.match(r"│ k\d+_\w+ ", row) for row in rows)
    assert re.search(r"^RDU bound, what limits the modeled time: .*config: loading the section's configuration",
                     text, re.MULTILINE) or "│ config" not in text
    bounds = set(re.findall(r"│ (compute|onchip|offchip|link|fill|config) +│", text))
    legend = text[text.index("RDU bound, what limits"):]
    assert bounds and all(f"{bound}: " in legend for bound in bounds)
    everything = profile("--profile-top", "0")
    assert f"all {total} kernels" in everything
    assert len([line for line in everything.splitlines() if re.match(r"│ k\d+_", line)]) == total


def test_checkpoints_honour_the_umask(fixture_pefs, tmp_path):
    data = random_tokens(tmp_path / "d.hdf5", 4)
    previous = os.umask(0o027)
    try:
        assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--num-steps", "1",
                     "--save-dir", str(tmp_path / "r")]) == 0
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "optimizer.safetensors", "config.json", "trainer_state.json"):
        assert stat.S_IMODE((tmp_path / "r" / "checkpoint-1" / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE((tmp_path / "r" / "per_step_metrics.csv").stat().st_mode) == 0o640


def test_a_training_pef_refuses_generation_options(fixture_pefs, tmp_path, capsys):
    data = write_tokens(tmp_path / "d.hdf5", [[1, 2]], [[1, 1]])
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert f"--prompt is an inference option, but {fixture_pefs['gpt2-tiny']} is a training PEF" in err
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--temperature", "0.5"]) == 1
    assert "--temperature is an inference option" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--tempreature", "--num-stpes"])
def test_a_misspelled_run_flag_names_the_nearest(fixture_pefs, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", fixture_pefs["gpt2-tiny"], flag, "5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rduflow run ")
    assert f"did you mean {'--temperature' if flag == '--tempreature' else '--num-steps'}?" in err
