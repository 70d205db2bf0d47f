"""The Llama family's other members (Qwen2, Mistral, Gemma) against transformers' fixtures:
logits, greedy tokens, five fine-tuning steps, and checkpoints written back in each family's layout."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from compiler.driver import CompileOptions, compile_model
from compiler.hf_config import read_hf_config
from ir.errors import ConfigError
from ir.interpreter import interpret
from runtime.checkpoint import load_hf_checkpoint
from runtime.generate import ProgramSteps, Prompt, generate, load_weights
from runtime.program import Program
from runtime.sampling import SamplingOptions
from tools.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILIES = ("qwen2-tiny", "mistral-tiny", "gemma-tiny")


def folder(name: str) -> Path:
    return FIXTURES / "hf" / name


def reference(name: str, file: str = "expected.npz") -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "ref" / name / file) as data:
        return dict(data)


def params(graph) -> dict:
    return {p.name: p.type for p in graph.params if p.role.value != "state"}


@pytest.mark.parametrize("name, fields", [
    ("qwen2-tiny", {"model_type": "qwen2", "attention_bias": True, "attention_out_bias": False}),
    ("mistral-tiny", {"model_type": "mistral", "sliding_window": 5}),
    ("gemma-tiny", {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh", "norm_weight_offset": 1.0,
                    "embedding_multiplier": 32 ** 0.5, "tie_word_embeddings": True}),
])
def test_model_type_picks_the_llama_model_and_its_family_fields(name, fields):
    model = read_hf_config(folder(name))
    settings = {s.key: s.value for s in model.settings}
    assert model.zoo == "llama" and {k: settings[k] for k in fields} == fields


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(name):
    result = compile_model(CompileOptions(model=str(folder(name)), inference=True, emit="ir"))
    loaded = load_hf_checkpoint(folder(name), params(result.graph), strict=True)
    expected = reference(name)
    logits = interpret(result.graph, {"input_ids": expected["input_ids"]}, loaded.tensors).outputs["logits"]
    assert logits.shape == (2, 16, 128)
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_tokens_match_transformers(name):
    result = compile_model(CompileOptions(model=str(folder(name)), inference=True, batch_size=3))
    program = Program(result.pef)
    assert load_weights(program, folder(name)) == ()
    expected = reference(name)
    prompts = [Prompt(tuple(int(t) for t in expected[f"gen_prompt_{i}"]), str(i)) for i in range(3)]
    got = generate(ProgramSteps(program), prompts, 12, SamplingOptions(temperature=0.0),
                   int(expected["gen_eos_token_id"]))
    assert [list(c.token_ids) for c in got.completions] == [expected[f"gen_new_{i}"].tolist() for i in range(3)]


@pytest.mark.parametrize("name", FAMILIES)
def test_fine_tuning_matches_transformers_and_saves_the_family_s_layout(name, tmp_path):
    batches = reference(name, "finetune.npz")
    with h5py.File(tmp_path / "batches.hdf5", "w") as f:
        f.create_dataset("input_ids", data=batches["input_ids"].reshape(10, 16).astype(np.int32))
        f.create_dataset("token_type_ids", data=batches["token_type_ids"].reshape(10, 16).astype(np.int32))
    assert main(["compile", str(folder(name)), "--weight-decay", "0.01", "--max-grad-norm", "1.0",
                 "-o", str(tmp_path), "--pef-name", "train"]) == 0
    assert main(["run", str(tmp_path / "train" / "train.pef"), "--data", str(tmp_path / "batches.hdf5"),
                 "--checkpoint", str(folder(name)), "--num-steps", "5", "--no-shuffle", "--lr", "1e-3",
                 "--save-dir", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "per_step_metrics.csv", newline="") as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    np.testing.assert_allclose(losses, batches["losses"], rtol=1e-4)
    saved = tmp_path / "run" / "checkpoint-5"
    tensors, want = load_file(saved / "model.safetensors"), load_file(FIXTURES / "ref" / name / "params_step5.safetensors")
    assert sorted(tensors) == sorted(want) == sorted(load_file(folder(name) / "model.safetensors"))
    for key, value in want.items():
        np.testing.assert_allclose(tensors[key], value, atol=3e-5, err_msg=key)
    config = json.loads((saved / "config.json").read_text())
    original = json.loads((folder(name) / "config.json").read_text())
    kept = ("architectures", "model_type", "vocab_size", "hidden_size", "num_key_value_heads", "rms_norm_eps",
            "tie_word_embeddings", "sliding_window", "hidden_act", "hidden_activation", "use_sliding_window",
            "rope_parameters", "bos_token_id", "eos_token_id")
    assert {k: config.get(k) for k in kept} == {k: original.get(k) for k in kept}


@pytest.mark.parametrize("name, key, value, message", [
    ("qwen2-tiny", "use_sliding_window", True, "'use_sliding_window': true is not supported"),
    ("qwen2-tiny", "layer_types", ["full_attention", "sliding_attention"], "only \"full_attention\" layers"),
    ("mistral-tiny", "sliding_window", -3, "'sliding_window': -3 is not a window size"),
    ("gemma-tiny", "hidden_activation", "relu", "'hidden_activation': \"relu\" is not supported"),
])
def test_unsupported_family_settings_are_named(tmp_path, name, key, value, message):
    config = json.loads((folder(name) / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(ConfigError) as err:
        read_hf_config(tmp_path)
    assert message in str(err.value) and "config.json:" in str(err.value)
