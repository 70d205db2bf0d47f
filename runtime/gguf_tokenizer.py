"""The tokenizer a GGUF file carries, read from its `tokenizer.*` metadata.

llama.cpp moves a checkpoint's tokenizer into `tokenizer.ggml.*` (vocabulary, merges,
token types, special-token ids, pre-tokenizer name) and its chat template into
`tokenizer.chat_template`. This module reads them back:

* `tokenizer_config(path)`: the `tokenizer_config.json` object (special tokens, chat template);
* `bpe(path)`: the `tokenizers` byte-level BPE, its control tokens special. Only the
  `gpt2` tokenizer model (byte-level BPE) is built, with the pre-tokenizers listed in
  `PRE_TOKENIZERS`; SentencePiece (`llama`) and others are refused by name.

`runtime.tokenizer.load_tokenizer` wraps them as an `HFTokenizer`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.gguf import GGUFFile, read_gguf

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


def _tokens(file: GGUFFile) -> list[str]:
    tokens = file.get("tokenizer.ggml.tokens", list)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise file.error("metadata 'tokenizer.ggml.tokens' must be a non-empty list of strings")
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
        index = file.get(f"tokenizer.ggml.{key}", int, None)
        if index is None:
            continue
        if not 0 <= index < len(tokens):
            raise file.error(f"metadata 'tokenizer.ggml.{key}' is {index}, outside the "
                             f"{len(tokens)}-token vocabulary")
        config[name] = tokens[index]
    template = file.get("tokenizer.chat_template", str, None)
    if template is not None:
        config["chat_template"] = template
    return config


def _pre_tokenizer(file: GGUFFile):
    from tokenizers import Regex, pre_tokenizers

    pre = file.get("tokenizer.ggml.pre", str, "default")
    if pre not in PRE_TOKENIZERS:
        raise file.error(f"pre-tokenizer 'tokenizer.ggml.pre' = '{pre}' is not supported "
                         f"(supported: {', '.join(PRE_TOKENIZERS)})")
    split = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits+gpt2"))
    if split == "gpt2":
        return byte_level
    if split == "digits+gpt2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def bpe(path: str | Path):
    """The byte-level BPE (a `tokenizers.Tokenizer`) of the GGUF file at `path`, its control tokens special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    file = read_gguf(path)
    kind = file.get("tokenizer.ggml.model", str)
    if kind != "gpt2":
        raise file.error(f"tokenizer model 'tokenizer.ggml.model' = '{kind}' is not supported "
                         "(only 'gpt2', byte-level BPE)")
    tokens = _tokens(file)
    merges = file.get("tokenizer.ggml.merges", list)
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else () for m in merges]
    bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
    if bad is not None:
        raise file.error(f"'tokenizer.ggml.merges' holds {bad!r}, not two tokens separated by a space")
    types = file.get("tokenizer.ggml.token_type", list, [1] * len(tokens))
    if len(types) != len(tokens):
        raise file.error(f"'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
    try:
        backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs))
    except Exception as err:  # the library raises plain Exception for a merge of unknown tokens
        raise file.error(f"its BPE vocabulary and merges do not fit together ({err})") from None
    backend.pre_tokenizer = _pre_tokenizer(file)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
    backend.add_tokens([AddedToken(t, normalized=False) for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
    return backend
