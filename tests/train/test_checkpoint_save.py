"""Checkpoint writing (`runtime.checkpoint`): HF config.json, atomic folders, optimizer and trainer state."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from compiler.hf_config import read_hf_config
from ir.dtypes import DType
from ir.errors import CheckpointError
from ir.types import TensorType
from runtime import checkpoint as ckpt
from train_helpers import FIXTURES

GPT2 = {"vocab_size": 258, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 128,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "gelu_approximate": "tanh"}
LLAMA = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
         "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False,
         "mlp_bias": False, "initializer_range": 0.2}


def settings(folder) -> dict:
    return {s.key: s.value for s in read_hf_config(folder).settings}


def test_gpt2_config_from_the_header_is_a_hugging_face_config_rduflow_reads_back(tmp_path):
    config = ckpt.model_config("gpt2", GPT2, eos_id=256)
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (256, 256)
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    read = settings(tmp_path)
    assert {k: read[k] for k in GPT2 if k != "gelu_approximate"} == {k: v for k, v in GPT2.items()
                                                                    if k != "gelu_approximate"}
    assert read["gelu_approximate"] == "tanh"
    assert ckpt.model_config("gpt2", {**GPT2, "gelu_approximate": "none"})["activation_function"] == "gelu"


def test_a_base_config_keeps_its_other_keys_and_its_rope_form(tmp_path):
    base = json.loads((FIXTURES / "hf" / "llama-tiny" / "config.json").read_text())
    config = ckpt.model_config("llama", LLAMA, base, eos_id=99)
    assert config["eos_token_id"] == 2 and config["transformers_version"] == base["transformers_version"]
    assert config["rope_parameters"] == {"rope_theta": 500000.0, "rope_type": "default"}
    assert "rope_theta" not in config
    legacy = ckpt.model_config("llama", LLAMA)
    assert legacy["rope_theta"] == 500000.0 and "rope_parameters" not in legacy
    for cfg in (config, legacy):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        assert settings(tmp_path)["rope_theta"] == 500000.0
    assert list(config) == sorted(config)


def test_other_models_get_their_name_and_config_fields():
    assert ckpt.model_config("mlp", {"hidden": 32, "n_classes": 10}) == {"model_type": "mlp", "hidden": 32,
                                                                         "n_classes": 10}


def test_save_writes_every_file_and_replaces_an_older_folder_atomically(tmp_path):
    companions = tmp_path / "src"
    companions.mkdir()
    (companions / "tokenizer_config.json").write_text("{}")
    (companions / "generation_config.json").write_text("{}")
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    state = {"optimizer.step": np.array(3, np.int32), "optimizer.exp_avg.w": np.ones((2, 3), np.float32)}
    target = tmp_path / "run" / "checkpoint-3"
    ckpt.save_checkpoint(target, {"w": np.zeros((2, 3), np.float32)}, {"model_type": "x"})
    (target / "stale.txt").write_text("old")
    ckpt.save_checkpoint(target, weights, {"model_type": "x"}, state, {"step": 3}, [tmp_path / "none", companions])
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                        "optimizer.safetensors", "tokenizer_config.json",
                                                        "trainer_state.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint-3"]  # no temporary folder left
    assert np.array_equal(load_file(target / "model.safetensors")["w"], weights["w"])
    assert ckpt.read_trainer_state(target) == {"step": 3}
    optimizer = ckpt.read_optimizer_state(target, {"optimizer.step": TensorType((), DType.i32)})
    assert optimizer["optimizer.step"].shape == () and int(optimizer["optimizer.step"]) == 3
    loaded = ckpt.load_hf_checkpoint(target, {"w": TensorType((2, 3), DType.f32)}, strict=True)
    assert np.array_equal(loaded.tensors["w"], weights["w"])


def test_companion_groups_come_whole_from_one_folder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
    (first / "tokenizer.json").write_text("{}")
    (second / "tokenizer_config.json").write_text("{}")
    (second / "generation_config.json").write_text("{}")
    out = ckpt.save_checkpoint(tmp_path / "c", {}, {}, companions=[first, second])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json"]


def test_list_and_prune_checkpoints(tmp_path):
    for step in (10, 2, 30):
        ckpt.save_checkpoint(tmp_path / ckpt.checkpoint_name(step), {}, {})
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / ".checkpoint-40.tmp-1").mkdir()
    (tmp_path / ".checkpoint-30.old-7").mkdir()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10, 30]
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == [".checkpoint-30.old-7", ".checkpoint-40.tmp-1"]
    assert not list(tmp_path.glob(".*"))
    assert [p.name for p in ckpt.prune_checkpoints(tmp_path, 2)] == ["checkpoint-2"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 30]
    assert ckpt.list_checkpoints(tmp_path / "missing") == []


def test_bad_state_files_are_checkpoint_errors(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", {}, {}, optimizer_state={"optimizer.step": np.array(1, np.int32)})
    with pytest.raises(CheckpointError, match=r"lacks 1 optimizer tensor\(s\) .*optimizer.exp_avg.w"):
        ckpt.read_optimizer_state(tmp_path / "c", {"optimizer.exp_avg.w": TensorType((2,), DType.f32)})
    with pytest.raises(CheckpointError, match="cannot read .*trainer_state.json"):
        ckpt.read_trainer_state(tmp_path / "c")
    (tmp_path / "c" / "trainer_state.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ckpt.read_trainer_state(tmp_path / "c")


@pytest.mark.parametrize("state, shown", [
    ({}, "missing"), ({"step": -3}, "-3"), ({"step": "7"}, '"7"'), ({"step": True}, "true"), ({"step": 2.0}, "2.0"),
], ids=["missing", "negative", "string", "bool", "float"])
def test_a_trainer_state_step_must_be_a_non_negative_integer(tmp_path, state, shown):
    ckpt.save_checkpoint(tmp_path / "c", {}, {}, trainer_state=state)
    with pytest.raises(CheckpointError, match=f"trainer_state.json: 'step' must be a non-negative integer, got {shown}$"):
        ckpt.read_trainer_state(tmp_path / "c")


def test_a_trainer_state_100000_levels_deep_is_a_checkpoint_error(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", {}, {}, trainer_state={"step": 1})
    (tmp_path / "c" / "trainer_state.json").write_text('{"step": 1, "x": ' + "{\"a\": " * 100000 + "1" + "}" * 100001)
    with pytest.raises(CheckpointError, match=r"not valid JSON \(nested more than 100 levels deep: line 1 column"):
        ckpt.read_trainer_state(tmp_path / "c")
