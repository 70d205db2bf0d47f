"""A save folder is locked by the run using it; the metrics CSV is never truncated on resume."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ir.errors import CheckpointError
from runtime import save_dir
from runtime.save_dir import LOCK_FILE, MetricsFile, SaveDirLock
from tools.cli import main
from train_helpers import ROOT, random_tokens

COLUMNS = ("step", "epoch", "loss", "accuracy", "lr")
ROWS = "".join(f"{s},1,{5 - s / 10},,0.001\n" for s in range(1, 6))


def _holder(folder) -> subprocess.Popen:
    """Another process holding the folder's lock (as a running training does) until killed."""
    code = ("import sys, time; from runtime.save_dir import SaveDirLock; SaveDirLock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_save_dir_in_use_is_refused(fixture_pefs, tmp_path, capsys):
    data = random_tokens(tmp_path / "d.hdf5", 8)
    run = ["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--num-steps", "2", "--save-dir", str(tmp_path / "s")]
    first = _holder(tmp_path / "s")
    try:
        assert main(run) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {tmp_path / 's'} is in use by another training run (pid {first.pid}, started ")
        assert err.endswith("); wait for it to end or save elsewhere")
        assert not (tmp_path / "s" / "per_step_metrics.csv").exists()
    finally:
        first.kill()
        first.wait()
    assert main(run) == 0  # the kernel dropped the dead run's lock
    assert (tmp_path / "s" / LOCK_FILE).read_text() == ""  # released at the end


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    lock = SaveDirLock(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()}, started ")
    with pytest.raises(CheckpointError, match=f"is in use by another training run \\(pid {os.getpid()}, "):
        SaveDirLock(tmp_path)
    lock.release()
    SaveDirLock(tmp_path).release()


def test_a_resumed_metrics_file_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "per_step_metrics.csv"
    path.write_text(",".join(COLUMNS) + "\n" + ROWS)
    metrics = MetricsFile(path, COLUMNS, 3)
    metrics.writerow(["4", "1", "9.0", "", "0.001"])
    metrics.close()
    kept = ROWS.splitlines()[:3]
    assert path.read_text().splitlines() == [",".join(COLUMNS), *kept, "4,1,9.0,,0.001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_step_metrics.csv"]


def test_a_kill_while_resuming_leaves_the_metrics_whole(tmp_path, monkeypatch):
    """The kept rows are written aside and renamed over the file: before the rename, the old file is whole."""
    path = tmp_path / "per_step_metrics.csv"
    path.write_text(",".join(COLUMNS) + "\n" + ROWS)

    def killed(*_args):
        raise KeyboardInterrupt
    monkeypatch.setattr(save_dir.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsFile(path, COLUMNS, 3)
    assert path.read_text() == ",".join(COLUMNS) + "\n" + ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_step_metrics.csv"]


def test_a_metrics_file_that_is_not_utf8_is_named_not_overwritten(tmp_path):
    path = tmp_path / "per_step_metrics.csv"
    data = (",".join(COLUMNS) + "\n" + ROWS).encode().replace(b"2,1,", b"2,\xff,")
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"per_step_metrics.csv:3: not UTF-8 text, so its rows cannot be kept"):
        MetricsFile(path, COLUMNS, 3)
    assert path.read_bytes() == data
