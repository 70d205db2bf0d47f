"""Hugging Face checkpoints: config.json mapping, safetensors loading, parity with transformers' logits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from compiler.driver import CompileOptions, compile_model
from compiler.hf_config import read_hf_config
from ir.dtypes import DType, f32
from ir.errors import CheckpointError, ConfigError
from ir.interpreter import interpret
from ir.types import TensorType
from runtime.checkpoint import load_hf_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HF = {"gpt2-tiny": FIXTURES / "hf" / "gpt2-tiny", "llama-tiny": FIXTURES / "hf" / "llama-tiny"}


def expected_types(graph) -> dict[str, TensorType]:
    return {p.name: p.type for p in graph.params}


def compiled(folder: Path, inference: bool = True):
    return compile_model(CompileOptions(model=str(folder), inference=inference, emit="ir"))


@pytest.mark.parametrize("name", sorted(HF))
def test_checkpoint_logits_match_transformers(name):
    result = compiled(HF[name])
    assert result.checkpoint == HF[name]
    loaded = load_hf_checkpoint(HF[name], expected_types(result.graph), strict=True)
    expected = np.load(FIXTURES / "ref" / name / "expected.npz")
    logits = interpret(result.graph, {"input_ids": expected["input_ids"]}, loaded.tensors).outputs["logits"]
    assert logits.shape == expected["logits"].shape == (2, 16, 128)
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(HF))
def test_training_loss_matches_the_reference_definition(name):
    result = compiled(HF[name], inference=False)
    loaded = load_hf_checkpoint(HF[name], expected_types(result.forward))
    batch = np.load(FIXTURES / "ref" / name / "finetune.npz")
    out = interpret(result.forward, {"input_ids": batch["input_ids"][0],
                                   "token_type_ids": batch["token_type_ids"][0]}, loaded.tensors).outputs
    np.testing.assert_allclose(out["loss"], batch["losses"][0], rtol=1e-5)


def test_gpt2_config_maps_to_the_zoo_fields():
    hf = read_hf_config(HF["gpt2-tiny"])
    values = {s.key: s.value for s in hf.settings}
    assert hf.zoo == "gpt2"
    assert values == {"vocab_size": 128, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
                      "layer_norm_epsilon": 1e-5, "initializer_range": 0.5, "gelu_approximate": "tanh"}


def test_llama_config_reads_rope_parameters_and_the_legacy_rope_theta(tmp_path):
    values = {s.key: s.value for s in read_hf_config(HF["llama-tiny"]).settings}
    assert values["rope_theta"] == 10000.0 and values["num_key_value_heads"] == 2 and values["head_dim"] == 8
    config = json.loads((HF["llama-tiny"] / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=500000.0, rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert {s.key: s.value for s in read_hf_config(tmp_path).settings}["rope_theta"] == 500000.0


def write_config(folder: Path, base: str, **changes) -> Path:
    config = json.loads((HF[base] / "config.json").read_text())
    config.update(changes)
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize("base, changes, message", [
    ("gpt2-tiny", {"model_type": "bert"}, "unsupported model type \"bert\" (supported: gpt2, llama, qwen2, mistral, gemma)"),
    ("gpt2-tiny", {"activation_function": "relu"}, "'activation_function': \"relu\" is not supported"),
    ("gpt2-tiny", {"tie_word_embeddings": False}, "'tie_word_embeddings': false is not supported"),
    ("llama-tiny", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type \"yarn\" is not supported"),
    ("llama-tiny", {"hidden_act": "gelu"}, "'hidden_act': \"gelu\" is not supported"),
    ("gpt2-tiny", {"model_type": ["gpt2"]}, "unsupported model type [\"gpt2\"]"),
    ("gpt2-tiny", {"activation_function": ["gelu"]}, "'activation_function': [\"gelu\"] is not supported"),
    ("llama-tiny", {"rope_parameters": None, "rope_scaling": [1]}, "'rope_scaling': expected a JSON object"),
])
def test_unsupported_configs_are_named(tmp_path, base, changes, message):
    folder = write_config(tmp_path / "ckpt", base, **changes)
    with pytest.raises(ConfigError) as info:
        read_hf_config(folder)
    assert message in str(info.value)
    assert info.value.location.file.endswith("config.json") and info.value.context is not None


def test_bad_config_values_point_into_config_json(tmp_path):
    folder = write_config(tmp_path / "ckpt", "gpt2-tiny", n_layer="two")
    with pytest.raises(ConfigError) as info:
        compiled(folder)
    err = info.value
    assert "model.n_layer: expected int, got 'two'" in err.message
    assert err.location.file.endswith("config.json") and '"n_layer": "two"' in err.context


def test_a_folder_without_config_json_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        read_hf_config(tmp_path)


def test_a_config_json_that_is_not_utf8_cannot_be_read(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "gpt2\xff"}')
    with pytest.raises(ConfigError, match="cannot read .*'utf-8' codec can't decode"):
        read_hf_config(tmp_path)


def test_invalid_json_names_line_and_column(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "gpt2",\n  "n_layer": ,\n}')
    with pytest.raises(ConfigError) as info:
        read_hf_config(tmp_path)
    assert info.value.location.line == 3 and "invalid JSON" in info.value.message


# --- the checkpoint loader --------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_types():
    return expected_types(compiled(HF["gpt2-tiny"]).graph)


def copy_with(folder: Path, tensors: dict) -> Path:
    folder.mkdir()
    shutil.copy(HF["gpt2-tiny"] / "config.json", folder / "config.json")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_gpt2_keys_without_the_transformer_prefix_and_a_tied_lm_head(tmp_path, gpt2_types):
    tensors = load_file(HF["gpt2-tiny"] / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["lm_head.weight"] = tensors["transformer.wte.weight"]
    loaded = load_hf_checkpoint(copy_with(tmp_path / "old", renamed), gpt2_types, strict=True)
    assert set(loaded.tensors) == set(gpt2_types) and loaded.unexpected == ()
    np.testing.assert_array_equal(loaded.tensors["transformer.h.1.mlp.c_fc.weight"],
                                  tensors["transformer.h.1.mlp.c_fc.weight"])


def test_missing_unexpected_and_mismatched_tensors(tmp_path, gpt2_types):
    tensors = load_file(HF["gpt2-tiny"] / "model.safetensors")
    partial = {k: v for k, v in tensors.items() if "h.1." not in k}
    partial["h.0.attn.masked_bias"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError, match=r"lacks 12 tensor\(s\) the model needs: transformer.h.1.ln_1.weight"):
        load_hf_checkpoint(copy_with(tmp_path / "partial", partial), gpt2_types)
    extra = dict(tensors, **{"h.0.attn.masked_bias": np.zeros(1, np.float32)})
    folder = copy_with(tmp_path / "extra", extra)
    assert load_hf_checkpoint(folder, gpt2_types).unexpected == ("h.0.attn.masked_bias",)
    with pytest.raises(CheckpointError, match="does not use: h.0.attn.masked_bias"):
        load_hf_checkpoint(folder, gpt2_types, strict=True)
    wrong = dict(tensors, **{"transformer.wpe.weight": np.zeros((32, 32), np.float32)})
    with pytest.raises(CheckpointError, match=r"'transformer.wpe.weight': the checkpoint has shape \[32, 32\], "
                                              r"the model expects \[64, 32\]"):
        load_hf_checkpoint(copy_with(tmp_path / "wrong", wrong), gpt2_types)


def test_sharded_checkpoints_and_float16_tensors(tmp_path):
    tensors = load_file(HF["llama-tiny"] / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    tmp_path.joinpath("ckpt").mkdir()
    for shard, keys in shards.items():
        save_file({k: tensors[k].astype(np.float16) for k in keys}, str(tmp_path / "ckpt" / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    types = {k: TensorType(v.shape, f32) for k, v in tensors.items()}
    loaded = load_hf_checkpoint(tmp_path / "ckpt", types, strict=True).tensors
    assert loaded["lm_head.weight"].dtype == np.float32
    np.testing.assert_allclose(loaded["lm_head.weight"], tensors["lm_head.weight"], atol=1e-2)


@pytest.mark.parametrize("stored", [DType.bf16, DType.f16])
@pytest.mark.parametrize("wanted", [DType.f32, DType.bf16])
def test_16_bit_checkpoints_load_into_any_float_type(tmp_path, stored, wanted):
    """Checkpoints saved in bf16 (as many Hugging Face ones are) or f16, into f32 or bf16 params."""
    tensors = load_file(HF["gpt2-tiny"] / "model.safetensors")
    narrow = {k: v.astype(stored.np) for k, v in tensors.items()}
    tmp_path.joinpath("ckpt").mkdir()
    save_file(narrow, str(tmp_path / "ckpt" / "model.safetensors"))
    loaded = load_hf_checkpoint(tmp_path / "ckpt", {k: TensorType(v.shape, wanted) for k, v in tensors.items()}).tensors
    weight = "transformer.h.0.mlp.c_fc.weight"
    assert loaded[weight].dtype == wanted.np
    np.testing.assert_array_equal(loaded[weight].astype(np.float64),
                                  narrow[weight].astype(np.float64).astype(wanted.np).astype(np.float64))


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "nowhere", {})
    with pytest.raises(CheckpointError, match="has neither model.safetensors nor"):
        load_hf_checkpoint(tmp_path, {})
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_hf_checkpoint(tmp_path, {})


def test_a_config_json_100000_levels_deep_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ConfigError) as info:
        read_hf_config(tmp_path)
    assert info.value.message == "invalid JSON: nested more than 100 levels deep"
    assert (info.value.location.line, info.value.location.col) == (1, 28 + 100)  # the 100th '[' is level 101


@pytest.mark.parametrize("base, key, value, message", [
    ("gpt2-tiny", "layer_norm_epsilon", float("nan"), "'layer_norm_epsilon': NaN is not a positive finite number"),
    ("gpt2-tiny", "layer_norm_epsilon", -1e-5, "'layer_norm_epsilon': -1e-05 is not a positive finite number"),
    ("gpt2-tiny", "n_layer", -1, "'n_layer': -1 is not a positive integer"),
    ("gpt2-tiny", "n_head", True, "model.n_head: expected int, got true"),
    ("llama-tiny", "rms_norm_eps", float("inf"), "'rms_norm_eps': Infinity is not a positive finite number"),
    ("llama-tiny", "num_hidden_layers", 0, "'num_hidden_layers': 0 is not a positive integer"),
])
def test_config_values_out_of_range_do_not_compile(tmp_path, base, key, value, message):
    folder = write_config(tmp_path / "ckpt", base, **{key: value})
    with pytest.raises(ConfigError) as info:
        compiled(folder)
    assert message in str(info.value)
    assert info.value.location.file.endswith("config.json") and f'"{key}"' in info.value.context


def test_a_safetensors_dtype_rduflow_does_not_read(tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'w' has dtype F8_E4M3, which rduflow "
                                              r"does not read \(it reads BF16, BOOL, F16, F32"):
        load_hf_checkpoint(tmp_path, {"w": TensorType((4,), f32)})
