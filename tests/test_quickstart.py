"""`rduflow quickstart`: the whole workflow runs, the loss falls, a sample comes out; bad folders are refused."""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import re
import shlex

import attrs
import pytest

from tools.cli import build_parser, main
from tools.quickstart import (CORPUS, MARKER, Layout, QuickstartError, Report, Settings, StepFailed, completion,
                              losses, prepare_workdir, printable, run_quickstart, steps)

#: a shorter run of the same steps: enough for the loss to fall well below its start
FAST_STEPS = 60


def _rduflow(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_every_step_is_a_valid_rduflow_command(tmp_path):
    parser = build_parser()
    for step in steps(Layout(tmp_path / "work"), Settings()):
        words = shlex.split(step.command)
        assert words[0] == "rduflow"
        args = parser.parse_args(words[1:])
        assert args.func.__module__ == f"tools.commands.{words[1].replace('-', '_')}"


def test_quickstart_trains_and_generates(tmp_path):
    workdir = tmp_path / "qs"
    code, out, err = _rduflow("quickstart", "--workdir", str(workdir), "--num-steps", str(FAST_STEPS))
    assert code == 0, err
    for step in steps(Layout(workdir), Settings(num_steps=FAST_STEPS)):
        assert f"$ {step.command}\n" in out  # printed before it ran, exactly
    metrics = workdir / "checkpoints" / "per_step_metrics.csv"
    curve = [float(row["loss"]) for row in csv.DictReader(metrics.read_text().splitlines())]
    assert len(curve) == FAST_STEPS
    assert curve[0] > 5.0  # about ln(258) before any training
    assert sum(curve[-10:]) / 10 < curve[0] - 1.5
    summary = re.search(r"Loss fell from (\S+) \(first step\) to (\S+) \(last step\)", out)
    assert summary and float(summary[1]) == pytest.approx(curve[0], abs=1e-4)
    assert float(summary[2]) == pytest.approx(curve[-1], abs=1e-4)
    sample = re.search(r'^Sample: "(.*)" -> "(.*)"$', out, re.MULTILINE)
    assert sample and sample[1] == Settings().prompt
    assert len(sample[2]) >= Settings().max_new_tokens // 2  # bytes: a few may form one character
    assert printable(completion((workdir / "logs/5-generate.log").read_text())) == sample[2]
    for artifact in ("midsummer.txt", "data/train_1_of_32.hdf5", "pef/train/train.pef", "pef/generate/generate.pef",
                     "checkpoints/checkpoint-60/model.safetensors", "logs/3-train.log", "logs/5-generate.log"):
        assert (workdir / artifact).is_file(), artifact
    assert "Loss:" in (workdir / "logs/3-train.log").read_text()
    summary = out[out.index("Quickstart finished in"):]
    assert "training loss and dev loss by step" in summary  # the curves, drawn in the terminal
    head, *rerun = summary[summary.index("To repeat the steps by hand"):].splitlines()
    assert len(rerun) == 5 and rerun[2].endswith(f"--save-dir {workdir}/checkpoints-2")
    for command in rerun:  # each printed command runs again as printed, in order
        code, _, err = _rduflow(*shlex.split(command)[1:])
        assert code == 0, f"{command}: {err}"
    assert (workdir / "checkpoints-2" / f"checkpoint-{FAST_STEPS}").is_dir()


def test_a_failing_step_stops_the_run_with_its_error(tmp_path, capsys):
    layout = Layout(tmp_path / "qs")
    with pytest.raises(StepFailed) as failed:
        run_quickstart(layout.root, Settings(n_head=3))  # 64 is not a multiple of 3
    assert failed.value.exit_code == 1
    assert "step 'compile' failed" in str(failed.value) and "rerun it with: rduflow compile gpt2" in str(failed.value)
    captured = capsys.readouterr()
    assert "n_embd (64) must be a multiple of n_head (3)" in captured.err
    assert "Traceback" not in captured.err
    assert "[3/5]" not in captured.out and not (layout.root / "checkpoints").exists()
    assert "must be a multiple" in (layout.logs / "2-compile.log").read_text()


def test_cli_exit_code_of_a_failing_step(tmp_path, monkeypatch):
    monkeypatch.setattr("tools.commands.quickstart.Settings", functools.partial(Settings, n_head=3))
    code, _, err = _rduflow("quickstart", "--workdir", str(tmp_path / "qs"))
    assert code == 1
    assert err.count("error: assertion failed: n_embd (64) must be a multiple of n_head (3)") == 1 and "error: step 'compile' failed" in err


def test_an_interrupted_step_exits_130(tmp_path, monkeypatch):
    def interrupted(self, graph):
        raise KeyboardInterrupt

    monkeypatch.setattr("compiler.passes.PassManager.run", interrupted)
    code, _, err = _rduflow("quickstart", "--workdir", str(tmp_path / "qs"))
    assert code == 130 and "interrupted" in err and "step 'compile' failed (exit code 130)" in err


def test_an_unrelated_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = _rduflow("quickstart", "--workdir", str(tmp_path))
    assert code == 1
    assert f"work folder {tmp_path} is not empty and was not made by rduflow quickstart" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and out == ""


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(QuickstartError, match="is a file"):
        prepare_workdir(Layout(tmp_path / "f"))


def test_its_own_folder_is_reused_and_its_outputs_replaced(tmp_path):
    layout = Layout(tmp_path / "qs")
    prepare_workdir(layout)
    (layout.checkpoints / "checkpoint-7").mkdir(parents=True)
    layout.pefs.write_text("a file where a folder goes")
    (layout.root / "notes.txt").write_text("kept")
    prepare_workdir(layout)
    assert (layout.root / MARKER).is_file() and (layout.root / "notes.txt").read_text() == "kept"
    assert not layout.checkpoints.exists() and not layout.pefs.exists() and layout.logs.is_dir()
    assert layout.corpus.read_bytes() == CORPUS.read_bytes()


def test_an_empty_folder_is_used(tmp_path):
    prepare_workdir(Layout(tmp_path))
    assert (tmp_path / MARKER).is_file()


def test_bundled_corpus_is_small_plain_text():
    text = CORPUS.read_text(encoding="utf-8")
    assert len(text.encode()) < 300_000
    assert text.startswith("A Midsummer Night's Dream\n") and "The course of true love never did run smooth" in text
    assert not re.search(r"[*_#\\]", text)  # no Markdown left


def test_completion_is_read_up_to_the_timing_lines():
    printed = "Completion: two\nlines\nCompletion: second\ntime to first token 0.1 s\ntokens/second 9.0\n"
    assert completion(printed) == "two\nlines"
    assert completion("Completion: a b\ntime to first token 0.1 s\n") == "a b"
    with pytest.raises(QuickstartError, match="printed no completion"):
        completion("time to first token 0.1 s\n")


def test_losses_name_a_missing_or_empty_metrics_file(tmp_path):
    metrics = tmp_path / "per_step_metrics.csv"
    with pytest.raises(QuickstartError, match="cannot read the training losses"):
        losses(metrics)
    metrics.write_text("step,epoch,loss,accuracy,lr\n")
    with pytest.raises(QuickstartError, match="holds no training step"):
        losses(metrics)
    metrics.write_text("step,epoch,loss,accuracy,lr\n1,1,5.5,0.0,0.1\n2,1,4.25,0.1,0.1\n")
    assert losses(metrics) == (5.5, 4.25)


def test_summary_says_whether_the_loss_fell(tmp_path):
    report = Report(Layout(tmp_path), {"train": 1.0}, 5.5, 2.5, "O", "h, me")
    assert "Loss fell from 5.5000 (first step) to 2.5000 (last step)." in report.summary()
    assert 'Sample: "O" -> "h, me"' in report.summary()
    assert "Loss did not fall from 2.5000" in attrs.evolve(report, first_loss=2.5, last_loss=2.6).summary()
