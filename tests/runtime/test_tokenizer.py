"""The shared tokenizer: the built-in byte-level one and Hugging Face / GPT-2 files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers

from ir.errors import DataError
from runtime.tokenizer import ByteTokenizer, load_tokenizer

GPT2 = Path(__file__).parents[1] / "data" / "gpt2_tokenizer"

# GPT-2 ids from OpenAI's original pure-Python BPE algorithm (independent of `tokenizers`).
GPT2_KNOWN = {
    "Hello world": [15496, 995],
    "Hello, world!": [15496, 11, 995, 0],
    "The quick brown fox jumps over the lazy dog.": [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    " leading space and  two  spaces\n\nnewlines\ttab":
        [3756, 2272, 290, 220, 734, 220, 9029, 198, 198, 3605, 6615, 197, 8658],
    "Ünïcödé café 東京 🙂": [127, 250, 77, 26884, 66, 9101, 67, 2634, 40304, 10545, 251, 109, 12859, 105, 32485],
    "I'm can't we'll they've 12345 3.14159": [40, 1101, 460, 470, 356, 1183, 484, 1053, 17031, 2231, 513, 13, 1415, 19707],
}
SAMPLE = ["Hello world", "rduflow compiles dataflow graphs.", "  spaces\tand\ttabs ", "naïve 日本語 🙂", ""]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(GPT2)


@pytest.fixture(scope="module")
def reference():
    backend = Backend(models.BPE.from_file(str(GPT2 / "vocab.json"), str(GPT2 / "merges.txt")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = load_tokenizer(None)
    assert (tok.kind, tok.vocab_size, tok.eos_id, tok.pad_id) == ("byte", 258, 256, 257)
    assert tok.encode("Hé!") == [72, 195, 169, 33]
    assert tok.encode("<|endoftext|>") == list(b"<|endoftext|>")


def test_byte_tokenizer_decode():
    tok = ByteTokenizer()
    assert tok.decode([72, 195, 169, 256, 33, 257]) == "Hé!"
    assert tok.decode(np.array([104, 256, 105, 257]), skip_special_tokens=False) == "h<|endoftext|>i<|pad|>"
    assert tok.decode([0xFF, 65]) == "\ufffdA"
    with pytest.raises(DataError, match="outside the byte tokenizer's vocabulary"):
        tok.decode([258])


@pytest.mark.parametrize("text", SAMPLE)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_encode_flat_matches_encode(gpt2):
    for tok in (ByteTokenizer(), gpt2):
        ids, lengths = tok.encode_flat(SAMPLE)
        assert ids.dtype == np.int32 and lengths.tolist() == [len(tok.encode(t)) for t in SAMPLE]
        assert ids.tolist() == [i for t in SAMPLE for i in tok.encode(t)]


def test_gpt2_known_answers(gpt2):
    for text, expected in GPT2_KNOWN.items():
        assert gpt2.encode(text) == expected, text


def test_gpt2_matches_tokenizers_reference(gpt2, reference):
    for text in SAMPLE + list(GPT2_KNOWN):
        assert gpt2.encode(text) == reference.encode(text).ids
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_special_tokens(gpt2):
    assert (gpt2.kind, gpt2.vocab_size, gpt2.eos_id, gpt2.pad_id) == ("huggingface", 50257, 50256, 50256)
    assert gpt2.encode("a<|endoftext|>") == [64, 50256]
    assert gpt2.decode([64, 50256]) == "a"
    assert gpt2.decode([64, 50256], skip_special_tokens=False) == "a<|endoftext|>"


def test_save_and_reload(tmp_path, gpt2):
    for tok, name in ((ByteTokenizer(), "byte"), (gpt2, "gpt2")):
        tok.save(tmp_path / name)
        again = load_tokenizer(tmp_path / name)
        assert again.describe() == tok.describe()
        assert again.encode("Hello world, naïve") == tok.encode("Hello world, naïve")
    assert load_tokenizer(tmp_path / "gpt2" / "tokenizer.json").eos_id == 50256
    assert load_tokenizer(tmp_path / "byte" / "tokenizer_config.json").kind == "byte"


def _word_level(folder: Path, config: dict | None = None) -> Path:
    backend = Backend(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_eos_from_tokenizer_config(tmp_path):
    tok = load_tokenizer(_word_level(tmp_path / "t", {"eos_token": {"content": "b"}, "pad_token": "[UNK]"}))
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3)
    assert tok.encode("a b a") == [0, 1, 0]


@pytest.mark.parametrize("config, message", [
    (None, "no end-of-sequence token"),
    ({"eos_token": "zzz"}, "eos_token 'zzz' is not in the vocabulary"),
    ({"eos_token": "a", "pad_token": "zzz"}, "pad_token 'zzz' is not in the vocabulary"),
])
def test_bad_special_tokens(tmp_path, config, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(_word_level(tmp_path / "t", config))


def test_unusable_paths(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a Hugging Face tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text("[]")
    (tmp_path / "half" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(DataError, match="unreadable vocab.json / merges.txt"):
        load_tokenizer(tmp_path / "half")
