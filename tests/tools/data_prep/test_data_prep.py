"""`rduflow data-prep`: SambaNova generative_data_prep's rules worked by hand, splits, errors, atomic output.

Arrays use the byte tokenizer (a byte's id is its value; E = EOS 256, P = pad 257)
unless a test says otherwise; types are 0 prompt, 1 completion, 2 padding, 3 separator.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.chat_template import ChatTemplate
from runtime.tokenizer import load_tokenizer
from tools.cli import main as cli_main
from tools.data_prep import PACKINGS, PrepConfig, pipeline, prepare
from tools.data_prep.packing import Packer

ROOT = Path(__file__).resolve().parents[3]
GPT2 = Path(__file__).parents[2] / "data" / "gpt2_tokenizer"
E, P = 256, 257  # byte tokenizer: EOS and pad

# Four articles for the packing tests (space separator off), with max_seq_length 6:
#   A1 "ab"|"cd"      -> a b c d E   types 0 0 1 1 3   (5 tokens)
#   A2 ""|"efghij"    -> e f g h i j E                 (7 tokens, too long for one row)
#   A3 "k"|"l"        -> k l E       types 0 1 3
#   A4 "m"|"n"        -> m n E       types 0 1 3
ARTICLES = [{"prompt": "ab", "completion": "cd"}, {"prompt": "", "completion": "efghij"},
            {"prompt": "k", "completion": "l"}, {"prompt": "m", "completion": "n"}]
A1 = ([97, 98, 99, 100, E], [0, 0, 1, 1, 3])
A2_RIGHT = ([101, 102, 103, 104, 105, 106], [1] * 6)
A2_LEFT = ([102, 103, 104, 105, 106, E], [1] * 5 + [3])
A3, A4 = ([107, 108, E], [0, 1, 3]), ([109, 110, E], [0, 1, 3])


def row(*parts, length=6):
    ids = [i for p in parts for i in p[0]]
    types = [t for p in parts for t in p[1]]
    pad = length - len(ids)
    return ids + [P] * pad, types + [2] * pad


EXPECTED = {
    "full": [([97, 98, 99, 100, E, 101], [0, 0, 1, 1, 3, 1]),
             ([102, 103, 104, 105, 106, E], [1, 1, 1, 1, 1, 3]),
             ([107, 108, E, 109, 110, E], [0, 1, 3, 0, 1, 3])],
    "single::truncate_right": [row(A1), row(A2_RIGHT), row(A3), row(A4)],
    "single::truncate_left": [row(A1), row(A2_LEFT), row(A3), row(A4)],
    "single::drop": [row(A1), row(A3), row(A4)],
    "greedy::truncate_right": [row(A1), row(A2_RIGHT), row(A3, A4)],
    "greedy::truncate_left": [row(A1), row(A2_LEFT), row(A3, A4)],
    "greedy::drop": [row(A1), row(A3, A4)],
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read(folder: Path, name: str = "train_1_of_1.hdf5", field: str | None = None):
    with h5py.File(folder / name, "r") as f:
        ids, types = f["input_ids"], f["token_type_ids"]
        assert ids.dtype == np.int32 and types.dtype == np.int32 and ids.shape == types.shape
        if field is not None:
            return f[field][:]
        return ids[:], types[:]


def rows(folder: Path, name: str = "train_1_of_1.hdf5") -> tuple[list, list]:
    ids, types = read(folder, name)
    return ids.tolist(), types.tolist()


def run(tmp_path: Path, source: Path, **options) -> tuple[Path, dict]:
    out = options.pop("output", tmp_path / "out")
    options.setdefault("max_seq_length", 6)
    options.setdefault("num_training_splits", 1)
    return out, prepare(PrepConfig(input=source, output=out, **options))


def cli(*args: str) -> int:
    return cli_main(["data-prep", *args])


def stats(meta: dict) -> dict:
    return meta["rduflow"]["stats"]


# ---------------------------------------------------------------- packing

@pytest.mark.parametrize("packing", sorted(EXPECTED))
def test_packing_modes_exact(tmp_path, packing):
    out, meta = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", ARTICLES), packing=packing,
                    disable_space_separator=True)
    assert rows(out) == ([r[0] for r in EXPECTED[packing]], [r[1] for r in EXPECTED[packing]])
    assert stats(meta)["sequences"] == len(EXPECTED[packing]) and stats(meta)["lines"] == 4
    assert stats(meta)["tokens_dropped"] == {"full": 0, "single::drop": 7, "greedy::drop": 7}.get(packing, 1)
    assert list(stats(meta)["tokens"].values()) == np.bincount(np.ravel(read(out)[1]), minlength=4).tolist()


# ---------------------------------------------------------------- the reference's text rules

def test_space_separator_on_off_already_spaced_and_empty_prompt(tmp_path):
    records = [{"prompt": "ab  ", "completion": "cd"}, {"prompt": "ab", "completion": "   cd"},
               {"prompt": "", "completion": "cd"}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=8)
    assert rows(out) == ([[97, 98, 32, 99, 100, E, P, P], [97, 98, 32, 99, 100, E, P, P], [32, 99, 100, E, P, P, P, P]],
                         [[0, 0, 1, 1, 1, 3, 2, 2], [0, 0, 1, 1, 1, 3, 2, 2], [1, 1, 1, 3, 2, 2, 2, 2]])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=8, disable_space_separator=True,
                 output=tmp_path / "off")
    assert rows(out) == ([[97, 98, 32, 32, 99, 100, E, P], [97, 98, 32, 32, 32, 99, 100, E],
                          [99, 100, E, P, P, P, P, P]],
                         [[0, 0, 0, 0, 1, 1, 3, 2], [0, 0, 1, 1, 1, 1, 1, 3], [1, 1, 3, 2, 2, 2, 2, 2]])


def test_prompt_only_pairs_and_sequences_dropped_or_kept(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "pq", "completion": ""}, [{"prompt": "ab", "completion": "c"}, {"prompt": "xy", "completion": ""}]])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=10)
    assert rows(out) == ([[97, 98, 32, 99, E] + [P] * 5], [[0, 0, 1, 1, 3] + [2] * 5])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=10, keep_prompt_only_sequences=True,
                 output=tmp_path / "kept")
    assert rows(out) == ([[112, 113, E] + [P] * 7, [97, 98, 32, 99, E, 120, 121, E, P, P]],
                         [[0, 0, 3] + [2] * 7, [0, 0, 1, 1, 1, 0, 0, 3, 2, 2]])


def test_sequences_without_completion_after_packing(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "pppppppp", "completion": "c"}])
    out, meta = run(tmp_path, source, max_seq_length=4)
    assert rows(out) == ([[32, 99, E, P]], [[1, 1, 3, 2]])
    assert stats(meta)["tokens_dropped"] == 8
    out, _ = run(tmp_path, source, max_seq_length=4, keep_prompt_only_sequences=True, output=tmp_path / "kept")
    assert rows(out) == ([[112] * 4, [112] * 4, [32, 99, E, P]], [[0] * 4, [0] * 4, [1, 1, 3, 2]])


DIALOGUE = [[{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}],
            [{"prompt": "e", "completion": "f"}]]  # pairs: a ' ' b E | c ' ' d E | e ' ' f E


def test_packing_boundary_jsonl_keeps_the_line_whole(tmp_path):
    out, _ = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", DIALOGUE), packing="greedy::drop")
    assert rows(out) == ([[101, 32, 102, E, P, P]], [[0, 1, 1, 3, 2, 2]])


def test_packing_boundary_prompt_completion_pair(tmp_path):
    out, _ = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", DIALOGUE), packing="greedy::drop",
                 packing_boundary="prompt_completion_pair")
    assert rows(out) == ([[97, 32, 98, E, P, P], [99, 32, 100, E, P, P], [101, 32, 102, E, P, P]],
                         [[0, 1, 1, 1, 2, 2], [0, 1, 1, 3, 2, 2], [0, 1, 1, 3, 2, 2]])


def test_attention_boundary_puts_the_separator_after_every_pair(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", DIALOGUE)
    expected_ids = [[97, 32, 98, E, 99, 32, 100, E], [101, 32, 102, E, P, P, P, P]]
    out, _ = run(tmp_path, source, packing="greedy::drop", max_seq_length=8)
    assert rows(out) == (expected_ids, [[0, 1, 1, 1, 0, 1, 1, 3], [0, 1, 1, 3, 2, 2, 2, 2]])
    out, _ = run(tmp_path, source, packing="greedy::drop", max_seq_length=8, output=tmp_path / "pairs",
                 attention_boundary="prompt_completion_pair")
    assert rows(out) == (expected_ids, [[0, 1, 1, 3, 0, 1, 1, 3], [0, 1, 1, 3, 2, 2, 2, 2]])


def test_categories(tmp_path, capsys):
    (tmp_path / "categories.json").write_text('["math", "code"]')
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "completion": "b", "category": "code"},
                                                 {"prompt": "c", "completion": "d"}])
    out, _ = run(tmp_path, source, packing="single::drop", categories_path=tmp_path / "categories.json")
    assert read(out, field="category_ids").tolist() == [[1, 1, 1, 1, -1, -1], [-1] * 6]
    assert json.loads((out / "category_to_id.json").read_text()) == {"math": 0, "code": 1}
    out, _ = run(tmp_path, source, packing="single::drop", output=tmp_path / "plain")
    with h5py.File(out / "train_1_of_1.hdf5") as f:
        assert sorted(f) == ["input_ids", "token_type_ids"]
    write_jsonl(source, [{"completion": "x", "category": "poetry"}])
    assert cli("--input", str(source), "--output", str(tmp_path / "bad"), "--num-training-splits", "1",
               "--categories-path", str(tmp_path / "categories.json"), "--strict") == 1
    err = capsys.readouterr().err
    assert "in.jsonl:1:1: error: malformed line: category 'poetry' is not in --categories-path" in err


def test_prompt_prefix_and_postfix(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "completion": "yo"},
                                                 {"prompt": "", "completion": "z"}])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=12, prompt_prefix="<u>",
                 prompt_postfix="<b>")
    assert rows(out) == ([[60, 117, 62, 104, 105, 60, 98, 62, 32, 121, 111, E], [32, 122, E] + [P] * 9],
                         [[0] * 8 + [1, 1, 1, 3], [1, 1, 3] + [2] * 9])


class _Template:
    """A chat template as `runtime.chat_template.ChatTemplate` renders one (user turn, then the assistant's cue)."""

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        assert add_generation_prompt and [m["role"] for m in messages] == ["user"]
        return f"U:{messages[0]['content']}\nA:"


def test_chat_template_renders_each_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_chat_template", lambda config: _Template())
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi ", "completion": "yo"}])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=12, apply_chat_template=True)
    assert rows(out) == ([[85, 58, 104, 105, 32, 10, 65, 58, 121, 111, E, P]], [[0] * 8 + [1, 1, 3, 2]])


def test_chat_template_from_the_tokenizer_folder(tmp_path):
    folder = tmp_path / "tok"
    load_tokenizer(GPT2).save(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hello", "completion": "world"}])
    out, _ = run(tmp_path, source, tokenizer=str(folder), packing="single::drop", max_seq_length=16,
                 apply_chat_template=True)
    tok = load_tokenizer(folder)
    prompt = tok.encode(ChatTemplate.from_folder(folder).render([{"role": "user", "content": "Hello"}]))
    assert prompt == tok.encode("<user>Hello<assistant>")
    ids, types = rows(out)
    n = len(prompt) + 2
    assert ids[0][:n] == prompt + tok.encode("world") + [50256] and types[0][:n] == [0] * len(prompt) + [1, 3]


def test_txt_lines_keep_their_newline(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"ab\n\ncd")
    out, _ = run(tmp_path, tmp_path / "in.txt", max_seq_length=4)
    # the last row, [E P P P] typed [3 2 2 2], has no completion token: dropped, as the reference does
    assert rows(out) == ([[97, 98, 10, E], [10, E, 99, 100]], [[1, 1, 1, 3], [1, 3, 1, 1]])
    (tmp_path / "crlf.txt").write_bytes(b"ab\r\n")
    out, _ = run(tmp_path, tmp_path / "crlf.txt", max_seq_length=4, output=tmp_path / "crlf")
    assert rows(out) == ([[97, 98, 10, E]], [[1, 1, 1, 3]])


def test_folder_input_reads_its_files_in_name_order(tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"completion": "y"}])
    write_jsonl(folder / "a.jsonl", [{"completion": "x"}])
    (folder / "notes.md").write_text("ignored")
    out, _ = run(tmp_path, folder, packing="single::drop", max_seq_length=4)
    assert rows(out) == ([[32, 120, E, P], [32, 121, E, P]], [[1, 1, 3, 2]] * 2)
    (folder / "b.jsonl").write_text('{"completion": "y"}\n{"completion": \n')
    assert cli("--input", str(folder), "--output", str(tmp_path / "o2"), "--strict", "--num-training-splits", "1") == 1
    assert f"{folder / 'b.jsonl'}:2:1: error: malformed line: bad JSON" in capsys.readouterr().err
    (folder / "c.txt").write_text("z\n")
    assert cli("--input", str(folder), "--output", str(tmp_path / "o3")) == 1
    assert "mixes .jsonl and .txt files" in capsys.readouterr().err


def test_gpt2_tokenizer_end_to_end(tmp_path):
    (tmp_path / "in.txt").write_text("Hello world\n")
    out, meta = run(tmp_path, tmp_path / "in.txt", tokenizer=str(GPT2), packing="single::drop")
    assert rows(out) == ([[15496, 995, 198, 50256, 50256, 50256]], [[1, 1, 1, 3, 2, 2]])
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hello", "completion": "world"}])
    out, meta = run(tmp_path, source, tokenizer=str(GPT2), packing="single::drop", output=tmp_path / "pc")
    assert rows(out) == ([[15496, 995, 50256, 50256, 50256, 50256]], [[0, 1, 3, 2, 2, 2]])
    assert (meta["vocab_size"], meta["rduflow"]["tokenizer"]["eos_id"]) == (50257, 50256)
    assert load_tokenizer(out / "tokenizer").encode("Hello world") == [15496, 995]


def test_special_tokens_dict(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "", "completion": "a[SEP]b"}])
    out, meta = run(tmp_path, source, tokenizer=str(GPT2), packing="single::drop",
                    special_tokens_dict="{'sep_token': '[SEP]'}")
    tok = load_tokenizer(out / "tokenizer")
    assert tok.encode("[SEP]") == [50257] and meta["vocab_size"] == 50257
    assert rows(out)[0] == [tok.encode(" a") + [50257] + tok.encode("b") + [50256] + [50256] * 2]


# ---------------------------------------------------------------- splits, balancing, layout

def _lines(tmp_path: Path, count: int) -> Path:
    (tmp_path / "in.txt").write_text("".join(f"l{i}\n" for i in range(count)))
    return tmp_path / "in.txt"


def _line_row(*numbers: int, length: int = 12) -> tuple[list, list]:
    """The row of lines `l{n}\\n` packed back to back: each its bytes, then EOS (type 3)."""
    ids = [i for n in numbers for i in [*f"l{n}\n".encode(), E]]
    types = [t for n in numbers for t in [1] * len(f"l{n}\n") + [3]]
    return ids + [P] * (length - len(ids)), types + [2] * (length - len(ids))


def test_ratios_deal_lines_round_robin_and_each_split_is_packed_alone(tmp_path):
    # 3 training splits, ratios 0.25/0.25: int(3 / 0.5) = 6 split files, test int(6 * 0.25) = 1, dev 6 - 3 - 1 = 2;
    # line k goes to file k % 6: train 0..2, test 3, dev 4..5.
    out, meta = run(tmp_path, _lines(tmp_path, 12), max_seq_length=12, num_training_splits=3, dev_ratio=0.25,
                    test_ratio=0.25)
    for i, (a, b) in enumerate([(0, 6), (1, 7), (2, 8)], 1):
        ids, types = _line_row(a, b)
        assert rows(out, f"train_{i}_of_3.hdf5") == ([ids], [types])
    assert rows(out, "dev_1_of_2.hdf5") == tuple([x] for x in _line_row(4, 10, length=12))
    assert rows(out, "dev_2_of_2.hdf5") == tuple([x] for x in _line_row(5, 11, length=12))
    assert (out / "test" / "test_1_of_1.txt").read_text() == "l3\nl9\n"
    reference_keys = {"max_seq_length": 12, "token_type_ids": True, "vocab_size": 258,
                      "tokenizer_model_type": "rduflow-byte", "number_of_training_files": 3,
                      "number_of_dev_files": 2, "number_of_test_files": 1, "max_batch_size_train": 1,
                      "max_batch_size_dev": 1}
    assert {k: meta[k] for k in reference_keys} == reference_keys
    assert list(meta)[:len(reference_keys)] == list(reference_keys)
    assert yaml.safe_load((out / "metadata.yaml").read_text()) == meta
    assert sorted(p.name for p in out.iterdir()) == [
        "dev_1_of_2.hdf5", "dev_2_of_2.hdf5", "metadata.yaml", "test", "tokenizer", "train_1_of_3.hdf5",
        "train_2_of_3.hdf5", "train_3_of_3.hdf5"]


def test_split_counts_follow_the_reference_float_arithmetic():
    config = PrepConfig(input=Path("x.txt"), output=Path("out"), num_training_splits=3, dev_ratio=0.2,
                        test_ratio=0.2)
    # 1 - 0.2 - 0.2 is 0.6000000000000001 and int(3 / 0.6000000000000001) is 4: no test file, as the reference has
    assert (config.split_counts(1000).train, config.split_counts(1000).dev, config.split_counts(1000).test) == (3, 1, 0)
    default = PrepConfig(input=Path("x.txt"), output=Path("out"), dev_ratio=0.1)
    assert [default.split_counts(size).train for size in (1, 10 << 30, 100 << 30)] == [32, 128, 256]
    assert default.split_counts(1).dev == 3  # int(32 / 0.9) = 35 files


def test_explicit_split_counts(tmp_path):
    out, meta = run(tmp_path, _lines(tmp_path, 8), max_seq_length=8, packing="single::drop",
                    num_training_splits=2, num_dev_splits=1, num_test_splits=1)
    assert rows(out, "train_1_of_2.hdf5")[0] == [_line_row(0, length=8)[0], _line_row(4, length=8)[0]]
    assert rows(out, "train_2_of_2.hdf5")[0] == [_line_row(1, length=8)[0], _line_row(5, length=8)[0]]
    assert rows(out, "dev_1_of_1.hdf5")[0] == [_line_row(3, length=8)[0], _line_row(7, length=8)[0]]
    assert (out / "test" / "test_1_of_1.txt").read_text() == "l2\nl6\n"
    assert (meta["number_of_training_files"], meta["number_of_dev_files"], meta["number_of_test_files"]) == (2, 1, 1)


@pytest.mark.parametrize("options, message", [
    ({"num_dev_splits": 1}, "--num-dev-splits and --num-test-splits need each other and --num-training-splits"),
    ({"num_training_splits": 2, "num_dev_splits": 1, "num_test_splits": 0, "dev_ratio": 0.1},
     "--dev-ratio cannot be combined with --num-dev-splits and --num-test-splits"),
])
def test_split_flag_rules(tmp_path, options, message):
    with pytest.raises(Exception, match=message):
        prepare(PrepConfig(input=_lines(tmp_path, 8), output=tmp_path / "out", **options))


def test_default_is_32_training_splits(tmp_path):
    out, meta = run(tmp_path, _lines(tmp_path, 40), max_seq_length=8, num_training_splits=None)
    assert meta["number_of_training_files"] == 32 and len(list(out.glob("train_*_of_32.hdf5"))) == 32


def test_balancing_moves_the_last_rows_of_fuller_files(tmp_path):
    # lines 1 and 3 are too long for a row: file 1 packs lines 0, 2, 4 and file 2 only line 5
    (tmp_path / "in.txt").write_text("l0\n" + "x" * 20 + "\nl2\n" + "y" * 20 + "\nl4\nl5\n")
    args = dict(max_seq_length=4, packing="single::drop", num_training_splits=2, keep_split_jsonls=True)
    out, meta = run(tmp_path, tmp_path / "in.txt", **args)
    assert rows(out, "train_1_of_2.hdf5")[0] == [_line_row(0, length=4)[0], _line_row(2, length=4)[0]]
    assert rows(out, "train_2_of_2.hdf5")[0] == [_line_row(5, length=4)[0], _line_row(4, length=4)[0]]
    assert meta["max_batch_size_train"] == 2
    assert (out / "splits" / "train_1_of_2.txt").read_text() == "l0\nl2\nl4\n"
    out, meta = run(tmp_path, tmp_path / "in.txt", do_not_balance_hdf5=True, output=tmp_path / "unbalanced", **args)
    assert [len(rows(out, f"train_{i}_of_2.hdf5")[0]) for i in (1, 2)] == [3, 1]
    assert meta["max_batch_size_train"] == 1 and not (tmp_path / "out2" / "splits").exists()


def test_data_prep_mode_writes_one_file(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", ARTICLES)
    assert cli("--input", str(source), "--output", str(tmp_path / "one.hdf5"), "--max-seq-length", "6",
               "--disable-space-separator") == 0
    assert "Data prepared in" in capsys.readouterr().out
    assert rows(tmp_path, "one.hdf5") == ([r[0] for r in EXPECTED["full"]], [r[1] for r in EXPECTED["full"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.hdf5"]
    assert cli("--input", str(source), "--output", str(tmp_path / "two.hdf5"), "--dev-ratio", "0.1") == 1
    assert "--dev-ratio needs an output folder" in capsys.readouterr().err


def test_decode_prints_rows_as_text(tmp_path, capsys):
    out, _ = run(tmp_path, _lines(tmp_path, 2), max_seq_length=8)
    capsys.readouterr()
    assert cli_main(["data-prep", "decode", str(out / "train_1_of_1.hdf5")]) == 0
    assert capsys.readouterr().out == "[0] l0\\n<|endoftext|>l1\\n<|endoftext|>\n"


def test_shuffle_is_seeded_and_a_permutation(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"article number {i:03d}\n" for i in range(300)))
    results = {}
    for seed in (1, 1, 2):
        out, meta = run(tmp_path, tmp_path / "in.txt", packing="single::drop", max_seq_length=32, shuffle=True,
                        seed=seed, num_training_splits=2, num_dev_splits=1, num_test_splits=0, bucket_bytes=1024,
                        overwrite=True)
        results.setdefault(seed, []).append([tuple(r) for name in ("train_1_of_2.hdf5", "train_2_of_2.hdf5",
                                                                   "dev_1_of_1.hdf5") for r in rows(out, name)[0]])
    first, again, other = results[1][0], results[1][1], results[2][0]
    assert first == again and first != other
    tok = load_tokenizer(None)
    decoded = sorted(tok.decode(r) for r in first)
    assert decoded == [f"article number {i:03d}\n" for i in range(300)]
    assert [tok.decode(r) for r in first] != decoded
    assert meta["rduflow"]["files"]["dev"] == {"dev_1_of_1.hdf5": 100}


def test_same_input_gives_identical_files(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ARTICLES * 50)
    blobs = []
    for name in ("a", "b"):
        prepare(PrepConfig(input=source, output=tmp_path / name, max_seq_length=16, shuffle=True, seed=3,
                           num_training_splits=2, dev_ratio=0.5))
        blobs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.hdf5"))})
    assert blobs[0] == blobs[1] and len(blobs[0]) == 4


def test_many_rows_span_several_chunks(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"{i} " * 20 + "\n" for i in range(3000)))
    out, meta = run(tmp_path, tmp_path / "in.txt", max_seq_length=64)
    text = load_tokenizer(None).decode(read(out)[0].ravel())
    assert text == "".join(f"{i} " * 20 + "\n" for i in range(3000))
    assert stats(meta)["sequences"] == len(read(out)[0]) > 2 * pipeline.HDF5Writer(out, 64, ()).chunk_rows


# ---------------------------------------------------------------- bad input and failures

def test_malformed_lines_are_counted_and_reported(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": \n\n[]\n{"prompt": "a"}\n'
                       b'{"completion": 3}\n\xff\xfe\n{"completion": "ok"}\n"just a string"\n'
                       + b"[" * 100000 + b"\n")
    out, meta = run(tmp_path, source, max_seq_length=16)
    err = capsys.readouterr().err
    assert stats(meta)["malformed_lines"] == 7 and stats(meta)["lines"] == 2
    assert f"{source}:2:1: warning: malformed line skipped: bad JSON" in err
    assert f"{source}:5:1: warning: malformed line skipped: missing key 'completion'" in err
    assert f"{source}:6:1: warning: malformed line skipped: 'completion' must be a string" in err
    assert f"{source}:7:1: warning: malformed line skipped: not UTF-8" in err
    assert f"{source}:10:1: warning: malformed line skipped: JSON nested too deeply" in err


def test_deeply_nested_jsonl_line_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    assert cli("--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--strict",
               "--num-training-splits", "1") == 1
    err = capsys.readouterr().err.strip()
    assert err == f"{tmp_path / 'in.jsonl'}:1:1: error: malformed line: JSON nested too deeply"


def test_lone_surrogate_is_malformed(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"completion": "ok"}\n{"completion": "bad \\ud800"}\n{"completion": "\\ud83d\\ude42"}\n')
    out, meta = run(tmp_path, source, max_seq_length=16)
    assert stats(meta)["first_malformed_lines"] == [f"{source}:2:1"]
    assert load_tokenizer(None).decode(read(out)[0].ravel()) == " ok 🙂"


def test_byte_order_mark_and_crlf_in_jsonl(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"completion": "ab"}\r\n{"completion": "cd"}\r\n')
    out, meta = run(tmp_path, tmp_path / "in.jsonl", packing="single::drop", num_training_splits=1,
                    num_dev_splits=0, num_test_splits=1)
    assert rows(out)[0] == [[32, 97, 98, E, P, P]] and stats(meta)["malformed_lines"] == 0
    assert (out / "test" / "test_1_of_1.jsonl").read_bytes() == b'{"completion": "cd"}\r\n'


def _cli_error(capsys, *args: str) -> str:
    assert cli(*args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_success(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("some text\n")
    assert cli("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"), "--max-seq-length", "4",
               "--num-training-splits", "1") == 0
    assert "Data prepared in" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.yaml", "tokenizer", "train_1_of_1.hdf5"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("content, suffix, extra, message", [
    (b'{"completion": "a"}\n{"completion": \n', ".jsonl", ["--strict", "--num-training-splits", "1"],
     ":2:1: error: malformed line: bad JSON"),
    (b'{"prompt": "a"}\n', ".jsonl", ["--strict", "--num-training-splits", "1"],
     ":1:1: error: malformed line: missing key 'completion'"),
    (b"not json at all\n", ".jsonl", ["--num-training-splits", "1"], "no usable data (all 1 lines are malformed)"),
    (b"", ".txt", [], "input is empty"),
    (bytes(range(256)) * 8, ".txt", [], "binary data, not a text file"),
    (b"x\n", ".csv", [], "unsupported input format '.csv'"),
    (b"x\n", ".txt", ["--tokenizer", "/no/such/tokenizer"], "error: tokenizer not found: /no/such/tokenizer"),
    (b"x\n", ".txt", ["--dev-ratio", "1.5"], "--dev-ratio must be in [0, 1)"),
    (b"x\n", ".txt", ["--max-seq-length", "1000000000000"], "--max-seq-length must be in [1, 1048576]"),
    (b"x\n", ".txt", ["--num-training-splits", "1", "--dev-ratio", "0.5"],
     "1 lines, fewer than the 2 split files they are dealt into (1 train, 1 dev, 0 test)"),
    (b"x\n" * 3, ".txt", [], "3 lines, fewer than the 32 split files"),
    (b"x\n" + b"y" * 40 + b"\n", ".txt", ["--num-training-splits", "2", "--packing", "single::drop"],
     "1 training sequences after packing (--packing single::drop, --max-seq-length 8), fewer than the 2"),
    (b"x\n", ".txt", ["--special-tokens-dict", "{'sep_token': '[SEP]'}"], "needs a Hugging Face --tokenizer"),
    (b"x\n", ".txt", ["--apply-chat-template"], "--apply-chat-template needs a --tokenizer"),
])
def test_cli_errors(tmp_path, capsys, content, suffix, extra, message):
    source = tmp_path / f"in{suffix}"
    source.write_bytes(content)
    line = _cli_error(capsys, "--input", str(source), "--output", str(tmp_path / "out"),
                      "--max-seq-length", "8", *extra)
    assert message in line and "error:" in line
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_missing_input(tmp_path, capsys):
    line = _cli_error(capsys, "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "o"))
    assert line == f"error: input not found: {tmp_path / 'none.txt'}"


def test_too_many_splits_fail_before_any_file_is_opened(tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr(h5py, "File", lambda *a, **k: opened.append(a) or pytest.fail("an HDF5 file was opened"))
    line = _cli_error(capsys, "--input", str(_lines(tmp_path, 10)), "--output", str(tmp_path / "out"),
                      "--num-training-splits", "4000")
    assert "10 lines, fewer than the 4000 split files" in line and opened == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p" * 50, "completion": f"c {i} " * 20}
                                                 for i in range(5000)])

    def small_files():  # a file-size limit makes every write past 40 kB fail, as a full disk does
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    result = subprocess.run([sys.executable, "-m", "tools.cli", "data-prep", "--input", str(source), "--output",
                             str(tmp_path / "out"), "--max-seq-length", "64", "--num-training-splits", "2"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=small_files,
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (1, f"error: cannot write {tmp_path / 'out'}: file too large\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_write_failures_are_named():
    h5py_message = ("Can't synchronously write data (file write failed: time = Mon Dec  7 02:27:24 2026, "
                    "filename = 'x.hdf5', file descriptor = 4, errno = 28, error message = 'No space left on device')")
    assert pipeline._reason(OSError(h5py_message)) == "no space left on device"
    assert pipeline._reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert pipeline._reason(OSError(errno.EACCES, "Permission denied")) == "Permission denied"


def test_staging_folders_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.{dead.pid}-0123abcd.partial"
    live = tmp_path / f".out.{os.getpid()}-4567cdef.partial"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "train_1_of_1.hdf5").write_bytes(b"half written")
    run(tmp_path, _lines(tmp_path, 2))
    assert not stale.exists() and live.exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("first\n")
    args = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"), "--num-training-splits", "1"]
    assert cli(*args) == 0
    line = _cli_error(capsys, *args)
    assert line == f"error: output {tmp_path / 'out'} already exists; pass --overwrite to replace it"
    (tmp_path / "in.txt").write_text("second\n")
    assert cli(*args, "--overwrite") == 0
    assert load_tokenizer(None).decode(read(tmp_path / "out")[0].ravel()) == "second\n"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    line = _cli_error(capsys, *args[:2], "--output", str(tmp_path / "other"), *args[4:], "--overwrite")
    assert "not a data-prep output" in line
    assert (tmp_path / "other" / "precious.txt").exists()


def test_crash_mid_write_leaves_no_output(tmp_path, monkeypatch, capsys):
    calls = []

    def failing_append(self, rows):
        calls.append(rows.shape[1])
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(self, rows)

    original = pipeline.HDF5Writer.append
    monkeypatch.setattr(pipeline.HDF5Writer, "append", failing_append)
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 64)
    args = ["--input", str(_lines(tmp_path, 100)), "--output", str(tmp_path / "out"), "--max-seq-length", "8",
            "--num-training-splits", "1"]
    assert cli(*args) == 3
    assert "internal error" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_crash_keeps_the_old_output(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", ARTICLES)
    out, _ = run(tmp_path, source)
    before = read(out)[0].tolist()

    def fail(self, rows):
        raise RuntimeError("crash while writing metadata")

    monkeypatch.setattr(pipeline.Preparation, "metadata", fail)
    with pytest.raises(RuntimeError):
        run(tmp_path, source, packing="single::drop", overwrite=True)
    assert read(out)[0].tolist() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]


# ---------------------------------------------------------------- packer properties

def _pack(packing: str, lens: list[int], cuts: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack units whose token i of unit a is 1000 * a + i, fed in batches split at `cuts`."""
    style, _, overflow = packing.partition("::")
    packer = Packer(style, overflow or None, length, fillers=(-1, 2))
    ids = [np.arange(n, dtype=np.int32) + 1000 * a for a, n in enumerate(lens)]
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, len(lens)]):
        part = ids[lo:hi]
        flat = np.concatenate(part) if part else np.zeros(0, np.int32)
        out.append(packer.add(np.stack([flat, np.ones_like(flat)]), np.array(lens[lo:hi], dtype=np.int64)))
    out.append(packer.flush())
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


@settings(max_examples=100, deadline=None)
@given(packing=st.sampled_from(PACKINGS), length=st.integers(1, 12),
       lens=st.lists(st.integers(0, 30), max_size=25), data=st.data())
def test_packing_properties(packing, length, lens, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lens)), max_size=4)))
    ids, types = _pack(packing, lens, cuts, length)
    assert np.array_equal(ids, _pack(packing, lens, [], length)[0])  # batch boundaries do not matter
    assert ids.shape[1:] == (length,) and np.array_equal(ids == -1, types == 2)
    tokens = ids[ids != -1]
    if packing == "full":
        assert np.array_equal(tokens, np.concatenate([np.arange(n) + 1000 * a for a, n in enumerate(lens)] + [[]]))
        assert (ids[:-1] != -1).all()
        return
    style, overflow = packing.split("::")
    for a, n in enumerate(lens):
        mine = tokens[tokens // 1000 == a] % 1000
        if n <= length:
            expected = np.arange(n)
        else:
            expected = {"drop": np.arange(0), "truncate_right": np.arange(length),
                        "truncate_left": np.arange(n - length, n)}[overflow]
        assert np.array_equal(mine, expected)
    units_per_row = [len(np.unique(r[r != -1] // 1000)) for r in ids]
    assert all(k == 1 for k in units_per_row) if style == "single" else all(k >= 1 for k in units_per_row)
    if style == "greedy":
        fills = (ids != -1).sum(axis=1)
        for r in range(len(ids) - 1):
            after = int(ids[r][ids[r] != -1].max() // 1000) + 1
            while lens[after] == 0:  # empty units fit anywhere
                after += 1
            assert lens[after] > length - fills[r]  # a row closes only when the next unit does not fit
