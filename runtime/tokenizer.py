"""Tokenizers shared by data preparation and text generation.

Two kinds, behind one interface (`Tokenizer`):

* ``byte`` (the default, built in): ids 0-255 are the UTF-8 bytes of the text,
  256 is ``<|endoftext|>`` (EOS: it closes every prompt/completion pair and every
  article) and 257 is ``<|pad|>`` (padding); ``vocab_size`` is 258. Encoding never
  produces a special id: ``"<|endoftext|>"`` written in a text is encoded as its
  bytes. Decoding drops the special ids (unless asked not to) and shows invalid
  UTF-8 as U+FFFD. Saved as a ``tokenizer_config.json`` whose ``tokenizer_class``
  is ``RduflowByteTokenizer``.
* ``huggingface``: anything the ``tokenizers`` library runs: a ``tokenizer.json``,
  a folder holding one, or a folder with GPT-2 style ``vocab.json`` + ``merges.txt``
  (byte-level BPE with GPT-2's pre-tokenizer), or a GGUF file's tokenizer
  (`runtime.gguf_tokenizer`). EOS is the ``eos_token`` of a ``tokenizer_config.json`` beside it, else the first of `EOS_CANDIDATES` in the
  vocabulary; padding is its ``pad_token``, else EOS (padded positions are marked by
  token type 2, so the pad id is only a filler). Saved as ``tokenizer.json`` plus
  ``tokenizer_config.json``, as Hugging Face does.

Texts are encoded without any template tokens (no BOS): callers add EOS themselves.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from ir import jsontext
from ir.errors import DataError, first_line

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
BYTE_CLASS = "RduflowByteTokenizer"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


class Tokenizer(ABC):
    """Text to token ids and back, with an EOS and a pad id."""

    kind: str
    vocab_size: int
    eos_id: int
    pad_id: int
    eos_token: str
    pad_token: str
    #: the id `encode` may put first when adding special tokens (None: it adds none)
    bos_id: int | None = None

    @property
    def base_vocab_size(self) -> int:
        """The vocabulary without added tokens (what Hugging Face's `vocab_size` reports)."""
        return self.vocab_size

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special tokens added."""

    @abstractmethod
    def encode_flat(self, texts: Sequence[str], special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Bulk encoding: all ids back to back (int32) and each text's length (int64); with
        `special_tokens`, each text is encoded as Hugging Face's `encode` does (BOS/EOS added
        where the tokenizer adds them)."""

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """The text of `ids`."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the files that `load_tokenizer(directory)` reads back."""

    def describe(self) -> dict[str, Any]:
        """The facts recorded beside prepared data."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "eos_token": self.eos_token, "pad_id": self.pad_id, "pad_token": self.pad_token}


class ByteTokenizer(Tokenizer):
    """The built-in byte-level tokenizer (see the module docstring)."""

    kind = "byte"
    vocab_size = 258
    eos_id = 256
    pad_id = 257
    eos_token = "<|endoftext|>"
    pad_token = "<|pad|>"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_flat(self, texts: Sequence[str], special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
        encoded = [text.encode("utf-8") for text in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32)
        return ids, lengths

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        specials = {self.eos_id: self.eos_token, self.pad_id: self.pad_token}
        parts: list[str] = []
        run = bytearray()
        for i in (int(x) for x in ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            if i not in specials:
                raise DataError(f"token id {i} is outside the byte tokenizer's vocabulary (0..257)")
            parts.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special_tokens:
                parts.append(specials[i])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def save(self, directory: str | Path) -> None:
        config = {"tokenizer_class": BYTE_CLASS, "eos_token": self.eos_token,
                  "pad_token": self.pad_token, "vocab_size": self.vocab_size}
        _write_json(Path(directory) / CONFIG_FILE, config)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with its EOS and pad tokens resolved."""

    kind = "huggingface"

    def __init__(self, backend: Any, config: dict[str, Any], source: str):
        self._tok = backend
        self._config = config
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.eos_token = _pick_eos(backend, config, source)
        self.pad_token = token_name(config.get("pad_token")) or self.eos_token
        if backend.token_to_id(self.pad_token) is None:
            raise DataError(f"{source}: pad_token {self.pad_token!r} is not in the vocabulary")
        self.eos_id = backend.token_to_id(self.eos_token)
        self.pad_id = backend.token_to_id(self.pad_token)
        bos = token_name(config.get("bos_token"))
        self.bos_id = backend.token_to_id(bos) if bos else None

    @property
    def base_vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)

    def add_special_tokens(self, tokens: dict[str, Any]) -> None:
        """Add special tokens as Hugging Face's `add_special_tokens` does: `{"pad_token": "<pad>",
        "additional_special_tokens": [...], ...}`; eos/pad/bos tokens named here become those roles."""
        for key, value in tokens.items():
            names = value if isinstance(value, list) else [value]
            if not all(isinstance(name, str) and name for name in names):
                raise DataError(f"special token {key!r} must be a non-empty string or a list of them")
            self._tok.add_special_tokens(names)
            role = key.removesuffix("_token")
            if role in ("eos", "pad", "bos"):
                setattr(self, f"{role}_id", self._tok.token_to_id(names[0]))
                self._config[key] = names[0]
                if role != "bos":
                    setattr(self, f"{role}_token", names[0])
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_flat(self, texts: Sequence[str], special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # _fast: tokenizers >= 0.20
        encodings = encode(list(texts), add_special_tokens=special_tokens)
        id_lists = [enc.ids for enc in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(lengths.sum()))
        return ids, lengths

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))
        config = dict(self._config)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config["eos_token"] = self.eos_token
        if self.pad_token != self.eos_token:
            config["pad_token"] = self.pad_token
        _write_json(directory / CONFIG_FILE, config)


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The byte tokenizer for None; else the tokenizer a file or folder holds."""
    if path is None:
        return ByteTokenizer()
    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer not found: {path}")
    if path.is_file():
        if path.suffix == ".gguf":
            return _from_gguf(path)
        if path.name == CONFIG_FILE:
            return load_tokenizer(path.parent)
        return _from_tokenizer_json(path)
    return _from_folder(path)


def _from_folder(folder: Path) -> Tokenizer:
    if (folder / TOKENIZER_FILE).is_file():
        return _from_tokenizer_json(folder / TOKENIZER_FILE)
    if (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file():
        return _from_vocab_merges(folder)
    config = read_tokenizer_config(folder)
    if config.get("tokenizer_class") == BYTE_CLASS:
        return ByteTokenizer()
    raise DataError(f"no tokenizer in {folder}: expected {TOKENIZER_FILE}, "
                    f"or {VOCAB_FILE} + {MERGES_FILE}")


def _from_tokenizer_json(file: Path) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(str(file))
    except Exception as err:  # the library raises plain Exception for any bad file
        raise DataError(f"{file}: not a Hugging Face tokenizer file ({first_line(err)})") from err
    return HFTokenizer(backend, read_tokenizer_config(file.parent), str(file))


def _from_gguf(file: Path) -> Tokenizer:
    from runtime import gguf_tokenizer

    return HFTokenizer(gguf_tokenizer.bpe(file), gguf_tokenizer.tokenizer_config(file), str(file))


def _from_vocab_merges(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    try:
        model = models.BPE.from_file(str(folder / VOCAB_FILE), str(folder / MERGES_FILE))
    except Exception as err:  # the library raises plain Exception for any bad file
        raise DataError(f"{folder}: unreadable {VOCAB_FILE} / {MERGES_FILE} ({first_line(err)})") from err
    backend = Backend(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    config = read_tokenizer_config(folder)
    specials = [t for t in (token_name(config.get(k)) for k in ("eos_token", "pad_token")) if t]
    specials += EOS_CANDIDATES
    backend.add_special_tokens([t for t in dict.fromkeys(specials) if model.token_to_id(t) is not None])
    return HFTokenizer(backend, config, str(folder))


def _pick_eos(backend: Any, config: dict[str, Any], source: str) -> str:
    configured = token_name(config.get("eos_token"))
    if configured is not None:
        if backend.token_to_id(configured) is None:
            raise DataError(f"{source}: eos_token {configured!r} is not in the vocabulary")
        return configured
    for candidate in EOS_CANDIDATES:
        if backend.token_to_id(candidate) is not None:
            return candidate
    raise DataError(f"{source}: the tokenizer has no end-of-sequence token (looked for "
                    f"{', '.join(EOS_CANDIDATES)}); set eos_token in {CONFIG_FILE}")


def token_name(value: Any) -> str | None:
    """A special token as `tokenizer_config.json` gives it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """A folder's `tokenizer_config.json` as a dict ({} when there is none)."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        return {}
    try:
        config = jsontext.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: unreadable ({err})") from err
    if not isinstance(config, dict):
        raise DataError(f"{file}: expected a JSON object")
    return config


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
