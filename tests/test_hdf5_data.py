"""The validated reader of prepared data (`runtime.hdf5_data`)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ir.errors import DataError
from runtime import batches, hdf5_data
from runtime.hdf5_data import TOKEN_TYPES, open_data
from tools import data_prep
from tools.data_prep import PrepConfig, prepare

LENGTH = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prep")
    (folder / "in.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    prepare(PrepConfig(input=folder / "in.txt", output=folder / "out", max_seq_length=LENGTH,
                       packing="single::drop", num_training_splits=3, dev_ratio=0.1))
    return folder / "out"


def h5(path: Path, ids=None, types=None, drop: str | None = None) -> Path:
    ids = np.arange(12, dtype=np.int32).reshape(3, 4) if ids is None else ids
    types = np.ones_like(ids) if types is None else types
    with h5py.File(path, "w") as f:
        for name, data in {"input_ids": ids, "token_type_ids": types}.items():
            if name != drop:
                f.create_dataset(name, data=data)
    return path


def expected_rows(prepared: Path, split: str) -> np.ndarray:
    names = sorted(prepared.glob(f"{split}_*.hdf5"))
    parts = []
    for name in names:
        with h5py.File(name, "r") as f:
            parts.append(f["input_ids"][:])
    return np.concatenate(parts)


def test_folder_reads_all_training_files_in_order(prepared):
    with open_data(prepared) as data:
        assert len(data) == 36 and data.max_seq_length == LENGTH and data.file_rows == [12, 12, 12]
        assert data.vocab_size == 258 and data.metadata["packing"] == "single::drop"
        rows = expected_rows(prepared, "train")
        assert np.array_equal(np.stack([ids for ids, _ in data]), rows)
        ids, types = data[13]
        assert np.array_equal(ids, rows[13]) and types.dtype == np.int32
        assert np.array_equal(data[-1][0], rows[-1])


def test_rows_in_any_order_with_repeats(prepared):
    with open_data(prepared) as data:
        picks = [35, 0, 13, 13, 24, 1]
        ids, types = data.rows(picks)
        assert ids.shape == (6, LENGTH) and types.shape == (6, LENGTH)
        assert np.array_equal(ids, expected_rows(prepared, "train")[picks])
        with pytest.raises(IndexError):
            data.rows([36])
        with pytest.raises(IndexError):
            data[36]


def test_dev_split_and_single_file(prepared):
    with open_data(prepared, split="dev") as dev:
        assert len(dev) == 4
    with open_data(prepared / "train_2_of_3.hdf5") as one:
        assert len(one) == 12 and one.metadata is not None


def test_plain_file_without_metadata(tmp_path):
    with open_data(h5(tmp_path / "x.hdf5")) as data:
        assert len(data) == 3 and data.max_seq_length == 4 and data.vocab_size is None
        assert data[2][0].tolist() == [8, 9, 10, 11]


def test_vocab_size_bounds_ids(tmp_path):
    path = h5(tmp_path / "x.hdf5")
    with open_data(path, vocab_size=8) as data:
        assert data[1][0].tolist() == [4, 5, 6, 7]
        with pytest.raises(DataError, match=r"x.hdf5: row 2: input_ids holds 8, outside the vocabulary \[0, 8\)"):
            data[2]


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "token_type_ids"}, "missing dataset 'token_type_ids'"),
    ({"ids": np.zeros((2, 4), np.int64)}, "dataset 'input_ids' has dtype int64, expected int32"),
    ({"ids": np.zeros(4, np.int32)},
     "dataset 'input_ids' has shape (4,), expected 2-D (sequences, max_seq_length)"),
    ({"types": np.zeros((3, 5), np.int32)}, "input_ids shape (3, 4) differs from token_type_ids shape (3, 5)"),
])
def test_bad_files(tmp_path, kwargs, message):
    path = h5(tmp_path / "bad.hdf5", **kwargs)
    with pytest.raises(DataError) as err:
        open_data(path)
    assert str(err.value) == f"error: {path}: {message}"


def test_bad_token_type_value(tmp_path):
    types = np.ones((3, 4), np.int32)
    types[1, 2] = 7
    with open_data(h5(tmp_path / "x.hdf5", types=types)) as data:
        data[0]
        with pytest.raises(DataError, match="row 1: token_type_ids holds 7, expected 0..3"):
            list(data)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "x.hdf5").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        open_data(tmp_path / "x.hdf5")
    with pytest.raises(DataError, match="data not found"):
        open_data(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="expected a data-prep folder or an .hdf5 file"):
        open_data(tmp_path / "x.txt")


def test_folder_without_metadata(tmp_path):
    h5(tmp_path / "train_1_of_2.hdf5")
    with pytest.raises(DataError, match="incomplete train files .*train_2_of_2.hdf5"):
        open_data(tmp_path)
    h5(tmp_path / "train_2_of_2.hdf5", ids=np.zeros((1, 5), np.int32))
    with pytest.raises(DataError, match="sequences of 5 tokens, but train_1_of_2.hdf5 has 4"):
        open_data(tmp_path)
    h5(tmp_path / "train_2_of_2.hdf5", ids=np.zeros((1, 4), np.int32))
    assert len(open_data(tmp_path)) == 4
    with pytest.raises(DataError, match="no dev files"):
        open_data(tmp_path, split="dev")


def _edit_metadata(folder: Path, change) -> None:
    file = folder / "metadata.yaml"
    meta = yaml.safe_load(file.read_text())
    change(meta)
    file.write_text(yaml.safe_dump(meta))


def test_metadata_mismatches(tmp_path):
    h5(tmp_path / "train_1_of_1.hdf5")
    (tmp_path / "metadata.yaml").write_text(yaml.safe_dump(
        {"max_seq_length": 4, "vocab_size": 100, "files": {"train": {"train_1_of_1.hdf5": 3}}}))
    assert len(open_data(tmp_path)) == 3
    _edit_metadata(tmp_path, lambda m: m["files"]["train"].update({"train_1_of_1.hdf5": 5}))
    with pytest.raises(DataError, match="3 sequences, but metadata.yaml says 5"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(max_seq_length=16))
    with pytest.raises(DataError, match="sequences of 4 tokens, but metadata.yaml says max_seq_length 16"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m["files"].update(train={"train_9_of_9.hdf5": 1}))
    with pytest.raises(DataError, match="train_9_of_9.hdf5: not a readable HDF5 file"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(files={}))
    with pytest.raises(DataError, match="lists no 'train' files"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(vocab_size="big"))
    with pytest.raises(DataError, match="invalid 'vocab_size'"):
        open_data(tmp_path)
    (tmp_path / "metadata.yaml").write_text("files: [unclosed")
    with pytest.raises(DataError, match="metadata.yaml: unreadable"):
        open_data(tmp_path)


def test_token_types_are_defined_once_and_written_to_the_metadata(prepared):
    assert TOKEN_TYPES == {"prompt": 0, "completion": 1, "padding": 2, "separator": 3}
    assert data_prep.TOKEN_TYPES is TOKEN_TYPES and batches.COMPLETION is hdf5_data.COMPLETION
    assert yaml.safe_load((prepared / "metadata.yaml").read_text())["token_type_ids"] == TOKEN_TYPES
