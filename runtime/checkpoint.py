"""Checkpoints in Hugging Face layout: `model.safetensors` (or a sharded index) in a folder.

`load_hf_checkpoint(folder, expected)` reads the tensors a program's params need,
by name: GPT-2 keys may lack the `transformer.` prefix (and Llama's the `model.`
prefix), a tied `lm_head.weight` is ignored when the program has no such param,
and floating-point tensors are converted to the param's dtype. Missing tensors
and shape mismatches raise `CheckpointError`; unexpected ones are listed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import attrs
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ir.errors import CheckpointError
from ir.types import TensorType

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
    """The safetensors files of a checkpoint folder: one file, or the shards of an index."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' does not exist")
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / INDEX
    if not index.is_file():
        raise CheckpointError(f"'{folder}' has neither {WEIGHTS} nor {INDEX}")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
    return [folder / shard for shard in shards]


def read_tensors(folder: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in `folder`, by its stored name."""
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(Path(folder)):
        try:
            tensors.update(load_file(path))
        except (OSError, SafetensorError, ValueError) as err:
            raise CheckpointError(f"cannot read {path}: {err}") from None
    return tensors


def _program_name(key: str, expected: Mapping[str, TensorType]) -> str | None:
    if key in expected:
        return key
    return next((p + key for p in OPTIONAL_PREFIXES if p + key in expected), None)


def _convert(name: str, array: np.ndarray, want: TensorType) -> np.ndarray:
    if tuple(array.shape) != want.shape:
        raise CheckpointError(f"tensor '{name}': the checkpoint has shape {list(array.shape)}, "
                              f"the model expects {list(want.shape)}")
    same_kind = np.issubdtype(array.dtype, np.floating) == want.dtype.is_float
    if not same_kind:
        raise CheckpointError(f"tensor '{name}': the checkpoint has dtype {array.dtype}, the model expects {want}")
    return np.ascontiguousarray(array, dtype=want.dtype.np)


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_hf_checkpoint(folder: str | Path, expected: Mapping[str, TensorType],
                       strict: bool = False) -> LoadedCheckpoint:
    """The tensors for the params in `expected` (name -> type); `strict` also refuses unexpected ones."""
    found: dict[str, np.ndarray] = {}
    unexpected = []
    for key, array in sorted(read_tensors(folder).items()):
        name = _program_name(key, expected)
        if name is None:
            if key != TIED:
                unexpected.append(key)
            continue
        if name in found:
            raise CheckpointError(f"tensor '{name}' appears twice in '{folder}' (with and without a prefix)")
        found[name] = _convert(key, array, expected[name])
    missing = [name for name in expected if name not in found]
    if missing:
        raise CheckpointError(f"checkpoint '{folder}' lacks {len(missing)} tensor(s) the model needs: "
                              f"{_listing(missing)}")
    if strict and unexpected:
        raise CheckpointError(f"checkpoint '{folder}' has {len(unexpected)} tensor(s) the model does not use: "
                              f"{_listing(unexpected)}")
    return LoadedCheckpoint(found, tuple(unexpected))
