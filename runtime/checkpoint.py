"""Checkpoints in Hugging Face layout: `model.safetensors` (or a sharded index) in a folder.

`load_hf_checkpoint(folder, expected)` reads the tensors a program's params need,
by name, from a folder or a GGUF file (its tensors under their Hugging Face names,
see `runtime.gguf_model`): GPT-2 keys may lack the `transformer.` prefix (and Llama's the `model.`
prefix), a tied `lm_head.weight` is ignored when the program has no such param,
and floating-point tensors are converted to the param's dtype. Missing tensors
and shape mismatches raise `CheckpointError`; unexpected ones are listed.

`save_checkpoint(folder, weights, config, ...)` writes a checkpoint atomically:
`config.json` (`model_config`: Hugging Face format for the gpt2 and llama
families, the latter's qwen2, mistral and gemma members in their own format), `model.safetensors` with Hugging Face names (the zoo's params carry
them; GPT-2 has no `lm_head.weight` of its own, as transformers saves it), and for
resuming `optimizer.safetensors` (optimizer state by param name) and
`trainer_state.json`. `list_checkpoints` / `prune_checkpoints` / `remove_partial`
manage the `checkpoint-<step>` folders of a save directory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import attrs
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from ir import jsontext
from ir.dtypes import DType, convert
from ir.errors import CheckpointError
from ir.files import honour_umask
from ir.types import TensorType
from runtime.gguf import read_gguf
from runtime.gguf_model import hf_config, hf_tensors, is_gguf

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: prefixes a checkpoint may leave off (a base model saved without its LM head wrapper)
OPTIONAL_PREFIXES = ("transformer.", "model.")
#: a checkpoint tensor dropped silently when the program has no param of that name (tied)
TIED = "lm_head.weight"


@attrs.frozen
class LoadedCheckpoint:
    """The tensors by program param name, and checkpoint tensors nothing asked for."""

    tensors: dict[str, np.ndarray]
    unexpected: tuple[str, ...]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: one file, or the shards of an index; or a
    GGUF file itself, once its header is valid."""
    if is_gguf(folder) and not folder.is_dir():
        read_gguf(folder)
        return [folder]
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' does not exist")
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / INDEX
    if not index.is_file():
        raise CheckpointError(f"'{folder}' has neither {WEIGHTS} nor {INDEX}")
    try:
        weight_map = jsontext.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
    return [folder / shard for shard in shards]


def read_tensors(folder: str | Path) -> Mapping[str, np.ndarray]:
    """Every tensor of the checkpoint in `folder`, by its stored name (a GGUF file's: by Hugging Face
    name, each read when asked for)."""
    if is_gguf(folder) and not Path(folder).is_dir():
        return hf_tensors(folder)
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(Path(folder)):
        tensors.update(_load(path))
    return tensors


#: the safetensors dtypes rduflow reads (not F8_E4M3, F8_E5M2, complex, ...)
READABLE = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})


def _load(path: Path) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file; CheckpointError for an unreadable file or a dtype rduflow does not read."""
    try:
        with safe_open(path, framework="np") as handle:
            dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
        odd = next((name for name, dtype in sorted(dtypes.items()) if dtype not in READABLE), None)
        if odd is not None:
            raise CheckpointError(f"cannot read {path}: tensor '{odd}' has dtype {dtypes[odd]}, which rduflow does "
                                  f"not read (it reads {', '.join(sorted(READABLE))})")
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


def _program_name(key: str, expected: Mapping[str, TensorType]) -> str | None:
    if key in expected:
        return key
    return next((p + key for p in OPTIONAL_PREFIXES if p + key in expected), None)


def _convert(name: str, array: np.ndarray, want: TensorType) -> np.ndarray:
    if tuple(array.shape) != want.shape:
        raise CheckpointError(f"tensor '{name}': the checkpoint has shape {list(array.shape)}, "
                              f"the model expects {list(want.shape)}")
    is_float = np.issubdtype(array.dtype, np.floating) or array.dtype == DType.bf16.np  # ml_dtypes' bf16 too
    same_kind = is_float == (want.dtype.is_float or want.dtype.is_blocked)
    if not same_kind:
        raise CheckpointError(f"tensor '{name}': the checkpoint has dtype {array.dtype}, the model expects {want}")
    if want.dtype.is_blocked:
        return convert(array, want.dtype)
    return np.asarray(array, dtype=want.dtype.np, order="C")  # ascontiguousarray would make a scalar 1-d


def _stored_blocks(tensors: Mapping[str, np.ndarray], key: str, want: TensorType) -> np.ndarray | None:
    """A GGUF file's tensor as its blocks, unchanged, when it stores it in the block type of the param."""
    blocks = getattr(tensors, "blocks", None)
    if not want.dtype.is_blocked or blocks is None:
        return None
    stored = blocks(key, want.dtype)
    return stored if stored is not None and stored.shape == want.dtype.storage_shape(want.shape) else None


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_hf_checkpoint(folder: str | Path, expected: Mapping[str, TensorType],
                       strict: bool = False) -> LoadedCheckpoint:
    """The tensors for the params in `expected` (name -> type); `strict` also refuses unexpected ones."""
    found: dict[str, np.ndarray] = {}
    unexpected = []
    tensors = read_tensors(folder)
    for key in sorted(tensors):
        name = _program_name(key, expected)
        if name is None:
            if key != TIED:
                unexpected.append(key)
            continue
        if name in found:
            raise CheckpointError(f"tensor '{name}' appears twice in '{folder}' (with and without a prefix)")
        found[name] = _stored_blocks(tensors, key, expected[name])
        if found[name] is None:
            found[name] = _convert(key, tensors[key], expected[name])
    missing = [name for name in expected if name not in found]
    if missing:
        raise CheckpointError(f"checkpoint '{folder}' lacks {len(missing)} tensor(s) the model needs: "
                              f"{_listing(missing)}")
    if strict and unexpected:
        raise CheckpointError(f"checkpoint '{folder}' has {len(unexpected)} tensor(s) the model does not use: "
                              f"{_listing(unexpected)}")
    return LoadedCheckpoint(found, tuple(unexpected))


# --- saving ------------------------------------------------------------------------------
CONFIG = "config.json"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
#: groups of files a checkpoint carries over from the folders it came from (tokenizer; generation settings)
COMPANION_FILES = (("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"),
                   ("generation_config.json",))

#: zoo config field -> Hugging Face config.json key, per model family
_LLAMA_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "initializer_range",
                "tie_word_embeddings")
_HF_KEYS: dict[str, dict[str, str]] = {
    "gpt2": {k: k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                            "layer_norm_epsilon", "initializer_range")},
    "llama": {k: k for k in (*_LLAMA_SIZES, "attention_bias", "mlp_bias")},
    "qwen2": {k: k for k in _LLAMA_SIZES},
    "mistral": {k: k for k in (*_LLAMA_SIZES, "sliding_window")},
    "gemma": {k: k for k in _LLAMA_SIZES},
}
_HF_FIXED: dict[str, dict[str, object]] = {
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "tie_word_embeddings": True,
             "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "scale_attn_weights": True,
             "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False, "dtype": "float32"},
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "attention_dropout": 0.0, "pretraining_tp": 1, "dtype": "float32"},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
              "attention_dropout": 0.0, "use_sliding_window": False, "dtype": "float32"},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
                "attention_dropout": 0.0, "dtype": "float32"},
    "gemma": {"architectures": ["GemmaForCausalLM"], "model_type": "gemma",
              "hidden_activation": "gelu_pytorch_tanh", "attention_dropout": 0.0, "dtype": "float32"},
}
_GELU = {"tanh": "gelu_new", "none": "gelu"}


def model_config(model: str, options: Mapping[str, object], base: Mapping[str, object] | None = None,
                 eos_id: int | None = None) -> dict[str, object]:
    """`config.json` for a checkpoint of `model` whose config fields are `options` (the PEF's header).

    For `gpt2` and the `llama` family (written as its `model_type`: llama, qwen2, mistral or
    gemma) this is a Hugging Face config that transformers loads; `base`
    (the config.json training started from) keeps its other keys (token ids, versions).
    Any other model gets `{"model_type": model, <its config fields>}`.
    """
    if model == "llama":  # the zoo's llama model is the whole family: the family's own layout
        model = str(options.get("model_type", model))
    if model not in _HF_KEYS:
        return {"model_type": model, **{k: options[k] for k in sorted(options)}}
    config: dict[str, object] = dict(base or {})
    if eos_id is not None and not base:
        config.update(bos_token_id=eos_id, eos_token_id=eos_id)
    config.update(_HF_FIXED[model])
    config.update({hf: options[zoo] for zoo, hf in _HF_KEYS[model].items() if zoo in options})
    if model == "gpt2" and "gelu_approximate" in options:
        config["activation_function"] = _GELU[str(options["gelu_approximate"])]
    if model == "mistral" and config.get("sliding_window") == 0:
        config["sliding_window"] = None
    if model != "gpt2" and "rope_theta" in options:
        rope = config.get("rope_parameters")
        if isinstance(rope, dict):
            config["rope_parameters"] = {**rope, "rope_theta": options["rope_theta"]}
        else:
            config["rope_theta"] = options["rope_theta"]
    return dict(sorted(config.items()))


def source_config(checkpoint: Path) -> dict[str, object] | None:
    """The Hugging Face config a checkpoint came with: its folder's config.json, a GGUF file's metadata."""
    if is_gguf(checkpoint) and checkpoint.is_file():
        return hf_config(read_gguf(checkpoint))
    path = checkpoint / CONFIG
    if not path.is_file():
        return None
    try:
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    return data if isinstance(data, dict) else {}


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(save_dir: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints `checkpoint-<step>` in `save_dir`, by step (partial writes never appear)."""
    found = []
    folder = Path(save_dir)
    if not folder.is_dir():
        return []
    for path in folder.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and path.is_dir():
            found.append((int(suffix), path))
    return sorted(found)


def save_checkpoint(folder: str | Path, weights: Mapping[str, np.ndarray], config: Mapping[str, object],
                    optimizer_state: Mapping[str, np.ndarray] | None = None,
                    trainer_state: Mapping[str, object] | None = None,
                    companions: Sequence[Path] = ()) -> Path:
    """Write a checkpoint folder atomically: built beside it, then renamed into place.

    It holds `config.json`, `model.safetensors` (`weights` by their Hugging Face names),
    and, when given, `optimizer.safetensors`, `trainer_state.json` and the
    `COMPANION_FILES` of `companions` (each group from the first folder holding any of its files).
    """
    target = Path(folder)
    stage = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        _write_tensors(stage / WEIGHTS, weights)
        _write_json(stage / CONFIG, config)
        if optimizer_state is not None:
            _write_tensors(stage / OPTIMIZER, optimizer_state)
        if trainer_state is not None:
            _write_json(stage / TRAINER_STATE, trainer_state)
        for group in COMPANION_FILES:
            _copy_group(group, companions, stage)
        _swap_into_place(stage, target)
    except (OSError, SafetensorError, MemoryError) as err:  # a full disk, a quota, no memory: nothing is left
        shutil.rmtree(stage, ignore_errors=True)
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise CheckpointError(f"cannot write checkpoint {target}: {reason}") from None
    return target


def remove_partial(save_dir: str | Path) -> list[Path]:
    """Delete what interrupted writes left in `save_dir` (staging and replaced folders); return it."""
    folder = Path(save_dir)
    leftovers = sorted(p for pattern in (f".{CHECKPOINT_PREFIX}*.tmp-*", f".{CHECKPOINT_PREFIX}*.old-*")
                       for p in folder.glob(pattern)) if folder.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def prune_checkpoints(save_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest checkpoints of `save_dir`; return what was deleted."""
    doomed = [path for _, path in list_checkpoints(save_dir)[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def read_trainer_state(folder: str | Path) -> dict:
    """A checkpoint's `trainer_state.json`."""
    path = Path(folder) / TRAINER_STATE
    try:
        state = jsontext.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    step = state.get("step")
    if type(step) is not int or step < 0:
        shown = "missing" if "step" not in state else json.dumps(step)
        raise CheckpointError(f"{path}: 'step' must be a non-negative integer, got {shown}")
    return state


def read_optimizer_state(folder: str | Path, expected: Mapping[str, TensorType]) -> dict[str, np.ndarray]:
    """A checkpoint's optimizer state, every tensor of `expected` present and of its shape."""
    path = Path(folder) / OPTIMIZER
    tensors = _load(path)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} optimizer tensor(s) the program needs: "
                              f"{_listing(missing)} (was it saved with another optimizer?)")
    return {name: _convert(name, tensors[name], want) for name, want in expected.items()}


def _copy_group(names: Sequence[str], sources: Sequence[Path], stage: Path) -> None:
    source = next((s for s in sources if any((s / n).is_file() for n in names)), None)
    for name in names if source is not None else ():
        if (source / name).is_file():
            shutil.copyfile(source / name, stage / name)


def _write_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    save_file({name: np.asarray(tensors[name], order="C") for name in sorted(tensors)}, path,
              metadata={"format": "pt"})
    honour_umask(path)  # the safetensors writer makes it 0600
    _fsync(path)


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _swap_into_place(stage: Path, target: Path) -> None:
    """Rename `stage` to `target`; an existing `target` is replaced (moved aside, then deleted)."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.rename(target, old)
    os.rename(stage, target)
    shutil.rmtree(old, ignore_errors=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
