"""GGUF files (llama.cpp's model format), read lazily and validated before use.

`read_gguf(path)` memory-maps the file and parses its header: the version, the
metadata (key -> value) and the tensor table (name -> type, shape, data range).
Like the PEF reader, it trusts nothing: every count, length and offset is checked
against the bytes that remain, value and tensor types must be known, dimensions
must fit their quantization blocks, each tensor's bytes must lie aligned inside the
data section without overlapping another's. A file that breaks a rule is refused
with a `CheckpointError` naming the file and what is wrong. (The header is parsed
here rather than by the `gguf` package's `GGUFReader`, which trusts the counts it
reads; the package gives the format's constants and its dequantizers.)

`GGUFFile.tensor(name)` dequantizes one tensor to float32 on demand, through
`gguf.quants.dequantize`, in numpy's (row-major) shape: GGUF lists dimensions
innermost first, so a torch `[out, in]` weight is stored as `[in, out]` and read
back as `[out, in]`.
"""
from __future__ import annotations

import mmap
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from ir.errors import CheckpointError

#: versions 2 and 3 share the layout read here (version 1 had 32-bit counts)
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: ggml's limit on a tensor's dimensions
MAX_DIMS = 4
Q = GGMLQuantizationType
#: tensor types rduflow dequantizes (all through the gguf package)
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                   Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
V = GGUFValueType
#: scalar value types: struct format
_SCALARS = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
            V.FLOAT32: "f", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d", V.BOOL: "?"}


@attrs.frozen
class TensorInfo:
    """One tensor of the table: its type, numpy shape and absolute byte range in the file."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    n_bytes: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing to read past its end."""

    def __init__(self, data: Any, path: Path):
        self.data = data
        self.size = len(data)
        self.path = path
        self.pos = 0

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a valid GGUF file: {message}")

    def take(self, n: int, what: str) -> int:
        """The position of the next `n` bytes, which must exist."""
        if n > self.size - self.pos:
            raise self.error(f"{what} at byte {self.pos} needs {n} bytes, the file ends after "
                             f"{self.size - self.pos} (truncated?)")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.data, self.take(size, what))[0]

    def string(self, what: str) -> str:
        length = self.scalar("Q", f"the length of {what}")
        start = self.take(length, what)
        try:
            return bytes(self.data[start:start + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} at byte {start} is not UTF-8") from None

    def value(self, kind: int, what: str) -> Any:
        """A metadata value of type `kind`: a scalar, a string, or an array of either."""
        kind = self._type(kind, what)
        if kind == V.STRING:
            return self.string(what)
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], what)
        item = self._type(self.scalar("I", f"the item type of {what}"), what)
        count = self.scalar("Q", f"the length of {what}")
        if item == V.ARRAY:
            raise self.error(f"{what}: arrays of arrays are not supported")
        if item == V.STRING:
            if count > (self.size - self.pos) // 8:  # each string needs at least its 8-byte length
                raise self.error(f"{what} claims {count} strings, more than the file can hold")
            return [self.string(f"{what}[{i}]") for i in range(count)]
        fmt = _SCALARS[item]
        size = struct.calcsize(fmt)
        start = self.take(count * size, f"{what} ({count} items)")
        return np.frombuffer(self.data, dtype="<" + fmt, count=count, offset=start).tolist()

    def _type(self, kind: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(kind)
        except ValueError:
            raise self.error(f"{what} has unknown value type {kind}") from None


class GGUFFile:
    """A validated GGUF file: `version`, `metadata` (key -> value), `tensors` (name -> TensorInfo)."""

    def __init__(self, path: Path, data: Any, version: int, metadata: dict[str, Any],
                 tensors: dict[str, TensorInfo]):
        self.path = path
        self._data = data
        self.version = version
        self.metadata = metadata
        self.tensors = tensors

    def error(self, message: str) -> CheckpointError:
        """A CheckpointError naming this file."""
        return CheckpointError(f"{self.path}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """A metadata value of the given Python type; `default` when absent (an error if none is given)."""
        if key not in self.metadata:
            if default is ...:
                raise self.error(f"metadata '{key}' is missing")
            return default
        value = self.metadata[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise self.error(f"metadata '{key}' is {value!r}, expected {getattr(kind, '__name__', kind)}")
        return value

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (a view of the mapped file)."""
        info = self.tensors[name]
        return np.frombuffer(self._data, dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy's shape."""
        info = self.tensors[name]
        raw = self.raw(name)
        if info.type == Q.F32:
            return raw.view("<f4").reshape(info.shape).copy()
        block, size = GGML_QUANT_SIZES[info.type]
        rows = raw.reshape(*info.shape[:-1], info.shape[-1] // block * size)
        return dequantize(rows, info.type).astype(np.float32, copy=False).reshape(info.shape)


def read_gguf(path: str | Path) -> GGUFFile:
    """The GGUF file at `path`, validated (see the module docstring); the same object until it changes."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    return _read(path.resolve(), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@lru_cache(maxsize=2)
def _read(path: Path, mtime_ns: int, size: int, inode: int) -> GGUFFile:
    try:
        with open(path, "rb") as handle:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    cursor = _Cursor(data, path)
    magic = cursor.take(4, "the magic number")
    if bytes(data[magic:magic + 4]) != struct.pack("<I", GGUF_MAGIC):
        raise cursor.error(f"bad magic {bytes(data[magic:magic + 4])!r} (expected b'GGUF')")
    version = cursor.scalar("I", "the version")
    if version not in VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        why = "big-endian GGUF files are not supported" if swapped in VERSIONS else \
            f"version {version} is not supported (supported: {', '.join(map(str, VERSIONS))})"
        raise cursor.error(why)
    n_tensors = cursor.scalar("Q", "the tensor count")
    n_keys = cursor.scalar("Q", "the metadata count")
    for count, what, least in ((n_keys, "metadata entries", 13), (n_tensors, "tensors", 24)):
        if count > (size - cursor.pos) // least:
            raise cursor.error(f"it claims {count} {what}, more than its {size} bytes can hold")
    metadata = _metadata(cursor, n_keys)
    infos = [_tensor_info(cursor, i) for i in range(n_tensors)]
    alignment = _alignment(cursor, metadata)
    start = -(-cursor.pos // alignment) * alignment
    tensors = _place(cursor, infos, start, alignment)
    return GGUFFile(path, data, version, metadata, tensors)


def _metadata(cursor: _Cursor, count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(count):
        key = cursor.string(f"metadata key #{i}")
        if key in metadata:
            raise cursor.error(f"metadata key '{key}' appears twice")
        metadata[key] = cursor.value(cursor.scalar("I", f"the type of '{key}'"), f"metadata '{key}'")
    return metadata


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
    """A table entry, checked alone: (name, type, numpy shape, offset in the data section)."""
    name = cursor.string(f"the name of tensor #{index}")
    n_dims = cursor.scalar("I", f"the rank of tensor '{name}'")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cursor.error(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    dims = [cursor.scalar("Q", f"a dimension of tensor '{name}'") for _ in range(n_dims)]
    raw_type = cursor.scalar("I", f"the type of tensor '{name}'")
    offset = cursor.scalar("Q", f"the offset of tensor '{name}'")
    try:
        kind = GGMLQuantizationType(raw_type)
    except ValueError:
        raise cursor.error(f"tensor '{name}' has unknown type {raw_type}") from None
    if kind not in SUPPORTED_TYPES:
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise CheckpointError(f"{cursor.path}: tensor '{name}' is stored as {kind.name}, which rduflow "
                              f"does not read (supported: {supported})")
    if min(dims) < 1 or int(np.prod(dims, dtype=object)) >= 2**62:
        raise cursor.error(f"tensor '{name}' has shape {dims}")
    block = GGML_QUANT_SIZES[kind][0]
    if dims[0] % block:
        raise cursor.error(f"tensor '{name}' ({kind.name}) has rows of {dims[0]} values, "
                           f"not a multiple of its {block}-value blocks")
    return name, kind, tuple(reversed(dims)), offset


def _alignment(cursor: _Cursor, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise cursor.error(f"general.alignment {alignment!r} is not a positive power of two")
    return alignment


def _place(cursor: _Cursor, infos: list, start: int, alignment: int) -> dict[str, TensorInfo]:
    """TensorInfos with absolute ranges, each aligned, inside the file, and not overlapping."""
    tensors: dict[str, TensorInfo] = {}
    for name, kind, shape, offset in infos:
        if name in tensors:
            raise cursor.error(f"tensor '{name}' appears twice")
        block, size = GGML_QUANT_SIZES[kind]
        n_bytes = int(np.prod(shape, dtype=object)) // block * size
        if offset % alignment:
            raise cursor.error(f"tensor '{name}' starts at offset {offset}, not a multiple of the "
                               f"alignment {alignment}")
        if start + offset + n_bytes > cursor.size:
            raise cursor.error(f"tensor '{name}' ({kind.name} {list(shape)}, {n_bytes} bytes at data offset "
                               f"{offset}) ends past the end of the file ({cursor.size} bytes; truncated?)")
        tensors[name] = TensorInfo(name, kind, shape, start + offset, n_bytes)
    ranges = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors.values())
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise cursor.error(f"tensors '{first}' and '{second}' overlap")
    return tensors
