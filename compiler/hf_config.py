"""A Hugging Face checkpoint's `config.json` as a zoo model and config settings.

`model_type` picks the zoo model (`gpt2`, or `llama` for the Llama family: `llama`,
`qwen2`, `mistral`, `gemma`, told apart by the fields that set their differences);
its sizes become settings of that model's fields. A setting the zoo model cannot honour (another activation, a
RoPE scaling, untied GPT-2 embeddings) is an error naming the key, not a silent
difference in the numbers.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from compiler.config import Setting, settings_from
from ir import jsontext
from ir.errors import ConfigError, Location

CONFIG = "config.json"


@attrs.frozen
class HFModel:
    """The zoo model a checkpoint folder is an instance of, and the settings that size it."""

    zoo: str
    settings: list[Setting]


class _Reader:
    """Looks up keys of one config.json (or an object standing for one) and reports problems at their line."""

    def __init__(self, path: Path, data: Mapping[str, Any] | None = None):
        self.path = path
        self.text = ""
        self.data = data
        if data is None:
            self._read()

    def _read(self) -> None:
        path = self.path
        try:
            self.text = path.read_text(encoding="utf-8")
            self.data = jsontext.loads(self.text)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read '{path}': {getattr(err, 'strerror', None) or err}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"invalid JSON: {err.msg}", Location(str(path), err.lineno, err.colno)) from None
        if not isinstance(self.data, dict):
            raise ConfigError("config.json must hold a JSON object", Location(str(path), 1, 1))

    def where(self, key: str) -> Location | None:
        match = re.search(rf'"{re.escape(key)}"\s*:', self.text)
        if match is None:
            return None
        line = self.text.count("\n", 0, match.start()) + 1
        return Location(str(self.path), line, match.start() - self.text.rfind("\n", 0, match.start()))

    def error(self, key: str, message: str) -> ConfigError:
        where = self.where(key)
        if where is None and not self.text:  # no file to point into: name the source
            return ConfigError(f"{self.path}: '{key}': {message}")
        context = self.text.splitlines()[where.line - 1] if where else None
        return ConfigError(f"'{key}': {message}", where, context)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def require(self, key: str, allowed: tuple, default: Any = None, why: str = "") -> None:
        value = self.get(key, default)
        if value not in allowed:
            shown = " or ".join(json.dumps(a) for a in allowed)
            raise self.error(key, f"{json.dumps(value)} is not supported (expected {shown}){why}")


def _gpt2(r: _Reader) -> dict[str, Any]:
    keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon",
            "initializer_range")
    values = {k: r.data[k] for k in keys if r.data.get(k) is not None}
    activation = r.get("activation_function", "gelu_new")
    approximations = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
    if not isinstance(activation, str) or activation not in approximations:
        r.require("activation_function", tuple(approximations))
    values["gelu_approximate"] = approximations[activation]
    r.require("tie_word_embeddings", (True,), True, "; the zoo's gpt2 ties lm_head to transformer.wte")
    r.require("scale_attn_weights", (True,), True)
    r.require("scale_attn_by_inverse_layer_idx", (False,), False)
    r.require("add_cross_attention", (False,), False)
    return values


def _llama(r: _Reader) -> dict[str, Any]:
    values = _llama_sizes(r)
    r.require("hidden_act", ("silu",), "silu")
    r.require("pretraining_tp", (1,), 1)
    return values


def _qwen2(r: _Reader) -> dict[str, Any]:
    """Qwen2: Llama with biases on the q, k and v projections (not o), no MLP biases."""
    values = _llama_sizes(r, attention_bias=True, attention_out_bias=False, mlp_bias=False)
    r.require("hidden_act", ("silu",), "silu")
    r.require("use_sliding_window", (False,), False, "; rduflow's Qwen2 attends over the whole sequence")
    layers = r.get("layer_types", [])
    if not isinstance(layers, list) or set(layers) - {"full_attention"}:
        raise r.error("layer_types", "only \"full_attention\" layers are supported")
    return values


def _mistral(r: _Reader) -> dict[str, Any]:
    """Mistral: Llama with sliding-window attention (`sliding_window`: null or 0 for none)."""
    values = _llama_sizes(r, attention_bias=False, mlp_bias=False)
    r.require("hidden_act", ("silu",), "silu")
    window = r.get("sliding_window", 0)
    if type(window) is not int or window < 0:
        raise r.error("sliding_window", f"{json.dumps(window)} is not a window size (null or a positive integer)")
    values["sliding_window"] = window
    return values


def _gemma(r: _Reader) -> dict[str, Any]:
    """Gemma: Llama with a GeGLU MLP, embeddings scaled by sqrt(hidden_size), RMSNorm by 1 + weight, tied head."""
    values = _llama_sizes(r, mlp_bias=False)
    values.setdefault("tie_word_embeddings", True)
    key = "hidden_activation" if r.get("hidden_activation") is not None else "hidden_act"
    r.require(key, ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
    values.update(hidden_act="gelu_pytorch_tanh", embedding_multiplier=float(values["hidden_size"]) ** 0.5,
                  norm_weight_offset=1.0)
    return values


def _llama_sizes(r: _Reader, **fixed: Any) -> dict[str, Any]:
    """The fields a Llama-family config.json shares, RoPE's included, with `fixed` fields set for the family."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "initializer_range",
            "tie_word_embeddings", "attention_bias", "mlp_bias")
    values = {k: r.data[k] for k in keys if r.data.get(k) is not None and k not in fixed}
    values.update(fixed, model_type=r.get("model_type"))
    values.setdefault("num_key_value_heads", r.get("num_attention_heads"))
    rope_key = "rope_parameters" if r.get("rope_parameters") else "rope_scaling"
    rope = r.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise r.error(rope_key, "expected a JSON object")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise r.error(rope_key, f"RoPE type {json.dumps(kind)} is not supported (only \"default\")")
    theta = rope.get("rope_theta", r.get("rope_theta"))
    if theta is not None:
        values["rope_theta"] = theta
    return {k: v for k, v in values.items() if v is not None}


#: model_type -> (zoo model, the config reader of that family)
MODEL_TYPES: dict[str, tuple[str, Callable[[_Reader], dict[str, Any]]]] = {
    "gpt2": ("gpt2", _gpt2), "llama": ("llama", _llama), "qwen2": ("llama", _qwen2),
    "mistral": ("llama", _mistral), "gemma": ("llama", _gemma)}
#: config.json values that count something (positive integers) ...
COUNTS = frozenset({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "hidden_size",
                    "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "max_position_embeddings"})
#: ... and that are scales (positive finite numbers)
SCALES = frozenset({"layer_norm_epsilon", "initializer_range", "rms_norm_eps", "rope_theta"})


def _check_ranges(reader: _Reader, values: dict[str, Any]) -> None:
    """Counts are positive integers, scales positive finite numbers (a value of another type is left
    to the model's config schema, which names the type it expects)."""
    for key, value in values.items():
        if key in COUNTS and type(value) is int and value < 1:
            raise reader.error(key, f"{json.dumps(value)} is not a positive integer")
        if key in SCALES and type(value) in (int, float) and (not math.isfinite(value) or value <= 0):
            raise reader.error(key, f"{json.dumps(value)} is not a positive finite number")


def read_hf_config(folder: str | Path) -> HFModel:
    """The zoo model and settings for the Hugging Face checkpoint in `folder`."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ConfigError(f"'{folder}' is not a Hugging Face checkpoint folder: it has no {CONFIG}")
    return _model(_Reader(path))


def hf_model(config: Mapping[str, Any], source: str | Path) -> HFModel:
    """The zoo model and settings for a `config.json` object taken from `source` (e.g. a GGUF file's metadata)."""
    return _model(_Reader(Path(source), dict(config)))


def _model(reader: _Reader) -> HFModel:
    model_type = reader.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        known = ", ".join(MODEL_TYPES)
        raise reader.error("model_type", f"unsupported model type {json.dumps(model_type)} (supported: {known})")
    zoo, read = MODEL_TYPES[model_type]
    values = read(reader)
    _check_ranges(reader, values)
    locations = {k: reader.where(k) for k in values}
    return HFModel(zoo, settings_from(values, str(reader.path), locations, reader.text or None))
