"""`rduflow compile`: IR output, overrides anywhere on the line, exit codes, error format."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compiler import zoo
from ir.errors import display_path
from tools.cli import main

#: the zoo's gpt2 as locations show it: the real file, relative to the working directory below it
GPT2 = display_path(str(Path(zoo.__file__).parent.resolve() / "gpt2.rdl"))

MLP_CHECKS = """
CHECK:      graph @mlp {
CHECK-NEXT:   input %x : f32[8,64]
CHECK-NEXT:   param @fc1.weight : f32[32,64] = kaiming_uniform
CHECK-NEXT:   param @fc1.bias : f32[32] = uniform(high=0.125, low=-0.125)
CHECK-NEXT:   param @fc2.weight : f32[10,32] = kaiming_uniform
CHECK:        %0 = matmul(%x, @fc1.weight) {transpose_b = true} : f32[8,32] loc("{{(.*/)?}}compiler/zoo/mlp.rdl":[[L:[0-9]+]]:10)
CHECK-NEXT:   %1 = add(%0, @fc1.bias) : f32[8,32] loc("{{(.*/)?}}compiler/zoo/mlp.rdl":[[L]]:46)
CHECK-NEXT:   %2 = relu(%1) : f32[8,32]
CHECK-NEXT:   %3 = matmul(%2, @fc2.weight) {transpose_b = true} : f32[8,10]
CHECK-NEXT:   %4 = add(%3, @fc2.bias) : f32[8,10]
CHECK-NEXT:   output logits = %4
CHECK-NEXT: }
"""


def compile_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def filecheck(text: str, checks: str, tmp_path) -> None:
    check_file = tmp_path / "checks.txt"
    check_file.write_text(checks)
    done = subprocess.run([sys.executable, "-m", "filecheck", str(check_file)], input=text,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_emit_ir_prints_the_forward_graph(capsys, tmp_path):
    code, out, _ = compile_cli(capsys, "mlp", "--emit", "ir", "--inference", "-b", "8")
    assert code == 0
    filecheck(out, MLP_CHECKS, tmp_path)


def test_training_mode_adds_the_loss(capsys):
    code, out, _ = compile_cli(capsys, "gpt2", "--emit", "ir")
    assert code == 0 and "input %token_type_ids : i32[2,16]" in out and "output loss = " in out


def test_overrides_may_come_before_between_or_after_options(capsys):
    runs = [("gpt2", "model.n_layer=1", "--emit", "ir", "model.n_embd=16", "--inference"),
            ("--inference", "gpt2", "--emit", "ir", "model.n_layer=1", "model.n_embd=16")]
    outputs = [compile_cli(capsys, *argv)[1] for argv in runs]
    assert outputs[0] == outputs[1] and "@transformer.h.0.attn.c_attn.weight : f32[16,48]" in outputs[0]
    assert "transformer.h.1." not in outputs[0]


def test_no_locs(capsys):
    code, out, _ = compile_cli(capsys, "logreg", "--emit", "ir", "--no-locs")
    assert code == 0 and "loc(" not in out


def test_a_checkpoint_folder(capsys):
    code, out, _ = compile_cli(capsys, "tests/fixtures/hf/llama-tiny", "--emit", "ir", "--inference")
    assert code == 0 and "param @lm_head.weight : f32[128,32] = normal(std=0.2)" in out


@pytest.mark.parametrize("argv, first_line, caret_line", [
    (("gpt2", "model.n_layer=abc"), f"{GPT2}:10:3: error: override 'model.n_layer=abc': model.n_layer: expected int",
     "  ^"),
    (("gpt2", "model.n_head=5"), f"{GPT2}:21:1: error: assertion failed: n_embd (32) must be a multiple of n_head (5)",
     "^"),
    (("llama", "model.n_layer=3"), "error: override 'model.n_layer=3': unknown config key 'model.n_layer'", None),
])
def test_user_errors_exit_1_with_location_and_caret(capsys, argv, first_line, caret_line):
    code, out, err = compile_cli(capsys, *argv, "--emit", "ir")
    lines = err.splitlines()
    assert code == 1 and out == "" and "Traceback" not in err
    assert lines[0].startswith(first_line)
    assert (lines[2] if caret_line else None) == caret_line


def test_syntax_errors_in_a_file(capsys, tmp_path):
    path = tmp_path / "bad.rdl"
    path.write_text("input x: f32[2]\noutput y = relu(x\n")
    code, _, err = compile_cli(capsys, str(path), "--emit", "ir")
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:2:18: error: syntax error: unexpected end of input; expected ")
    assert "')'" in first and "','" in first
    assert err.splitlines()[1:] == ["output y = relu(x", " " * 17 + "^"]


def test_config_file_and_batch_size(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 7\n")
    code, out, _ = compile_cli(capsys, "mlp", "--config", str(path), "-b", "3", "--emit", "ir", "--inference")
    assert code == 0 and "input %x : f32[3,64]" in out and "param @fc1.weight : f32[7,64]" in out


@pytest.mark.parametrize("argv", [("mlp", "-b", "0"), ("mlp", "--emit", "pef"), ()])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["compile", *argv])
    assert info.value.code == 2


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    out = capsys.readouterr().out
    for option in ("--inference", "--batch-size", "--config", "--emit", "KEY=VALUE"):
        assert option in out


def test_the_installed_command(tmp_path):
    done = subprocess.run(["rduflow", "compile", "logreg", "--emit", "ir", "--inference"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("graph @logreg {")


def test_verify_semantics_without_the_memory_for_a_result_is_a_one_line_error(tmp_path):
    """A 1e9-element iota (8 GB in the reference interpreter) under a 4 GB address-space limit."""
    import resource
    model = tmp_path / "big.rdl"
    model.write_text("model big\ninput x: f32[2]\noutput y = sum(cast(iota(shape=[1000000000]), dtype=f32)) + sum(x)\n")

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    done = subprocess.run([sys.executable, "-m", "tools.cli", "compile", str(model), "--inference",
                           "--verify-semantics", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          preexec_fn=limit_memory, timeout=600)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (f"error: --verify-semantics cannot run the input graph on random inputs: 'iota' at "
                                   f"{model}:3:21: the reference interpreter cannot allocate its result (i32[1000000000])")
