"""`rduflow run` on training PEFs: fixture parity, checkpoints, exact resume after SIGKILL, data, errors."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from runtime.schedules import Schedule
from tools.cli import main
from train_helpers import FIXTURES, ROOT, finetune_batches, random_tokens, write_tokens


def metrics(save_dir: Path) -> list[dict[str, str]]:
    with open(save_dir / "per_step_metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_finetuning_a_hugging_face_checkpoint_gives_the_reference_losses(model, fixture_pefs, tmp_path, capsys):
    batches = finetune_batches(model)
    data = write_tokens(tmp_path / "batches.hdf5", batches["input_ids"], batches["token_type_ids"])
    assert main(["run", fixture_pefs[model], "--data", str(data), "--checkpoint", str(FIXTURES / "hf" / model),
                 "--num-steps", "5", "--no-shuffle", "--lr", "1e-3", "--save-dir", str(tmp_path / "run")]) == 0
    rows = metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], batches["losses"], rtol=1e-4)
    out = capsys.readouterr().out
    assert f"Epoch [1/1], Step [5/5], Loss: {batches['losses'][4]:.4f}" in out
    saved = tmp_path / "run" / "checkpoint-5"
    tensors = load_file(saved / "model.safetensors")
    reference = load_file(FIXTURES / "ref" / model / "params_step5.safetensors")
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in reference.items()}
    assert "lm_head.weight" not in tensors if model == "gpt2-tiny" else "lm_head.weight" in tensors
    config = json.loads((saved / "config.json").read_text())
    original = json.loads((FIXTURES / "hf" / model / "config.json").read_text())
    assert {k: config[k] for k in original if k != "n_inner"} == {k: v for k, v in original.items() if k != "n_inner"}
    assert (saved / "generation_config.json").read_bytes() == \
        (FIXTURES / "hf" / model / "generation_config.json").read_bytes()


def test_a_saved_checkpoint_reloads_exactly(fixture_pefs, tmp_path):
    """Step 6's loss of a run equals step 1's loss of a run started from that run's checkpoint 5."""
    pef = fixture_pefs["gpt2-tiny"]
    data = random_tokens(tmp_path / "all.hdf5", 12, seed=1)
    with __import__("h5py").File(data) as f:
        write_tokens(tmp_path / "last.hdf5", f["input_ids"][10:], f["token_type_ids"][10:])
    common = ["--no-shuffle", "--checkpoint", str(FIXTURES / "hf" / "gpt2-tiny")]
    assert main(["run", pef, "--data", str(data), "--num-steps", "6", "--save-every", "5",
                 "--save-dir", str(tmp_path / "a"), *common]) == 0
    assert main(["run", pef, "--data", str(tmp_path / "last.hdf5"), "--num-steps", "1",
                 "--checkpoint", str(tmp_path / "a" / "checkpoint-5"), "--save-dir", str(tmp_path / "b")]) == 0
    assert metrics(tmp_path / "b")[0]["loss"] == metrics(tmp_path / "a")[5]["loss"]
    trained = load_file(tmp_path / "a" / "checkpoint-5" / "model.safetensors")
    assert not np.array_equal(trained["transformer.wte.weight"],
                              load_file(FIXTURES / "hf" / "gpt2-tiny" / "model.safetensors")["transformer.wte.weight"])


def test_a_run_killed_with_sigkill_resumes_to_exactly_the_same_losses(fixture_pefs, tmp_path):
    data = random_tokens(tmp_path / "d.hdf5", 40, seed=2)
    args = ["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--checkpoint", str(FIXTURES / "hf" / "gpt2-tiny"),
            "--num-steps", "200", "--save-every", "10", "--keep-last", "2", "--seed", "3", "--lr-schedule", "cosine",
            "--warmup-steps", "5", "--log-every", "100"]
    assert main([*args, "--save-dir", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *args, "--save-dir", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-20").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(metrics(killed)) < 200
    assert main([*args, "--save-dir", str(killed), "--resume"]) == 0
    assert (killed / "per_step_metrics.csv").read_text() == (tmp_path / "whole" / "per_step_metrics.csv").read_text()
    assert sorted(p.name for p in killed.iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-190", "checkpoint-200"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (killed / "checkpoint-200" / name).read_bytes() == (tmp_path / "whole" / "checkpoint-200" / name).read_bytes()
    state = json.loads((killed / "checkpoint-200" / "trainer_state.json").read_text())
    assert state["step"] == 200 and state["data_position"] == {"epoch": 10, "batch": 0, "steps_per_epoch": 20}


def test_a_used_save_dir_needs_resume_and_the_same_data_order(fixture_pefs, tmp_path, capsys):
    data = random_tokens(tmp_path / "d.hdf5", 8)
    args = ["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--num-steps", "2", "--save-dir", str(tmp_path)]
    assert main(args) == 0
    assert main(args) == 1
    assert f"{tmp_path} holds checkpoints of an earlier run (up to checkpoint-2): continue it with --resume" \
        in capsys.readouterr().err
    assert main([*args, "--resume", "--seed", "4"]) == 1
    assert "trained with seed 0, this run has 4 (the batches would differ)" in capsys.readouterr().err
    assert main([*args, "--num-steps", "3", "--resume", "--lr", "0.01"]) == 0
    captured = capsys.readouterr()
    assert "Resuming from" in captured.out and "resuming with lr 0.01, the checkpoint used 0.001" in captured.err
    assert [r["step"] for r in metrics(tmp_path)] == ["1", "2", "3"]


def test_learning_rate_schedule_and_metrics_columns(fixture_pefs, tmp_path):
    data = random_tokens(tmp_path / "d.hdf5", 8)
    assert main(["run", fixture_pefs["llama-tiny"], "--data", str(data), "--num-epochs", "3", "--lr", "0.01",
                 "--lr-schedule", "linear", "--warmup-steps", "3", "--save-dir", str(tmp_path / "r")]) == 0
    rows = metrics(tmp_path / "r")
    assert list(rows[0]) == ["step", "epoch", "loss", "accuracy", "lr"]
    schedule = Schedule(0.01, "linear", 3, 12)
    assert [float(r["lr"]) for r in rows] == [schedule(s) for s in range(12)]
    assert [int(r["epoch"]) for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    summary = (tmp_path / "r" / "summary.txt").read_text()
    assert re.search(r"^steps\s+: 1-12 of 12$", summary, re.M) and re.search(r"^model\s+: llama$", summary, re.M)


def test_gpt2_trains_on_a_text_corpus_with_falling_loss_and_evaluates(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join((ROOT / "tools" / "data" / "midsummer.txt").read_text().splitlines()[:600]))
    assert main(["data-prep", "--input", str(corpus), "--output", str(tmp_path / "data"), "--max-seq-length", "32",
                 "--dev-ratio", "0.1"]) == 0
    assert main(["compile", "gpt2", "model.vocab_size=258", "model.seq_len=32", "model.n_positions=32", "-b", "8",
                 "--max-grad-norm", "1.0", "-o", str(tmp_path), "--pef-name", "g"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "g" / "g.pef"), "--data", str(tmp_path / "data"), "--num-steps", "60",
                 "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "30", "--log-every", "10",
                 "--save-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    losses = [float(r["loss"]) for r in metrics(tmp_path / "run")]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.5
    evaluations = re.findall(r"Evaluation loss: ([\d.]+), Perplexity: ([\d.]+), Accuracy: ([\d.]+)", out)
    assert len(evaluations) == 2
    (first, _, _), (last, perplexity, _) = evaluations
    assert float(last) < float(first) and float(perplexity) == pytest.approx(math.exp(float(last)), rel=1e-3)
    checkpoint = tmp_path / "run" / "checkpoint-60"
    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["tokenizer_class"] == "RduflowByteTokenizer"
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["n_positions"]) == (258, 256, 32)


def test_mlp_reaches_95_percent_on_the_held_out_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from tools.digits import main as digits
    assert digits(["--output", str(tmp_path / "digits")]) == 0
    assert main(["compile", "mlp", "-o", str(tmp_path), "--pef-name", "mlp", "--weight-decay", "0.01"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "mlp" / "mlp.pef"), "--data", str(tmp_path / "digits"), "--num-epochs", "5",
                 "--lr", "1e-2", "--lr-schedule", "cosine", "--warmup-steps", "10", "--log-every", "100"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.findall(r"Evaluation loss: [\d.]+, Perplexity: [\d.]+, Accuracy: ([\d.]+)", out)[-1])
    assert accuracy >= 0.95


def test_profile_and_trace_of_the_training_steps(fixture_pefs, tmp_path, capsys):
    data = random_tokens(tmp_path / "d.hdf5", 4)
    trace = tmp_path / "t.json"
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--num-steps", "2", "--profile",
                 "--trace", str(trace), "--target", "sn30", "--eval-every", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"eval_every is set, but {data} has no dev split" in err
    assert "Kernels: host vs modeled RDU (sn30, 2 step(s))" in out and f"Trace written to {trace}" in out
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("pid") == 2 and e.get("cat") == "opt" for e in events)


@pytest.mark.parametrize("extra, message", [
    ([], "error: --data is required to train"),
    (["--data", "{data}", "--resume"], "error: --resume: needs --save-dir"),
    (["--data", "{data}", "--lr", "-1"], "error: --lr: input should be greater than 0"),
    (["--data", "{tmp}/missing"], "error: data not found: {tmp}/missing"),
    (["--data", "{data}", "--checkpoint", str(FIXTURES / "hf" / "llama-tiny")],
     "checkpoint '{llama}' lacks 28 tensor(s) the model needs: transformer.wte.weight"),
    (["--data", "{data}", "--target", "sn99"], "error: unknown target 'sn99'"),
])
def test_user_mistakes_exit_1_with_a_one_line_message(fixture_pefs, tmp_path, capsys, extra, message):
    data = random_tokens(tmp_path / "d.hdf5", 4)
    fill = {"data": str(data), "tmp": str(tmp_path), "llama": str(FIXTURES / "hf" / "llama-tiny")}
    assert main(["run", fixture_pefs["gpt2-tiny"], *[a.format(**fill) for a in extra]]) == 1
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err


def test_a_bad_rduflow_num_threads_exits_1_naming_it(fixture_pefs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RDUFLOW_NUM_THREADS", "abc")
    data = random_tokens(tmp_path / "d.hdf5", 4)
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--num-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: RDUFLOW_NUM_THREADS must be a positive integer, got 'abc'" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--trace", "{tmp}/missing/t.json"], "error: --trace {tmp}/missing/t.json: folder {tmp}/missing does not exist"),
    (["--trace", "{tmp}"], "error: --trace {tmp}: is a folder; give a file name, such as {tmp}/trace.json"),
    (["--save-dir", "{data}"], "error: --save-dir {data}: is a file, not a folder"),
    (["--save-dir", "{data}/run"], "error: --save-dir {data}/run: cannot be made, {data} is a file"),
    (["--checkpoint", "{tmp}/none"], "error: checkpoint folder '{tmp}/none' does not exist"),
    (["--save-dir", "{tmp}/used"], "error: {tmp}/used holds checkpoints of an earlier run (up to checkpoint-3)"),
    (["--data", "{tmp}/long.hdf5"], "sequences of 20 tokens, but the program was compiled for seq_len 16"),
])
def test_paths_and_data_are_checked_before_the_kernels_are_compiled(fixture_pefs, tmp_path, capsys, monkeypatch,
                                                                     extra, message):
    def no_load(*_, **__):
        raise AssertionError("the program was loaded before the mistake was found")

    monkeypatch.setattr("tools.commands.run.load", no_load)
    data = random_tokens(tmp_path / "d.hdf5", 4)
    random_tokens(tmp_path / "long.hdf5", 4, seq=20)
    (tmp_path / "used" / "checkpoint-3").mkdir(parents=True)
    fill = {"data": str(data), "tmp": str(tmp_path)}
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), *[a.format(**fill) for a in extra]]) == 1
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err


def test_shape_mismatches_and_wrong_modes_name_what_is_wrong(tmp_path, capsys):
    assert main(["compile", "gpt2", "model.n_embd=16", "-o", str(tmp_path), "--pef-name", "small"]) == 0
    assert main(["compile", "gpt2", "--inference", "-o", str(tmp_path), "--pef-name", "inf"]) == 0
    data = random_tokens(tmp_path / "d.hdf5", 4)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "small" / "small.pef"), "--data", str(data),
                 "--checkpoint", str(FIXTURES / "hf" / "gpt2-tiny")]) == 1
    assert "tensor 'transformer.h.0.attn.c_attn.bias': the checkpoint has shape [96], the model expects [48]" \
        in capsys.readouterr().err
    assert main(["run", str(tmp_path / "inf" / "inf.pef"), "--data", str(data)]) == 1
    assert f"error: --data is a training option, but {tmp_path / 'inf' / 'inf.pef'} is an inference PEF" \
        in capsys.readouterr().err
    long = random_tokens(tmp_path / "long.hdf5", 4, seq=20)
    assert main(["run", str(tmp_path / "small" / "small.pef"), "--data", str(long)]) == 1
    assert "sequences of 20 tokens, but the program was compiled for seq_len 16" in capsys.readouterr().err


def test_gpt2_checkpoint_keys_without_prefix_load_and_extra_tensors_are_listed(fixture_pefs, tmp_path, capsys):
    from safetensors.numpy import save_file
    tensors = load_file(FIXTURES / "hf" / "gpt2-tiny" / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["score.weight"] = np.zeros((2, 32), np.float32)
    folder = tmp_path / "bare"
    folder.mkdir()
    save_file(bare, folder / "model.safetensors")
    batches = finetune_batches("gpt2-tiny")
    data = write_tokens(tmp_path / "b.hdf5", batches["input_ids"][:2], batches["token_type_ids"][:2])
    assert main(["run", fixture_pefs["gpt2-tiny"], "--data", str(data), "--checkpoint", str(folder),
                 "--num-steps", "1", "--save-dir", str(tmp_path / "run")]) == 0
    assert "1 tensor(s) the model does not use: score.weight" in capsys.readouterr().err
    assert float(metrics(tmp_path / "run")[0]["loss"]) == pytest.approx(batches["losses"][0], rel=1e-4)
    assert json.loads((tmp_path / "run" / "checkpoint-1" / "config.json").read_text())["model_type"] == "gpt2"
