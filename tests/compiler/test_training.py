"""build_training_graph's structure, its options, and `rduflow compile`'s training stage."""
from __future__ import annotations

import re

import pytest

from autodiff_helpers import zoo_forward
from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions, build_training_graph
from ir.dtypes import DType
from ir.errors import ConfigError, IRError
from ir.graph import Phase, Role
from ir.printer import print_graph
from ir.types import TensorType
from tools.cli import main as rduflow

PHASES = [Phase.fwd, Phase.bwd, Phase.gradnorm, Phase.opt]


def test_phases_outputs_inputs_and_updates():
    forward = zoo_forward("mlp")
    before = print_graph(forward)
    graph = build_training_graph(forward, TrainingOptions(max_grad_norm=1.0))
    assert print_graph(forward) == before  # the forward graph is left as it was
    phases = [op.phase for op in graph.ops]
    assert sorted(set(phases), key=PHASES.index) == PHASES
    assert phases == sorted(phases, key=PHASES.index)  # one run of ops per phase, in order
    assert phases.count(Phase.fwd) == len(forward.ops)
    assert list(graph.outputs) == ["logits", "loss", "accuracy", "grad_norm"]
    assert graph.outputs["grad_norm"].producer.phase == Phase.gradnorm
    assert graph.input("lr").type == TensorType((), DType.f32)
    trained = {p.name for p in graph.params if p.role == Role.param}
    states = {p.name for p in graph.params if p.role == Role.state}
    assert trained == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert set(graph.updates) == trained | states
    assert all(v.producer.phase == Phase.opt for v in graph.updates.values())
    # gradnorm makes the norm and the clipping coefficient; the optimizer scales the gradients
    # where it reads them, so no clipped copy of a gradient is ever written
    users = graph.users()
    gradnorm = [op for op in graph.ops if op.phase == Phase.gradnorm]
    assert all(op.result.type.shape == () or [u.name for u in users[op.result]] == ["sum"] for op in gradnorm)
    clip = [op for op in graph.ops if op.phase == Phase.opt and op.name == "mul"
            and any(x.producer is not None and x.producer.name == "minimum" for x in op.operands)]
    assert len(clip) == len(trained)


def test_the_backward_keeps_no_log_softmax_from_the_forward():
    """The loss's gradient recomputes its softmax from the logits and their row log-sum-exp, so the
    forward writes no tensor as large as the logits but the logits (gpt2's: 4 x 128 x 50257 floats)."""
    pef = compile_model(CompileOptions("gpt2", ("model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                                                "model.vocab_size=100", "model.seq_len=8"), batch_size=2)).pef
    large = [(k.name, b.name) for k in pef.kernels if k.phase == "fwd" for b in k.buffers
             if b.role == "output" and b.shape == (2, 8, 100) and b.dtype == "f32"]
    assert len(large) == 1, large  # the logits


def test_sgd_without_momentum_or_clipping_is_small():
    graph = build_training_graph(zoo_forward("logreg"), TrainingOptions(optimizer="sgd"))
    counts = {phase: sum(op.phase == phase for op in graph.ops) for phase in PHASES}
    # per param: g*g, sum (the weight matrix's by rows first), (accumulate), sqrt;
    # p - lr * g: two ops; the step counter: two ops
    assert counts[Phase.gradnorm] == 3 + 2 + 1 + 1
    assert counts[Phase.opt] == 2 * 2 + 2
    assert not any("momentum" in p.name for p in graph.params)


@pytest.mark.parametrize("values,message", [
    ({"momentum": -0.5}, "training option 'momentum': input should be greater than or equal to 0"),
    ({"optimizer": "adam"}, "training option 'optimizer': input should be 'sgd' or 'adamw'"),
    ({"betas": (0.9, 1.0)}, "training option 'betas': input should be less than 1"),
    ({"max_grad_norm": 0.0}, "training option 'max_grad_norm': input should be greater than 0"),
    ({"lr": 0.1}, "training option 'lr': extra inputs are not permitted"),
    ({"momentum": 0.9}, "training option 'momentum': applies to the sgd optimizer only (adamw has betas)"),
])
def test_bad_options_name_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        TrainingOptions.parse(**values)
    assert info.value.message == message


def test_names_the_training_graph_adds_must_be_free():
    forward = zoo_forward("mlp")
    forward.outputs["grad_norm"] = forward.outputs["loss"]
    with pytest.raises(IRError, match="already uses 'grad_norm', a name the training graph adds"):
        build_training_graph(forward)


def test_a_loss_that_no_param_affects_is_an_error():
    forward = zoo_forward("mlp")
    for p in forward.params:
        p.role = Role.buffer
    with pytest.raises(IRError, match="no trainable param affects the loss, nothing to train"):
        build_training_graph(forward)


def test_compile_emits_the_training_graph(capsys):
    assert rduflow(["compile", "mlp", "--emit", "ir", "--optimizer", "sgd", "--momentum", "0.9",
                    "--weight-decay", "0.01", "--max-grad-norm", "1.0"]) == 0
    text = capsys.readouterr().out
    assert re.findall(r"^\^(\w+):", text, re.M) == ["fwd", "bwd", "gradnorm", "opt"]
    assert "state @optimizer.momentum_buffer.fc1.weight : f32[32,64] = zeros" in text
    assert "output grad_norm = " in text and "update @fc2.bias = " in text


def test_compile_inference_has_no_training_phases(capsys):
    assert rduflow(["compile", "mlp", "--emit", "ir", "--inference"]) == 0
    text = capsys.readouterr().out
    assert "^bwd:" not in text and "optimizer." not in text and "%lr" not in text


def test_compile_rejects_a_bad_training_flag(capsys):
    assert rduflow(["compile", "mlp", "--emit", "ir", "--max-grad-norm", "-1"]) == 1
    assert capsys.readouterr().err.strip() == "error: --max-grad-norm: input should be greater than 0"


def test_compiling_a_model_without_a_loss_for_training_is_a_user_error(tmp_path, capsys):
    model = tmp_path / "m.rdl"
    model.write_text("input x: f32[2]\noutput y = x * 2.0")
    assert rduflow(["compile", str(model), "--emit", "ir"]) == 1
    assert capsys.readouterr().err.strip() == ("error: graph @m has no 'loss' output, so there is nothing to train "
                                               "(a model declares it in its train block; an inference compile "
                                               "needs none)")
    assert rduflow(["compile", str(model), "--emit", "ir", "--inference"]) == 0
