"""Model config: Hydra overrides, YAML files, precedence, pydantic validation, the compile driver."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler import zoo
from compiler.config import Field, Schema, Setting, load_yaml, parse_overrides, resolve
from compiler.driver import CompileOptions, compile_model, find_model
from compiler.frontend import Source, build
from ir.errors import ConfigError, FrontendError, display_path

SCHEMA = Schema((
    Field("n_layer", "int", lambda v: 2),
    Field("n_embd", "int", lambda v: 32),
    Field("n_inner", "int", lambda v: 4 * v["n_embd"]),
    Field("eps", "float", lambda v: 1e-5),
    Field("tied", "bool", lambda v: True),
    Field("act", "str", lambda v: "tanh"),
))


def test_defaults_follow_the_fields_before_them():
    assert resolve(SCHEMA) == {"n_layer": 2, "n_embd": 32, "n_inner": 128, "eps": 1e-5, "tied": True, "act": "tanh"}
    assert resolve(SCHEMA, parse_overrides(["model.n_embd=8"]))["n_inner"] == 32
    assert resolve(SCHEMA, parse_overrides(["model.n_embd=8", "model.n_inner=5"]))["n_inner"] == 5


def test_override_values_are_typed_by_hydra_and_validated():
    values = resolve(SCHEMA, parse_overrides(["model.eps=1e-6", "model.tied=false", "model.act=none",
                                              "model.n_layer=3.0", "model.eps=2"]))
    assert values["eps"] == 2.0 and isinstance(values["eps"], float)
    assert values["tied"] is False and values["act"] == "none" and values["n_layer"] == 3


@pytest.mark.parametrize("override, message", [
    ("model.n_layer=2.5", "model.n_layer: expected int, got 2.5"),
    ("model.tied=1", "model.tied: expected bool, got 1"),
    ("model.eps=small", "model.eps: expected float, got 'small'"),
    ("model.act=3", "model.act: expected str, got 3"),
    ("model.n_layer=null", "model.n_layer: expected int, got None"),
])
def test_type_errors_name_the_field_and_the_expected_type(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(SCHEMA, parse_overrides([override]))


def test_adding_and_force_adding_keys():
    values = resolve(SCHEMA, parse_overrides(["+model.extra=1.5", "++model.n_layer=4", "++model.other=x"]))
    assert values["extra"] == 1.5 and values["n_layer"] == 4 and values["other"] == "x"


def test_last_setting_wins_in_order():
    settings = [Setting("n_layer", 1, "a"), Setting("n_layer", 7, "b")]
    assert resolve(SCHEMA, settings)["n_layer"] == 7


def test_yaml_config_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# sizes\nmodel:\n  n_layer: 3\n  eps: 1e-6\n")
    settings = load_yaml(path)
    assert [(s.key, s.value) for s in settings] == [("n_layer", 3), ("eps", "1e-6")]
    assert resolve(SCHEMA, settings)["eps"] == 1e-6
    path.write_text("model:\n  n_layer: 3\n  n_layr: 4\n")
    with pytest.raises(ConfigError) as info:
        resolve(SCHEMA, load_yaml(path))
    err = info.value
    assert err.message.startswith("unknown config key 'model.n_layr' (did you mean model.n_layer,")
    assert (err.location.line, err.location.col) == (3, 3) and err.context == "  n_layr: 4"
    path.write_text("model:\n  n_layer: three\n")
    with pytest.raises(ConfigError, match="model.n_layer: expected int, got 'three'") as info:
        resolve(SCHEMA, load_yaml(path))
    assert info.value.location.line == 2


@pytest.mark.parametrize("text, message, line", [
    ("model: [1, 2]\n", "'model' must be a mapping", 1),
    ("train:\n  steps: 3\n", "unknown config group 'train' (expected 'model')", 1),
    ("model:\n  n_layer: [1\n", "invalid YAML", 3),
    ("- 1\n", "must hold a mapping", 1),
])
def test_bad_yaml_files(tmp_path, text, message, line):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as info:
        load_yaml(path)
    assert info.value.location.line == line


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "absent.yaml")


def test_driver_precedence_checkpoint_then_file_then_batch_flag_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: 3\n  batch_size: 5\n  seq_len: 8\n")
    options = CompileOptions(model="tests/fixtures/hf/gpt2-tiny", config_file=str(path), batch_size=4,
                             overrides=("model.seq_len=12",), inference=True, emit="ir")
    result = compile_model(options)
    assert result.config["n_layer"] == 3 and result.config["batch_size"] == 4 and result.config["seq_len"] == 12
    assert result.config["n_embd"] == 32 and result.config["initializer_range"] == 0.5  # from config.json
    assert result.graph.input("input_ids").type.shape == (4, 12)


def test_driver_finds_files_zoo_models_and_folders(tmp_path):
    rdl = tmp_path / "m.rdl"
    rdl.write_text("input x: f32[2]\noutput y = x * 2.0")
    assert compile_model(CompileOptions(model=str(rdl), inference=True, emit="ir")).graph.name == "m"
    recorded = find_model("gpt2").source.filename  # the same in every checkout, openable from anywhere
    assert recorded == "compiler/zoo/gpt2.rdl"
    assert Path(display_path(recorded)).resolve() == Path(zoo.__file__).parent.resolve() / "gpt2.rdl"
    assert find_model("tests/fixtures/hf/llama-tiny").source.filename == "compiler/zoo/llama.rdl"
    with pytest.raises(ConfigError, match=r"unknown model 'lama'.*did you mean llama"):
        find_model("lama")
    with pytest.raises(FrontendError, match="cannot read model file"):
        find_model(str(tmp_path / "absent.rdl"))


def test_batch_size_flag_on_a_model_without_batch_size(tmp_path):
    rdl = tmp_path / "m.rdl"
    rdl.write_text("input x: f32[2]\noutput y = x")
    with pytest.raises(ConfigError, match=r"-b/--batch-size: unknown config key 'model.batch_size'"):
        compile_model(CompileOptions(model=str(rdl), batch_size=2, emit="ir"))


def test_an_unreadable_character_in_a_yaml_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: \x00\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert "invalid YAML: unacceptable character #x0000" in info.value.message
    assert "\n" not in info.value.message


def test_a_yaml_file_that_is_not_utf8_cannot_be_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model:\n  n_layer: \xff\n")
    with pytest.raises(ConfigError, match="cannot read config file .*'utf-8' codec can't decode"):
        load_yaml(path)


@pytest.mark.parametrize("text", [
    "model:\n  n_layer: " + "[" * 5000 + "]" * 5000 + "\n",
    "model:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(5000)),
], ids=["flow", "block"])
def test_a_yaml_config_5000_levels_deep_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.message == "invalid YAML: nested more than 100 levels deep"
    assert info.value.location.file == str(path) and info.value.location.line >= 2


def test_a_dtype_as_an_int_default_is_a_located_error(tmp_path):
    """A config default that names a dtype (`hidden: int = f32`) is the user's error, not a crash."""
    source = Source("model m\nconfig {\n  hidden: int = f32\n}\ninput x: f32[hidden]\noutput y = x\n", "m.rdl")
    with pytest.raises(ConfigError, match="default of 'hidden': expected int, got f32") as info:
        build(source)
    assert info.value.location.line == 3
