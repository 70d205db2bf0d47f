"""GGUF files for the tests, written by the `gguf` package's GGUFWriter as llama.cpp's converter would.

`write_gguf` writes tensors (float arrays, or raw quantized bytes with their type) and
metadata; `llama_to_gguf` converts a Hugging Face Llama folder the way
`convert_hf_to_gguf.py` does (its tensor names from the package's own name map, q/k
rows permuted for llama.cpp's rotary layout, config keys as `llama.*` metadata);
`tokenizer_metadata` turns a `tokenizers` byte-level BPE into `tokenizer.ggml.*` keys;
`train_bpe` makes such a BPE; `chat_model_gguf` writes a tiny random Llama with a tokenizer
and a chat template, a stand-in for an instruct model's GGUF (such as SmolLM2's).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import gguf
import numpy as np
from safetensors.numpy import load_file

Q = gguf.GGMLQuantizationType
ROOT = Path(__file__).resolve().parents[2]
#: the special tokens of SmolLM2's tokenizer that its chat template uses
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_gguf(path: Path, tensors: Mapping[str, np.ndarray | tuple[np.ndarray, Q]],
               metadata: Mapping[str, Any] = (), arch: str = "llama") -> Path:
    """A GGUF file: each tensor a float32 array, or (raw bytes [rows, bytes per row], type)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in dict(metadata).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    for name, value in tensors.items():
        if isinstance(value, tuple):
            writer.add_tensor(name, value[0], raw_dtype=value[1])
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_blocks(rng: np.random.Generator, kind: Q, rows: int, blocks: int) -> np.ndarray:
    """Random stored bytes of `kind` for [rows, blocks * block size] values, every float16/32 field finite
    (no byte has bit 0x40 or 0x04 set, so no float16, bfloat16 or float32 exponent is all ones)."""
    size = gguf.GGML_QUANT_SIZES[kind][1]
    return (rng.integers(0, 256, (rows, blocks * size), dtype=np.uint8) & 0x3B).astype(np.uint8)


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of a q/k projection's rows (`LlamaModel.permute` of convert_hf_to_gguf.py)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


#: Hugging Face model_type -> GGUF architecture, as convert_hf_to_gguf.py names them
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma": gguf.MODEL_ARCH.GEMMA}


def llama_to_gguf(folder: Path, path: Path, kind: Q = Q.F32, extra: Mapping[str, Any] = ()) -> Path:
    """The Hugging Face Llama-family checkpoint in `folder` (llama, qwen2 or gemma) as a GGUF file, 2-d
    weights stored as `kind`: Llama's q/k rows permuted, Gemma's norm weights plus 1, as llama.cpp does."""
    config = json.loads((folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    family = config["model_type"]
    arch = gguf.MODEL_ARCH_NAMES[ARCHS[family]]
    names = gguf.get_tensor_name_map(ARCHS[family], config["num_hidden_layers"])
    tensors: dict[str, Any] = {}
    for hf, array in sorted(load_file(folder / "model.safetensors").items()):
        if family == "llama" and ".q_proj." in hf:
            array = permute(array, heads)
        elif family == "llama" and ".k_proj." in hf:
            array = permute(array, kv_heads)
        elif family == "gemma" and hf.endswith("norm.weight"):
            array = array + np.float32(1.0)
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        stored = array if array.ndim == 1 or kind == Q.F32 else (gguf.quants.quantize(array, kind), kind)
        tensors[name] = stored
    rope = config.get("rope_parameters") or {}
    metadata = {f"{arch}.{key}": value for key, value in {
        "block_count": config["num_hidden_layers"], "context_length": config["max_position_embeddings"],
        "embedding_length": config["hidden_size"], "feed_forward_length": config["intermediate_size"],
        "attention.head_count": heads, "attention.head_count_kv": kv_heads,
        "attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        "rope.freq_base": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "rope.dimension_count": config["hidden_size"] // heads}.items()}
    metadata.update({"tokenizer.ggml.bos_token_id": config["bos_token_id"],
                     "tokenizer.ggml.eos_token_id": config["eos_token_id"], **dict(extra)})
    return write_gguf(path, tensors, metadata, arch)


def tokenizer_metadata(tokenizer_json: Path, pre: str, eos: str) -> dict[str, Any]:
    """`tokenizer.ggml.*` keys of a byte-level BPE `tokenizer.json`, as llama.cpp's converter writes them."""
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {a["content"] for a in data["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3 if t in special else 1 for t in tokens],
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": vocab[eos]}


def train_bpe(path: Path, vocab_size: int = 600) -> Path:
    """A byte-level BPE `tokenizer.json` with Digits + ByteLevel pre-tokenization (SmolLM2's), trained on
    the bundled corpora, `CHAT_TOKENS` its first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    data = ROOT / "tools" / "data"
    lines = (data / "midsummer.txt").read_text().splitlines() + (data / "rduflow_qa.jsonl").read_text().splitlines()
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.save(str(path))
    return path


def chat_model_gguf(path: Path, tokenizer_json: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random Llama (F32, tied head) with the BPE of `tokenizer_json` and SmolLM2's chat
    template: the shape of an instruct model's GGUF, small enough for any test."""
    meta = tokenizer_metadata(tokenizer_json, "smollm", "<|im_end|>")
    vocab, hidden, ff, layers = len(meta["tokenizer.ggml.tokens"]), 32, 64, 2
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"token_embd.weight": normal(vocab, hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        tensors.update({f"blk.{i}.attn_norm.weight": np.ones(hidden, np.float32),
                        f"blk.{i}.ffn_norm.weight": np.ones(hidden, np.float32),
                        f"blk.{i}.attn_q.weight": normal(hidden, hidden), f"blk.{i}.attn_k.weight": normal(16, hidden),
                        f"blk.{i}.attn_v.weight": normal(16, hidden), f"blk.{i}.attn_output.weight": normal(hidden, hidden),
                        f"blk.{i}.ffn_gate.weight": normal(ff, hidden), f"blk.{i}.ffn_up.weight": normal(ff, hidden),
                        f"blk.{i}.ffn_down.weight": normal(hidden, ff)})
    template = (ROOT / "tests" / "fixtures" / "chat" / "smollm2.jinja").read_text()
    meta.update({"llama.block_count": layers, "llama.context_length": 512, "llama.embedding_length": hidden,
                 "llama.feed_forward_length": ff, "llama.attention.head_count": 4,
                 "llama.attention.head_count_kv": 2, "llama.attention.layer_norm_rms_epsilon": 1e-5,
                 "llama.rope.freq_base": 100000.0, "llama.rope.dimension_count": 8,
                 "tokenizer.ggml.bos_token_id": 1, "tokenizer.chat_template": template})
    return write_gguf(path, tensors, meta)
