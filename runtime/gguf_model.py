"""A GGUF file as a Hugging Face checkpoint: its config and its tensors by HF names.

llama.cpp converts a Hugging Face checkpoint into GGUF by renaming its tensors,
moving its `config.json` into `<arch>.*` metadata and its tokenizer into
`tokenizer.*` metadata. This module undoes that for the architectures rduflow's
zoo runs, so that a `.gguf` file is a model and a checkpoint wherever a folder is:

* `hf_config(file)`: the `config.json` object (the compiler picks the zoo model from
  it, as from a folder's);
* `hf_tensors(file)`: the tensors under their Hugging Face names, dequantized when
  read; Llama's q/k projections un-permuted (llama.cpp reorders their rows for its
  rotary layout; the inverse is the one transformers' GGUF loader applies); Gemma's
  norm weights less the 1 llama.cpp adds to them.

Its tokenizer (the `tokenizer.*` metadata) is `runtime.gguf_tokenizer`'s, loaded as any
other by `runtime.tokenizer.load_tokenizer`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ir.dtypes import DType, as_blocks
from runtime.gguf import GGUFFile, read_gguf

#: GGUF architecture -> the Hugging Face model_type it came from (Mistral's GGUFs say "llama")
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma"}
#: config.json's MLP activation key and value per architecture
_ACTIVATIONS = {"llama": ("hidden_act", "silu"), "qwen2": ("hidden_act", "silu"),
                "gemma": ("hidden_activation", "gelu_pytorch_tanh")}
#: GGUF tensor name (without `blk.N.` and `.weight`/`.bias`) -> Hugging Face module name
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}

def is_gguf(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by its suffix)."""
    return Path(path).suffix == ".gguf"


def architecture(file: GGUFFile) -> str:
    arch = file.get("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise file.error(f"architecture '{arch}' is not supported (supported: {', '.join(ARCHITECTURES)})")
    return arch


def _float(value: float) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def hf_config(file: GGUFFile) -> dict[str, Any]:
    """The Hugging Face `config.json` object of the model in `file`."""
    arch = architecture(file)

    def get(key: str, kind: type | tuple[type, ...] = int, default: Any = ...) -> Any:
        return file.get(f"{arch}.{key}", kind, default)

    if "token_embd.weight" not in file.tensors:
        raise file.error("it has no 'token_embd.weight' tensor")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv", int, heads)
    if heads < 1 or kv_heads < 1:
        raise file.error(f"'{arch}.attention.head_count' ({heads}) and '_kv' ({kv_heads}) must be positive")
    hidden = get("embedding_length")
    head_dim = get("attention.key_length", int, hidden // heads)
    if get("attention.value_length", int, head_dim) != head_dim:
        raise file.error(f"'{arch}.attention.value_length' differs from the key length: not supported")
    if get("rope.dimension_count", int, head_dim) != head_dim:
        raise file.error(f"'{arch}.rope.dimension_count' {get('rope.dimension_count')} is not the head "
                         f"size {head_dim}: partial rotary embeddings are not supported")
    scaling = get("rope.scaling.type", str, "none")
    if scaling != "none":
        raise file.error(f"'{arch}.rope.scaling.type' {scaling!r} is not supported (only 'none')")
    if "rope_freqs.weight" in file.tensors:
        raise file.error("tensor 'rope_freqs.weight' (Llama 3.1's RoPE frequency scaling) is not supported")
    config = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": file.tensors["token_embd.weight"].shape[0],
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": _float(get("attention.layer_norm_rms_epsilon", float)),
        "rope_theta": _float(get("rope.freq_base", float, 10000.0)),
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "attention_bias": "blk.0.attn_q.bias" in file.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in file.tensors,
        _ACTIVATIONS[arch][0]: _ACTIVATIONS[arch][1],
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = file.get(f"tokenizer.ggml.{key.replace('pad_', 'padding_')}", int, None)
        if value is not None:
            config[key] = value
    return config


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{suffix}"
    return None


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a q/k projection's rows (weight or bias) for `heads` heads."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class HFTensors(Mapping):
    """The tensors of a GGUF file by Hugging Face name, each dequantized (and un-permuted) when read."""

    def __init__(self, file: GGUFFile):
        self.file = file
        config = hf_config(file)
        self._arch = architecture(file)
        self._heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
        self._names = {}
        for name in file.tensors:
            hf = hf_name(name)
            self._names[hf or name] = name  # a tensor of no known role keeps its GGUF name

    def __getitem__(self, key: str) -> np.ndarray:
        name = self._names[key]
        array = self.file.tensor(name)
        if self._arch == "gemma" and name.split(".")[-2].endswith("norm"):
            return array - np.float32(1.0)
        return self._rows_in_order(name, array)

    def blocks(self, key: str, dtype: DType) -> np.ndarray | None:
        """The tensor's blocks as the file stores them (no dequantizing), if it stores them as `dtype`
        (a block-quantized type); q/k rows un-permuted as when read."""
        name = self._names[key]
        info = self.file.tensors[name]
        if info.type.name.lower() != dtype.value:
            return None
        rows = as_blocks(self.file.raw(name).reshape(*info.shape[:-1], -1), dtype)
        return self._rows_in_order(name, rows)

    def _rows_in_order(self, name: str, array: np.ndarray) -> np.ndarray:
        kind = name.split(".")[-2]
        if self._arch == "llama" and kind in self._heads and name.startswith("blk."):
            heads = self._heads[kind]
            if array.shape[0] % (2 * heads):
                raise self.file.error(f"tensor '{name}' has {array.shape[0]} rows, not a multiple of "
                                      f"2 x {heads} heads")
            array = unpermute(array, heads)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def hf_tensors(path: str | Path) -> HFTensors:
    """The tensors of the GGUF file at `path` by Hugging Face name (dequantized when read)."""
    return HFTensors(read_gguf(path))
