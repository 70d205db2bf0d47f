"""A Hugging Face checkpoint's `config.json` as a zoo model and config settings.

`model_type` picks the zoo model (`gpt2`, `llama`); its sizes become settings of
that model's fields. A setting the zoo model cannot honour (another activation, a
RoPE scaling, untied GPT-2 embeddings) is an error naming the key, not a silent
difference in the numbers.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

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
    """Looks up keys of one config.json and reports problems at their line."""

    def __init__(self, path: Path):
        self.path = path
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
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "initializer_range",
            "tie_word_embeddings", "attention_bias", "mlp_bias")
    values = {k: r.data[k] for k in keys if r.data.get(k) is not None}
    values.setdefault("num_key_value_heads", r.get("num_attention_heads"))
    r.require("hidden_act", ("silu",), "silu")
    r.require("pretraining_tp", (1,), 1)
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


MODEL_TYPES: dict[str, Callable[[_Reader], dict[str, Any]]] = {"gpt2": _gpt2, "llama": _llama}
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
    reader = _Reader(path)
    model_type = reader.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        known = ", ".join(MODEL_TYPES)
        raise reader.error("model_type", f"unsupported model type {json.dumps(model_type)} (supported: {known})")
    values = MODEL_TYPES[model_type](reader)
    _check_ranges(reader, values)
    locations = {k: reader.where(k) for k in values}
    return HFModel(model_type, settings_from(values, str(path), locations, reader.text))
