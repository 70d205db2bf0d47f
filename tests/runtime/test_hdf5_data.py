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

LENGTH = 12


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prep")
    (folder / "in.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    prepare(PrepConfig(input=folder / "in.txt", output=folder / "out", max_seq_length=LENGTH,
                       packing="single::drop", num_training_splits=3, num_dev_splits=1, num_test_splits=0))
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
        assert len(data) == 30 and data.max_seq_length == LENGTH and data.file_rows == [10, 10, 10]
        assert data.vocab_size is None and data.metadata["rduflow"]["packing"] == "single::drop"
        rows = expected_rows(prepared, "train")
        assert np.array_equal(np.stack([ids for ids, _ in data]), rows)
        ids, types = data[13]
        assert np.array_equal(ids, rows[13]) and types.dtype == np.int32
        assert np.array_equal(data[-1][0], rows[-1])


def test_rows_in_any_order_with_repeats(prepared):
    with open_data(prepared) as data:
        picks = [29, 0, 13, 13, 24, 1]
        ids, types = data.rows(picks)
        assert ids.shape == (6, LENGTH) and types.shape == (6, LENGTH)
        assert np.array_equal(ids, expected_rows(prepared, "train")[picks])
        with pytest.raises(IndexError):
            data.rows([30])
        with pytest.raises(IndexError):
            data[30]


def test_dev_split_and_single_file(prepared):
    with open_data(prepared, split="dev") as dev:
        assert len(dev) == 10
    with open_data(prepared / "train_2_of_3.hdf5") as one:
        assert len(one) == 10 and one.metadata is not None


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
        {"max_seq_length": 4, "vocab_size": 100, "rduflow": {"files": {"train": {"train_1_of_1.hdf5": 3}}}}))
    assert len(open_data(tmp_path)) == 3
    _edit_metadata(tmp_path, lambda m: m["rduflow"]["files"]["train"].update({"train_1_of_1.hdf5": 5}))
    with pytest.raises(DataError, match="3 sequences, but metadata.yaml says 5"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(max_seq_length=16))
    with pytest.raises(DataError, match="sequences of 4 tokens, but metadata.yaml says max_seq_length 16"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(max_seq_length=4, number_of_training_files=2))
    with pytest.raises(DataError, match="1 train files, but metadata.yaml says 2"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(number_of_training_files=1, vocab_size="big"))
    with pytest.raises(DataError, match="invalid 'vocab_size'"):
        open_data(tmp_path)
    _edit_metadata(tmp_path, lambda m: m.update(vocab_size=1, max_seq_length=None))
    with pytest.raises(DataError, match="missing or invalid 'max_seq_length'"):
        open_data(tmp_path)
    (tmp_path / "metadata.yaml").write_text("files: [unclosed")
    with pytest.raises(DataError, match="metadata.yaml: unreadable"):
        open_data(tmp_path)


REFERENCE_METADATA = {  # what SambaNova generative_data_prep writes, and nothing else
    "max_batch_size_dev": 2, "max_batch_size_train": 3, "max_seq_length": 4, "number_of_dev_files": 1,
    "number_of_test_files": 0, "number_of_training_files": 2, "token_type_ids": True,
    "tokenizer_model_type": "<class 'transformers.models.llama.configuration_llama.LlamaConfig'>",
    "vocab_size": 8}


@pytest.mark.parametrize("subfolder", ["", "hdf5"])
def test_reference_folder_reads_as_it_is(tmp_path, subfolder):
    """Only the reference's metadata keys; ids beyond its vocab_size (Llama 3: 128000 vs 128009)."""
    (tmp_path / "metadata.yaml").write_text(yaml.safe_dump(REFERENCE_METADATA))
    files = tmp_path / subfolder
    files.mkdir(exist_ok=True)
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    for name in ("train_1_of_2.hdf5", "train_2_of_2.hdf5", "dev_1_of_1.hdf5"):
        h5(files / name, ids=ids)
    with open_data(tmp_path) as train:
        assert len(train) == 6 and train[5][0].tolist() == [8, 9, 10, 11]
    with open_data(tmp_path, "dev") as dev:
        assert len(dev) == 3
    with open_data(files / "train_2_of_2.hdf5") as one:
        assert len(one) == 3 and one.metadata == REFERENCE_METADATA
    with open_data(tmp_path, vocab_size=11) as bounded, pytest.raises(DataError, match="input_ids holds 11"):
        bounded.rows([2])


def test_deeply_nested_metadata_is_a_clear_error(tmp_path):
    h5(tmp_path / "train_1_of_1.hdf5")
    (tmp_path / "metadata.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(DataError, match="metadata.yaml: nested too deeply"):
        open_data(tmp_path)


def test_dataset_linked_to_itself_is_a_clear_error(tmp_path):
    path = h5(tmp_path / "x.hdf5", drop="input_ids")
    with h5py.File(path, "a") as f:
        f["input_ids"] = h5py.SoftLink("/input_ids")
    with pytest.raises(DataError, match="x.hdf5: dataset 'input_ids' cannot be opened"):
        open_data(path)
    spec = batches.InputSpec("input_ids", (1, 4), "i32")
    with pytest.raises(DataError, match="x.hdf5: dataset 'input_ids' cannot be opened"):
        batches.TensorRows([path], [spec], {})


def test_token_types_are_defined_once_and_written_to_the_metadata(prepared):
    assert TOKEN_TYPES == {"prompt": 0, "completion": 1, "padding": 2, "separator": 3}
    assert data_prep.pipeline.TOKEN_TYPES is TOKEN_TYPES and batches.TRAINED is hdf5_data.TRAINED
    metadata = yaml.safe_load((prepared / "metadata.yaml").read_text())
    assert metadata["token_type_ids"] is True and metadata["rduflow"]["token_type_ids"] == TOKEN_TYPES
