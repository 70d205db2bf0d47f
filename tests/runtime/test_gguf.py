"""The GGUF reader: every supported tensor type dequantized as the gguf package does, and
truncated or lying files refused with a message naming what is wrong."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

from gguf_files import Q, random_blocks, write_gguf
from ir.errors import CheckpointError
from runtime.gguf import SUPPORTED_TYPES, read_gguf

LISTED = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K)


def test_the_issue_s_types_are_all_supported():
    assert set(LISTED) <= set(SUPPORTED_TYPES)


@pytest.mark.parametrize("kind", SUPPORTED_TYPES, ids=lambda k: k.name)
def test_every_supported_type_dequantizes_as_the_package_does(tmp_path, kind):
    rng = np.random.default_rng(int(kind))
    block = gguf.GGML_QUANT_SIZES[kind][0]
    blocks = 2 if block > 1 else 64
    raw = random_blocks(rng, kind, 3, blocks)
    path = write_gguf(tmp_path / "q.gguf", {"w": (raw, kind), "bias": np.arange(5, dtype=np.float32)})
    file = read_gguf(path)
    info = file.tensors["w"]
    assert info.type == kind and info.shape == (3, blocks * block) and info.n_bytes == raw.size
    got = file.tensor("w")
    want = gguf.quants.dequantize(raw, kind)
    assert got.dtype == np.float32 and got.shape == want.shape == (3, blocks * block)
    assert np.isfinite(got).all() and np.array_equal(got, want.astype(np.float32))
    assert np.array_equal(file.tensor("bias"), np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("kind", (Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1), ids=lambda k: k.name)
def test_quantized_floats_read_back_close_to_the_originals(tmp_path, kind):
    values = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    path = write_gguf(tmp_path / "q.gguf", {"w": (gguf.quants.quantize(values, kind), kind)})
    got = read_gguf(path).tensor("w")
    step = np.abs(values).max(axis=1, keepdims=True) / {Q.Q4_0: 7, Q.Q4_1: 7, Q.Q5_0: 15, Q.Q5_1: 15}.get(kind, 127)
    assert np.all(np.abs(got - values) <= step + 1e-2 * np.abs(values))


def test_dimensions_are_read_innermost_last(tmp_path):
    values = np.arange(2 * 3 * 32, dtype=np.float32).reshape(2, 3, 32)
    file = read_gguf(write_gguf(tmp_path / "t.gguf", {"t": values}))
    assert file.tensors["t"].shape == (2, 3, 32) and np.array_equal(file.tensor("t"), values)


def test_metadata_values_of_every_kind(tmp_path):
    meta = {"a.int": 7, "a.float": 0.5, "a.flag": True, "a.text": "héllo", "a.list": ["x", "yz"],
            "a.ints": [1, 2, 3]}
    file = read_gguf(write_gguf(tmp_path / "m.gguf", {"t": np.zeros(4, np.float32)}, meta))
    assert file.version == 3 and file.metadata["general.architecture"] == "llama"
    assert {k: file.metadata[k] for k in meta} == meta


# --- refused files ------------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    """A valid file: one Q8_0 tensor 'w' [2, 64] and one F32 tensor 'b' [8], and its bytes."""
    raw = random_blocks(np.random.default_rng(0), Q.Q8_0, 2, 2)
    path = write_gguf(tmp_path / "good.gguf", {"w": (raw, Q.Q8_0), "b": np.ones(8, np.float32)},
                      {"test.key": "value"})
    return path, bytearray(path.read_bytes())


def _info(data: bytearray, name: str) -> dict[str, int]:
    """Byte positions of a tensor table entry's fields."""
    at = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    dims = at + 4
    return {"n_dims": at, "dims": dims, "type": dims + 8 * n_dims, "offset": dims + 8 * n_dims + 4}


def _refused(path, data: bytearray, fragment: str) -> str:
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        read_gguf(path)
    message = str(err.value)
    assert fragment in message and str(path) in message and "\n" not in message
    return message


def test_the_good_file_reads(good):
    file = read_gguf(good[0])
    assert sorted(file.tensors) == ["b", "w"] and file.metadata["test.key"] == "value"


def test_bad_magic(good):
    path, data = good
    data[:4] = b"GGML"
    _refused(path, data, "bad magic b'GGML'")


@pytest.mark.parametrize("version, fragment", [(1, "version 1 is not supported (supported: 2, 3)"),
                                               (99, "version 99 is not supported"),
                                               (3 << 24, "big-endian GGUF files are not supported")])
def test_bad_version(good, version, fragment):
    path, data = good
    struct.pack_into("<I", data, 4, version)
    _refused(path, data, fragment)


@pytest.mark.parametrize("cut", [3, 20, 60, 200])
def test_truncated_header(good, cut):
    path, data = good
    _refused(path, data[:cut], "truncated")


def test_truncated_data(good):
    path, data = good
    _refused(path, data[:-10], "ends past the end of the file")


@pytest.mark.parametrize("at, what", [(8, "tensors"), (16, "metadata entries")])
def test_counts_too_large(good, at, what):
    path, data = good
    struct.pack_into("<Q", data, at, 2**40)
    _refused(path, data, f"claims {2**40} {what}, more than its")


def test_tensor_offset_past_the_end(good):
    path, data = good
    struct.pack_into("<Q", data, _info(data, "b")["offset"], 2**20)
    _refused(path, data, "tensor 'b' (F32 [8], 32 bytes at data offset 1048576) ends past the end of the file")


def test_misaligned_tensor_offset(good):
    path, data = good
    at = _info(data, "b")["offset"]
    struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] + 4)
    _refused(path, data, "tensor 'b' starts at offset 164, not a multiple of the alignment 32")


def test_overlapping_tensors(good):
    path, data = good
    struct.pack_into("<Q", data, _info(data, "b")["offset"], 0)
    _refused(path, data, "overlap")


def test_shape_larger_than_the_bytes(good):
    path, data = good
    struct.pack_into("<Q", data, _info(data, "w")["dims"] + 8, 1000)  # 1000 rows of 64
    _refused(path, data, "tensor 'w' (Q8_0 [1000, 64]")


def test_rows_not_a_whole_number_of_blocks(good):
    path, data = good
    struct.pack_into("<Q", data, _info(data, "w")["dims"], 48)
    _refused(path, data, "tensor 'w' (Q8_0) has rows of 48 values, not a multiple of its 32-value blocks")


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_rank(good, n_dims):
    path, data = good
    struct.pack_into("<I", data, _info(data, "w")["n_dims"], n_dims)
    _refused(path, data, f"tensor 'w' has {n_dims} dimensions (1 to 4 allowed)")


def test_zero_dimension(good):
    path, data = good
    struct.pack_into("<Q", data, _info(data, "b")["dims"], 0)
    _refused(path, data, "tensor 'b' has shape [0]")


def test_unsupported_tensor_type_is_named(good):
    path, data = good
    struct.pack_into("<I", data, _info(data, "w")["type"], int(Q.IQ2_XXS))
    _refused(path, data, "tensor 'w' is stored as IQ2_XXS, which rduflow does not read (supported: F32, F16")


def test_unknown_tensor_type(good):
    path, data = good
    struct.pack_into("<I", data, _info(data, "w")["type"], 999)
    _refused(path, data, "tensor 'w' has unknown type 999")


def test_unknown_value_type(good):
    path, data = good
    key = b"test.key"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    struct.pack_into("<I", data, at, 77)
    _refused(path, data, "metadata 'test.key' has unknown value type 77")


def test_string_longer_than_the_file(good):
    path, data = good
    key = b"test.key"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4
    struct.pack_into("<Q", data, at, 2**50)
    _refused(path, data, "metadata 'test.key' at byte")


def test_array_longer_than_the_file(tmp_path):
    path = write_gguf(tmp_path / "a.gguf", {"t": np.zeros(4, np.float32)}, {"test.ids": [1, 2, 3]})
    data = bytearray(path.read_bytes())
    key = b"test.ids"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 8  # past the value and item types
    struct.pack_into("<Q", data, at, 2**40)
    _refused(path, data, f"metadata 'test.ids' ({2**40} items)")


def test_duplicate_tensor_names(good):
    path, data = good
    at = data.index(struct.pack("<Q", 1) + b"b")
    data[at + 8] = ord("w")
    _refused(path, data, "tensor 'w' appears twice")


def test_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read .*nothing.gguf"):
        read_gguf(tmp_path / "nothing.gguf")
