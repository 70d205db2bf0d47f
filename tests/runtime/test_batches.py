"""Batches of a program's data inputs (`runtime.batches`)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from ir.errors import DataError
from runtime.batches import BatchOrder, InputSpec, TensorRows, eval_batches, has_split, open_rows, split_files

IMAGES = [InputSpec("x", (4, 1, 2, 2), "f32"), InputSpec("labels", (4,), "i32")]
TOKENS = [InputSpec("input_ids", (2, 6), "i32"), InputSpec("token_type_ids", (2, 6), "i32")]


def write(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


def images(n, start=0):
    return {"x": np.arange(start * 4, (start + n) * 4, dtype=np.float32).reshape(n, 2, 2),
            "labels": np.arange(start, start + n, dtype=np.int32)}


def test_order_without_shuffle_walks_the_rows_in_file_order_dropping_the_last_partial_batch():
    order = BatchOrder(10, 4, shuffle=False)
    assert order.steps_per_epoch == 2
    assert [order.indices(s).tolist() for s in range(4)] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    assert order.position(5) == (2, 1)


def test_shuffled_epochs_are_permutations_drawn_from_seed_and_epoch():
    order = BatchOrder(12, 3, shuffle=True, seed=5)
    epochs = [np.concatenate([order.indices(e * 4 + i) for i in range(4)]) for e in range(3)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(12))
    assert not np.array_equal(epochs[0], epochs[1])
    again = BatchOrder(12, 3, shuffle=True, seed=5)
    assert np.array_equal(again.indices(9), order.indices(9))  # a pure function of the step
    assert not np.array_equal(BatchOrder(12, 3, seed=6).permutation(0), order.permutation(0))


def test_fewer_rows_than_a_batch_is_an_error():
    with pytest.raises(DataError, match="the data hold 3 rows, fewer than one batch of 4"):
        BatchOrder(3, 4)


def test_tensor_rows_read_across_files_and_reshape_to_the_input_row(tmp_path):
    write(tmp_path / "train_1_of_2.hdf5", **images(3))
    write(tmp_path / "train_2_of_2.hdf5", **images(4, start=3))
    rows = open_rows(tmp_path, "train", IMAGES)
    assert len(rows) == 7
    batch = rows.rows(np.array([6, 0, 3, 2]))
    assert batch["labels"].tolist() == [6, 0, 3, 2]
    assert batch["x"].shape == (4, 1, 2, 2) and batch["x"][0].ravel().tolist() == [24, 25, 26, 27]
    assert rows.weight(batch) == 4.0
    rows.close()


def test_tensor_datasets_are_checked_against_the_inputs(tmp_path):
    bad = images(4)
    with pytest.raises(DataError, match=r"missing dataset 'labels' .*\(datasets found: x\)$"):
        TensorRows([write(tmp_path / "a.hdf5", x=bad["x"])], IMAGES)
    with pytest.raises(DataError, match=r"dataset 'labels' has dtype int64, the program input is i32"):
        TensorRows([write(tmp_path / "b.hdf5", x=bad["x"], labels=bad["labels"].astype(np.int64))], IMAGES)
    with pytest.raises(DataError, match=r"dataset 'x' has shape \(4, 3\), expected rows of 4 values.*x\[4, 1, 2, 2\]"):
        TensorRows([write(tmp_path / "c.hdf5", x=np.zeros((4, 3), np.float32), labels=bad["labels"])], IMAGES)
    with pytest.raises(DataError, match="have different numbers of rows"):
        TensorRows([write(tmp_path / "d.hdf5", x=bad["x"], labels=bad["labels"][:3])], IMAGES)


def test_index_inputs_are_checked_against_their_bound(tmp_path):
    data = images(6)
    data["labels"][4] = 7
    rows = open_rows(write(tmp_path / "l.hdf5", **data), "train", IMAGES, {"labels": 7})
    assert rows.rows(np.array([0, 5]))["labels"].tolist() == [0, 5]
    with pytest.raises(DataError, match=r"l.hdf5: row 4: labels holds 7, outside \[0, 7\)"):
        rows.rows(np.array([1, 4]))
    rows.close()


def test_split_files_and_dev_detection(tmp_path):
    assert split_files(tmp_path, "train") == [] and not has_split(tmp_path, "dev")
    write(tmp_path / "dev_1_of_1.hdf5", **images(4))
    assert has_split(tmp_path, "dev") and not has_split(tmp_path / "dev_1_of_1.hdf5", "dev")
    write(tmp_path / "train_2_of_2.hdf5", **images(4))
    with pytest.raises(DataError, match="incomplete train files"):
        split_files(tmp_path, "train")
    (tmp_path / "train_2_of_2.hdf5").unlink()
    with pytest.raises(DataError, match="no train files"):
        open_rows(tmp_path, "train", IMAGES)


def test_token_data_go_through_the_validated_reader(tmp_path):
    ids = np.arange(30, dtype=np.int32).reshape(5, 6)
    types = np.ones_like(ids)
    path = write(tmp_path / "t.hdf5", input_ids=ids, token_type_ids=types)
    rows = open_rows(path, "train", TOKENS, {"input_ids": 64})
    batch = rows.rows(np.array([4, 1]))
    assert batch["input_ids"].tolist() == [ids[4].tolist(), ids[1].tolist()]
    types[1, 3:] = 2
    assert rows.weight({"token_type_ids": types[:2]}) == 5 + 2  # targets of completion tokens
    rows.close()
    with pytest.raises(DataError, match="outside the vocabulary"):
        open_rows(path, "train", TOKENS, {"input_ids": 16}).rows(np.array([4]))
    long = write(tmp_path / "long.hdf5", input_ids=np.zeros((4, 8), np.int32), token_type_ids=np.ones((4, 8), np.int32))
    with pytest.raises(DataError, match=r"sequences of 8 tokens, but the program was compiled for seq_len 6 "
                                        r"\(recompile with seq_len=8"):
        open_rows(long, "train", TOKENS)


def test_token_data_from_a_larger_tokenizer_are_refused_before_training(tmp_path):
    from tools.data_prep import PrepConfig, prepare
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    prepare(PrepConfig(input=tmp_path / "in.txt", output=tmp_path / "out", max_seq_length=6, num_training_splits=2))
    with pytest.raises(DataError, match=r"the data's tokenizer has 258 ids, the model's vocabulary only 128 "
                                        r"\(recompile with vocab_size=258"):
        open_rows(tmp_path / "out", "train", TOKENS, {"input_ids": 128})
    rows = open_rows(tmp_path / "out", "train", TOKENS, {"input_ids": 258})
    assert len(rows) > 0 and rows.metadata["rduflow"]["tokenizer"]["eos_id"] == 256
    rows.close()


def test_missing_data_and_eval_batches(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        open_rows(tmp_path / "nope", "train", IMAGES)
    with pytest.raises(DataError, match="expected a data folder or an .hdf5 file"):
        open_rows(write(tmp_path / "data.txt", x=np.zeros(1)), "train", IMAGES)
    write(tmp_path / "dev_1_of_1.hdf5", **images(9))
    rows = open_rows(tmp_path, "dev", IMAGES)
    assert [b.tolist() for b in eval_batches(rows, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rows.close()
