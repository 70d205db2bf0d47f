"""`rduflow data-prep`: packing, token types, splits, shuffling, errors and atomic output."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import tools.data_prep as data_prep
from runtime.tokenizer import load_tokenizer
from tools.cli import main as cli_main
from tools.data_prep import PrepConfig, prepare

GPT2 = Path(__file__).parent / "data" / "gpt2_tokenizer"
E, P = 256, 257  # byte tokenizer: EOS and pad

# Four articles for the packing tests, with max_seq_length 6:
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


def read(folder: Path, name: str = "train_1_of_1.hdf5") -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(folder / name, "r") as f:
        ids, types = f["input_ids"], f["token_type_ids"]
        assert ids.dtype == np.int32 and types.dtype == np.int32 and ids.shape == types.shape
        assert ids.compression == "gzip"
        return ids[:], types[:]


def run(tmp_path: Path, source: Path, **options) -> tuple[Path, dict]:
    out = tmp_path / "out"
    options.setdefault("max_seq_length", 6)
    return out, prepare(PrepConfig(input=source, output=out, **options))


def cli(*args: str) -> int:
    return cli_main(["data-prep", *args])


@pytest.mark.parametrize("packing", sorted(EXPECTED))
def test_packing_modes_exact(tmp_path, packing):
    out, meta = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", ARTICLES), packing=packing)
    ids, types = read(out)
    assert ids.tolist() == [r[0] for r in EXPECTED[packing]]
    assert types.tolist() == [r[1] for r in EXPECTED[packing]]
    train = meta["splits"]["train"]
    assert train["sequences"] == len(EXPECTED[packing]) and train["articles"] == 4
    dropped = {"full": 0, "single::drop": 7, "greedy::drop": 7}.get(packing, 1)
    assert meta["tokens_dropped"] == dropped
    counts = np.bincount(types.ravel(), minlength=4).tolist()
    assert list(train["tokens"].values()) == counts


def test_full_packing_decodes_back_to_the_text(tmp_path):
    lines = ["hello world", "naïve café 🙂", "", "third line!"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, meta = run(tmp_path, tmp_path / "in.txt", max_seq_length=8)
    ids, types = read(out)
    tok = load_tokenizer(out)
    assert ids[-1, -1] == P and types[-1, -1] == 2
    text = tok.decode(ids.ravel(), skip_special_tokens=False).replace("<|pad|>", "")
    assert text.split("<|endoftext|>")[:-1] == [line for line in lines if line]
    assert set(types[ids == E].tolist()) == {3}
    assert meta["splits"]["train"]["tokens"]["prompt"] == 0


def test_multi_pair_article_and_custom_keywords(tmp_path):
    record = [{"q": "a", "r": "b"}, {"q": "c", "r": "d"}, {"q": "x", "r": ""}]
    source = write_jsonl(tmp_path / "in.jsonl", [record])
    out, _ = run(tmp_path, source, packing="single::drop", max_seq_length=8,
                 prompt_keyword="q", completion_keyword="r")
    ids, types = read(out)
    assert ids.tolist() == [[97, 98, E, 99, 100, E, P, P]]
    assert types.tolist() == [[0, 1, 1, 0, 1, 3, 2, 2]]


def test_sequences_without_completion_are_dropped(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "pppppppp", "completion": "c"}])
    out, meta = run(tmp_path, source, max_seq_length=4)
    ids, types = read(out)
    assert ids.tolist() == [[99, E, P, P]] and types.tolist() == [[1, 3, 2, 2]]
    assert meta["tokens_dropped"] == 8
    assert meta["splits"]["train"]["sequences_without_completion_dropped"] == 2


def test_gpt2_tokenizer_end_to_end(tmp_path):
    (tmp_path / "in.txt").write_text("Hello world\nHello, world!\n")
    out, meta = run(tmp_path, tmp_path / "in.txt", tokenizer=str(GPT2), packing="single::drop", max_seq_length=6)
    ids, types = read(out)
    assert ids.tolist() == [[15496, 995, 50256, 50256, 50256, 50256], [15496, 11, 995, 0, 50256, 50256]]
    assert types.tolist() == [[1, 1, 3, 2, 2, 2], [1, 1, 1, 1, 3, 2]]
    assert (meta["vocab_size"], meta["eos_id"], meta["pad_id"]) == (50257, 50256, 50256)
    assert meta["tokenizer"]["kind"] == "huggingface"
    assert load_tokenizer(out).encode("Hello world") == [15496, 995]


def test_splits_and_balanced_training_files(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    out, meta = run(tmp_path, tmp_path / "in.txt", packing="single::drop", max_seq_length=8,
                    dev_ratio=0.2, test_ratio=0.1, num_training_splits=3)
    tok = load_tokenizer(out)
    texts = {name: [tok.decode(r) for r in read(out, name)[0]]
             for name in ("train_1_of_3.hdf5", "train_2_of_3.hdf5", "train_3_of_3.hdf5", "dev_1_of_1.hdf5")}
    assert texts == {"train_1_of_3.hdf5": ["line 0", "line 3", "line 6"],
                     "train_2_of_3.hdf5": ["line 1", "line 4"], "train_3_of_3.hdf5": ["line 2", "line 5"],
                     "dev_1_of_1.hdf5": ["line 7", "line 8"]}
    test_lines = (out / "test" / "test.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in test_lines] == [{"prompt": "", "completion": "line 9"}]
    assert meta["file_counts"] == {"train": 3, "dev": 1, "test": 1}
    assert meta["files"]["train"] == {"train_1_of_3.hdf5": 3, "train_2_of_3.hdf5": 2, "train_3_of_3.hdf5": 2}
    assert meta["splits"]["test"] == {"articles": 1}
    assert yaml.safe_load((out / "metadata.yaml").read_text()) == meta


def test_jsonl_test_split_keeps_the_original_lines(tmp_path):
    records = [{"prompt": f"p{i}", "completion": f"c{i}", "extra": i} for i in range(4)]
    out, _ = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", records), test_ratio=0.25)
    assert json.loads((out / "test" / "test.jsonl").read_text()) == records[3]


def _all_rows(out: Path, names: list[str]) -> list[tuple]:
    return [tuple(r) for name in names for r in read(out, name)[0].tolist()]


def test_shuffle_is_seeded_and_a_permutation(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"article number {i:03d}\n" for i in range(300)))
    results = {}
    for seed in (1, 1, 2):
        out, meta = run(tmp_path, tmp_path / "in.txt", packing="single::drop", max_seq_length=32,
                        shuffle=True, seed=seed, dev_ratio=0.1, bucket_bytes=1024, overwrite=True)
        results.setdefault(seed, []).append(_all_rows(out, ["train_1_of_1.hdf5", "dev_1_of_1.hdf5"]))
    first, again, other = results[1][0], results[1][1], results[2][0]
    assert first == again and first != other
    tok = load_tokenizer(None)
    decoded = sorted(tok.decode(r) for r in first)
    assert decoded == [f"article number {i:03d}" for i in range(300)]
    assert [tok.decode(r) for r in first] != decoded
    assert meta["splits"]["dev"]["sequences"] == 30


def test_same_input_gives_identical_files(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ARTICLES * 50)
    blobs = []
    for name in ("a", "b"):
        prepare(PrepConfig(input=source, output=tmp_path / name, max_seq_length=16, shuffle=True, seed=3,
                           num_training_splits=2, dev_ratio=0.1))
        blobs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.hdf5"))})
    assert blobs[0] == blobs[1]


def test_many_rows_span_several_chunks(tmp_path):
    (tmp_path / "in.txt").write_text("".join(f"{i} " * 20 + "\n" for i in range(3000)))
    out, meta = run(tmp_path, tmp_path / "in.txt", max_seq_length=64, num_training_splits=2)
    rows = [read(out, f"train_{i}_of_2.hdf5") for i in (1, 2)]
    assert abs(len(rows[0][0]) - len(rows[1][0])) <= 1
    interleaved = np.empty((len(rows[0][0]) + len(rows[1][0]), 64), np.int32)
    interleaved[0::2], interleaved[1::2] = rows[0][0], rows[1][0]
    text = load_tokenizer(None).decode(interleaved.ravel())
    assert text == "".join(f"{i} " * 20 for i in range(3000))
    assert meta["splits"]["train"]["sequences"] == len(interleaved)


def test_malformed_lines_are_counted_and_reported(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": \n\n[]\n{"prompt": "a"}\n'
                       b'{"completion": 3}\n\xff\xfe\n{"completion": "ok"}\n"just a string"\n')
    out, meta = run(tmp_path, source)
    err = capsys.readouterr().err
    assert meta["malformed_lines"] == 6 and meta["malformed_line_numbers"] == [2, 4, 5, 6, 7, 9]
    assert f"{source}:2:1: warning: malformed line skipped: bad JSON" in err
    assert f"{source}:5:1: warning: malformed line skipped: missing key 'completion'" in err
    assert f"{source}:6:1: warning: malformed line skipped: 'completion' must be a string" in err
    assert f"{source}:7:1: warning: malformed line skipped: not UTF-8" in err
    assert meta["splits"]["train"]["articles"] == 2


def test_lone_surrogate_is_malformed(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"completion": "ok"}\n{"completion": "bad \\ud800"}\n{"completion": "\\ud83d\\ude42"}\n')
    out, meta = run(tmp_path, source, max_seq_length=16)
    assert meta["malformed_line_numbers"] == [2]
    assert load_tokenizer(out).decode(read(out)[0].ravel()) == "ok🙂"


def test_byte_order_mark_and_crlf(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"completion": "ab"}\r\n{"completion": "cd"}\r\n')
    out, meta = run(tmp_path, tmp_path / "in.jsonl", packing="single::drop", test_ratio=0.5)
    assert read(out)[0].tolist() == [[97, 98, E, P, P, P]] and meta["malformed_lines"] == 0
    assert (out / "test" / "test.jsonl").read_bytes() == b'{"completion": "cd"}\n'


def _cli_error(capsys, *args: str) -> str:
    assert cli(*args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_success(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("some text\n")
    assert cli("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"),
               "--max-seq-length", "4") == 0
    assert "Data prepared in" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metadata.yaml", "tokenizer_config.json", "train_1_of_1.hdf5"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("content, suffix, extra, message", [
    (b'{"completion": "a"}\n{"completion": \n', ".jsonl", ["--strict"], ":2:1: error: malformed line: bad JSON"),
    (b'{"prompt": "a"}\n', ".jsonl", ["--strict"], ":1:1: error: malformed line: missing key 'completion'"),
    (b"not json at all\n", ".jsonl", [], "no usable data (all 1 non-blank lines are malformed)"),
    (b"", ".txt", [], "input file is empty"),
    (b"\n  \n", ".jsonl", [], "input file is empty"),
    (bytes(range(256)) * 8, ".txt", [], "binary data, not a text file"),
    (b"\xff\xfe\xfa garbage \x80\x81\n", ".txt", [], "no usable data"),
    (b"x\n", ".csv", [], "unsupported input format '.csv'"),
    (b"x\n", ".txt", ["--tokenizer", "/no/such/tokenizer"], "error: tokenizer not found: /no/such/tokenizer"),
    (b"x\n", ".txt", ["--dev-ratio", "1.5"], "--dev-ratio must be in [0, 1)"),
    (b"x\ny\n", ".txt", ["--dev-ratio", "0.3", "--test-ratio", "0.3"], "too few lines (2) for --dev-ratio 0.3"),
    (b"x\n", ".txt", ["--num-training-splits", "2", "--packing", "single::drop"],
     "1 training sequences after packing"),
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
    line = _cli_error(capsys, "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "o"),
                      "--max-seq-length", "8")
    assert line == f"error: input not found: {tmp_path / 'none.txt'}"


def test_existing_output_needs_overwrite(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("first\n")
    args = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"), "--max-seq-length", "8"]
    assert cli(*args) == 0
    line = _cli_error(capsys, *args)
    assert line == f"error: output {tmp_path / 'out'} already exists; pass --overwrite to replace it"
    (tmp_path / "in.txt").write_text("second\n")
    assert cli(*args, "--overwrite") == 0
    assert load_tokenizer(None).decode(read(tmp_path / "out")[0].ravel()) == "second"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    line = _cli_error(capsys, *args[:2], "--output", str(tmp_path / "other"), *args[4:], "--overwrite")
    assert "not a data-prep output" in line
    assert (tmp_path / "other" / "precious.txt").exists()


def test_crash_mid_write_leaves_no_output(tmp_path, monkeypatch, capsys):
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    calls = []

    def failing_add(self, ids, types):
        calls.append(len(ids))
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(self, ids, types)

    original = data_prep.RoundRobin.append
    monkeypatch.setattr(data_prep.RoundRobin, "append", failing_add)
    monkeypatch.setattr(data_prep, "BATCH_BYTES", 64)
    args = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"), "--max-seq-length", "8"]
    assert cli(*args) == 3
    assert "internal error" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_crash_keeps_the_old_output(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", ARTICLES)
    out, _ = run(tmp_path, source)
    before = read(out)[0].tolist()

    def fail(self):
        raise RuntimeError("crash while writing metadata")

    monkeypatch.setattr(data_prep.Preparation, "metadata", fail)
    with pytest.raises(RuntimeError):
        run(tmp_path, source, packing="single::drop", overwrite=True)
    assert read(out)[0].tolist() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]


def _pack(packing: str, lens: list[int], cuts: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack articles whose token i of article a is 1000 * a + i, fed in batches split at `cuts`."""
    style, _, overflow = packing.partition("::")
    packer = data_prep.Packer(style, overflow or None, length, pad_id=-1)
    ids = [np.arange(n, dtype=np.int32) + 1000 * a for a, n in enumerate(lens)]
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, len(lens)]):
        part = ids[lo:hi]
        flat = np.concatenate(part) if part else np.zeros(0, np.int32)
        out.append(packer.add(flat, np.ones_like(flat), np.array(lens[lo:hi], dtype=np.int64)))
    out.append(packer.flush())
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


@settings(max_examples=100, deadline=None)
@given(packing=st.sampled_from(data_prep.PACKINGS), length=st.integers(1, 12),
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
    articles_per_row = [len(np.unique(r[r != -1] // 1000)) for r in ids]
    assert all(k == 1 for k in articles_per_row) if style == "single" else all(k >= 1 for k in articles_per_row)
    if style == "greedy":
        fills = (ids != -1).sum(axis=1)
        for row in range(len(ids) - 1):
            after = int(ids[row][ids[row] != -1].max() // 1000) + 1
            while lens[after] == 0:  # empty articles fit anywhere
                after += 1
            assert lens[after] > length - fills[row]  # a row closes only when the next article does not fit
