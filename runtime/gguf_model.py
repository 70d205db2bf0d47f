"""A GGUF file as a Hugging Face checkpoint: its config, its tensors by HF names, its tokenizer.

llama.cpp converts a Hugging Face checkpoint into GGUF by renaming its tensors,
moving its `config.json` into `<arch>.*` metadata and its tokenizer into
`tokenizer.*` metadata. This module undoes that for the architectures rduflow's
zoo runs, so that a `.gguf` file is a model and a checkpoint wherever a folder is:

* `hf_config(file)`: the `config.json` object (the compiler picks the zoo model from
  it, as from a folder's);
* `hf_tensors(file)`: the tensors under their Hugging Face names, dequantized when
  read; Llama's q/k projections un-permuted (llama.cpp reorders their rows for its
  rotary layout; the inverse is the one transformers' GGUF loader applies); Gemma's
  norm weights less the 1 llama.cpp adds to them;
* `tokenizer_config(file)` and `gguf_tokenizer(file)`: the special tokens and chat
  template (`tokenizer.chat_template`), and a `tokenizers` byte-level BPE built from
  `tokenizer.ggml.*`. Only the `gpt2` tokenizer model (byte-level BPE) is built, with
  the pre-tokenizers listed in `PRE_TOKENIZERS`; SentencePiece (`llama`) and others are
  refused by name.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ir.dtypes import DType, as_blocks
from ir.errors import CheckpointError
from runtime.gguf import GGUFFile, read_gguf
from runtime.tokenizer import HFTokenizer

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

# llama.cpp's pre-tokenizer names -> a pre-tokenizer of `tokenizers` (as the model's tokenizer.json has it)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"gpt2": "gpt2", "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
                  "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
#: tokenizer.ggml.token_type values
_CONTROL, _USER_DEFINED = 3, 4
#: tokenizer_config.json key -> the GGUF key of its token id
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}


def is_gguf(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by its suffix)."""
    return Path(path).suffix == ".gguf"


def _error(file: GGUFFile, message: str) -> CheckpointError:
    return CheckpointError(f"{file.path}: {message}")


def _get(file: GGUFFile, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A metadata value of the given Python type; `default` when absent (an error if none is given)."""
    if key not in file.metadata:
        if default is ...:
            raise _error(file, f"metadata '{key}' is missing")
        return default
    value = file.metadata[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise _error(file, f"metadata '{key}' is {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def architecture(file: GGUFFile) -> str:
    arch = _get(file, "general.architecture", str)
    if arch not in ARCHITECTURES:
        raise _error(file, f"architecture '{arch}' is not supported (supported: {', '.join(ARCHITECTURES)})")
    return arch


def _float(value: float) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def hf_config(file: GGUFFile) -> dict[str, Any]:
    """The Hugging Face `config.json` object of the model in `file`."""
    arch = architecture(file)

    def get(key: str, kind: type | tuple[type, ...] = int, default: Any = ...) -> Any:
        return _get(file, f"{arch}.{key}", kind, default)

    if "token_embd.weight" not in file.tensors:
        raise _error(file, "it has no 'token_embd.weight' tensor")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv", int, heads)
    if heads < 1 or kv_heads < 1:
        raise _error(file, f"'{arch}.attention.head_count' ({heads}) and '_kv' ({kv_heads}) must be positive")
    hidden = get("embedding_length")
    head_dim = get("attention.key_length", int, hidden // heads)
    if get("attention.value_length", int, head_dim) != head_dim:
        raise _error(file, f"'{arch}.attention.value_length' differs from the key length: not supported")
    if get("rope.dimension_count", int, head_dim) != head_dim:
        raise _error(file, f"'{arch}.rope.dimension_count' {get('rope.dimension_count')} is not the head "
                           f"size {head_dim}: partial rotary embeddings are not supported")
    scaling = get("rope.scaling.type", str, "none")
    if scaling != "none":
        raise _error(file, f"'{arch}.rope.scaling.type' {scaling!r} is not supported (only 'none')")
    if "rope_freqs.weight" in file.tensors:
        raise _error(file, "tensor 'rope_freqs.weight' (Llama 3.1's RoPE frequency scaling) is not supported")
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
        value = _get(file, f"tokenizer.ggml.{key.replace('pad_', 'padding_')}", int, None)
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
                raise _error(self.file, f"tensor '{name}' has {array.shape[0]} rows, not a multiple of "
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


# --- the tokenizer ------------------------------------------------------------------------------
def _tokens(file: GGUFFile) -> list[str]:
    tokens = _get(file, "tokenizer.ggml.tokens", list)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise _error(file, "metadata 'tokenizer.ggml.tokens' must be a non-empty list of strings")
    return tokens


def has_tokenizer(path: str | Path) -> bool:
    """Whether the GGUF file at `path` carries a tokenizer (`tokenizer.ggml.model`)."""
    return "tokenizer.ggml.model" in read_gguf(path).metadata


def tokenizer_config(path: str | Path) -> dict[str, Any]:
    """`tokenizer_config.json` of the GGUF file's tokenizer: its special tokens and chat template."""
    file = read_gguf(path)
    tokens = _tokens(file)
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, key in _SPECIAL_IDS.items():
        index = _get(file, f"tokenizer.ggml.{key}", int, None)
        if index is None:
            continue
        if not 0 <= index < len(tokens):
            raise _error(file, f"metadata 'tokenizer.ggml.{key}' is {index}, outside the "
                               f"{len(tokens)}-token vocabulary")
        config[name] = tokens[index]
    template = _get(file, "tokenizer.chat_template", str, None)
    if template is not None:
        config["chat_template"] = template
    return config


def _pre_tokenizer(file: GGUFFile):
    from tokenizers import Regex, pre_tokenizers

    pre = _get(file, "tokenizer.ggml.pre", str, "default")
    if pre not in PRE_TOKENIZERS:
        raise _error(file, f"pre-tokenizer 'tokenizer.ggml.pre' = '{pre}' is not supported "
                           f"(supported: {', '.join(PRE_TOKENIZERS)})")
    split = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits+gpt2"))
    if split == "gpt2":
        return byte_level
    if split == "digits+gpt2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def gguf_tokenizer(path: str | Path) -> HFTokenizer:
    """The byte-level BPE tokenizer of the GGUF file at `path`, its control tokens special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    file = read_gguf(path)
    kind = _get(file, "tokenizer.ggml.model", str)
    if kind != "gpt2":
        raise _error(file, f"tokenizer model 'tokenizer.ggml.model' = '{kind}' is not supported "
                           "(only 'gpt2', byte-level BPE)")
    tokens = _tokens(file)
    merges = _get(file, "tokenizer.ggml.merges", list)
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else () for m in merges]
    bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
    if bad is not None:
        raise _error(file, f"'tokenizer.ggml.merges' holds {bad!r}, not two tokens separated by a space")
    types = _get(file, "tokenizer.ggml.token_type", list, [1] * len(tokens))
    if len(types) != len(tokens):
        raise _error(file, f"'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
    try:
        backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs))
    except Exception as err:  # the library raises plain Exception for a merge of unknown tokens
        raise _error(file, f"its BPE vocabulary and merges do not fit together ({err})") from None
    backend.pre_tokenizer = _pre_tokenizer(file)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
    backend.add_tokens([AddedToken(t, normalized=False) for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
    return HFTokenizer(backend, tokenizer_config(path), str(path))
